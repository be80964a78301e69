"""Yes/no options take True or False only, counts take integers, decoder names are checked when built.

A config file or a command line hands over strings: ``allow_pickle: "false"`` is a truthy
string, and before these checks it turned on unpickling of shard members.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from shardpipe import ShardDataset, ShardLoader
from shardpipe.config import load_config
from shardpipe.configfile import ConfigError
from shardpipe.io.files import open_shard
from shardpipe.stages.decode import SampleDecoder
from tests.helpers import write_shards

FLAGS = ["allow_pickle", "allow_pipe", "verify", "drop_last", "channels_last"]


@pytest.mark.parametrize("name", FLAGS)
@pytest.mark.parametrize("value", ["false", "False", 0, 1, None])
def test_dataset_flags_take_booleans_only(dataset_dir, name: str, value):
    urls, _ = dataset_dir
    with pytest.raises(TypeError, match=rf"^{name} must be True or False, not {value!r}$"):
        ShardDataset(urls, batch_size=4, **{name: value})


@pytest.mark.parametrize("name", FLAGS)
def test_dataset_flags_take_true_and_false(dataset_dir, name: str):
    urls, _ = dataset_dir
    for value in (True, False):
        ds = ShardDataset(urls, batch_size=4, **{name: value})
        assert ds is not None


def test_a_string_false_never_unpickles_shard_members(tmp_path: Path):
    payload = pickle.dumps({"a": 1})
    urls = write_shards(tmp_path, [{"__key__": "k", "pyd": payload}], [1])
    with pytest.raises(TypeError, match="allow_pickle must be True or False, not 'false'"):
        ShardDataset(urls, allow_pickle="false")
    with pytest.raises(TypeError, match="allow_pickle must be True or False, not 'no'"):
        SampleDecoder("rgb8", allow_pickle="no")
    # what True and False do is unchanged
    assert next(iter(ShardDataset(urls)))["pyd"] == payload
    assert next(iter(ShardDataset(urls, allow_pickle=True)))["pyd"] == {"a": 1}


def test_a_pipe_url_runs_only_with_allow_pipe_true(tmp_path: Path):
    marker = tmp_path / "ran"
    for value in ("false", "yes", 1):
        with pytest.raises(ValueError, match="refusing pipe: URL"):
            open_shard(f"pipe:touch {marker}", allow_pipe=value)
    assert not marker.exists()


@pytest.mark.parametrize("seed", ["0", -1, 1.0, True])
def test_seed_is_a_non_negative_integer(dataset_dir, seed):
    urls, _ = dataset_dir
    with pytest.raises(ValueError, match=rf"^seed must be an integer >= 0, not {seed!r}$"):
        ShardDataset(urls, seed=seed)


def test_an_unknown_decoder_fails_when_the_dataset_is_made(dataset_dir):
    urls, _ = dataset_dir
    with pytest.raises(ValueError, match=r"unknown decoder 'nosuch': choose one of \['auto', "):
        ShardDataset(urls, decoder="nosuch")
    assert ShardDataset(urls, decoder="nosuch", decode=None) is not None  # nothing decodes: no decoder is used


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_workers": "2"}, ValueError, "num_workers must be an integer >= 0, not '2'"),
        ({"num_workers": True}, ValueError, "num_workers must be an integer >= 0, not True"),
        ({"num_workers": -1}, ValueError, "num_workers must be an integer >= 0, not -1"),
        ({"pin_memory": "false"}, TypeError, "pin_memory must be True or False, not 'false'"),
        ({"num_workers": 1, "persistent_workers": 1}, TypeError, "persistent_workers must be True or False, not 1"),
    ],
)
def test_loader_options_are_checked(dataset_dir, kwargs, error, message):
    urls, _ = dataset_dir
    with pytest.raises(error, match=f"^{message}$"):
        ShardLoader(ShardDataset(urls), **kwargs)


def test_a_config_with_a_string_flag_names_its_key_and_line(dataset_dir, tmp_path: Path):
    urls, _ = dataset_dir
    path = tmp_path / "train.yaml"
    path.write_text(f'dataset:\n  urls: {urls!r}\n  allow_pickle: "false"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{path}, line 3: dataset: allow_pickle must be True or False")):
        load_config(path)
    path.write_text(f"dataset:\n  urls: {urls!r}\nloader:\n  pin_memory: 'no'\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}, line 4: loader: pin_memory must be True or False")):
        load_config(path)
