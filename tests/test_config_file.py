"""Config files as users write them (``load_config(path)``, ``shardpipe serve CONFIG``): each mistake is
a ``ConfigError`` (a ValueError) naming the file, the key and its line, never a value quietly dropped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.augment import RandomHorizontalFlip, RandomResizedCrop
from shardpipe.config import load_config
from shardpipe.configfile import ConfigError
from shardpipe.errors import ShardNotFoundError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def urls(dataset_dir) -> str:
    return dataset_dir[0][0]  # one shard: a shard list as a config holds it


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        # a TypeError ("'NoneType' object is not iterable") for an empty file
        ("", "train.yaml: the file is empty; a config is a mapping of sections (dataset, transform, loader, mix)"),
        ("# all commented out\n", "train.yaml: the file is empty"),
        # a list or a string was read as its letters: "unknown config sections: ['e', 'h', 'l', 'o']"
        ("- a\n- b\n", "train.yaml: a config is a mapping of sections (dataset, transform, loader, mix), not a list"),
        ("hello\n", "train.yaml: a config is a mapping of sections (dataset, transform, loader, mix), not the string"),
        # the second value won quietly
        ("dataset:\n  urls: {urls}\n  shuffle: 10\n  shuffle: 20\n", "train.yaml, line 4: key 'shuffle' given twice "
         "(first on line 3)"),
        ("dataset: {{urls: {urls}}}\nloader: {{}}\ndataset: {{urls: x}}\n", "train.yaml, line 3: key 'dataset' given "
         "twice (first on line 1)"),
        # only the first transform of the item was built: the flip was dropped quietly
        ("dataset: {{urls: {urls}}}\ntransform:\n  - RandomResizedCrop: {{size: 8}}\n    RandomHorizontalFlip: {{}}\n",
         "train.yaml, line 3: transform[0] names 2 transforms (RandomResizedCrop, RandomHorizontalFlip): give each "
         "its own list item"),
        # AttributeError: 'int' object has no attribute 'items'
        ("dataset: {{urls: {urls}}}\ntransform: [3]\n", "train.yaml, line 2: transform[0] is a name or "
         "{Name: {arguments}}, not int 3"),
        ("dataset: {{urls: {urls}}}\ntransform:\n  - RandomResizedCrop: [8]\n", "train.yaml, line 3: the arguments "
         "of transform RandomResizedCrop are a mapping ({size: 224}), not a list [8]"),
        ("dataset: {{urls: {urls}}}\ntransform:\n  - RandomResizedCrop:\n      sise: 8\n", "train.yaml, line 4: "
         "unknown key 'sise' in the arguments of transform RandomResizedCrop; did you mean 'size'?"),
        # TypeError: DataLoader.__init__() got an unexpected keyword argument 'num_worker'
        ("dataset: {{urls: {urls}}}\nloader:\n  num_worker: 2\n", "train.yaml, line 3: unknown key 'num_worker' in "
         "loader; did you mean 'num_workers'?"),
        ("datset: {{urls: {urls}}}\n", "train.yaml, line 1: unknown section 'datset'; did you mean 'dataset'?"),
        ("dataset:\n  - {urls}\n", "train.yaml, line 1: section dataset is a mapping, not a list"),
        ("mix:\n  samples_per_epok: 10\n  sources: [{{urls: {urls}, weight: 1}}]\n", "train.yaml, line 2: unknown "
         "key 'samples_per_epok' in mix; did you mean 'samples_per_epoch'?"),
        # "on_error must be one of (...), not False": the file says off
        ("dataset:\n  urls: {urls}\n  on_error: off\n", "train.yaml, line 3: dataset: on_error must be one of "
         "('raise', 'warn', 'skip'), not False (YAML reads an unquoted off as false: write 'off' in quotes for the "
         "word)"),
        ("dataset:\n  urls: {urls}\n  shuffle: '100'\n", "train.yaml, line 3: dataset: shuffle must be an integer >= 0, "
         "not '100'"),
    ],
)  # fmt: skip
def test_a_mistake_is_named_with_the_file_and_line(tmp_path: Path, urls: str, text: str, message: str):
    path = config(tmp_path, text.format(urls=urls))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}{message.removeprefix('train.yaml')}"), str(caught.value)
    assert isinstance(caught.value, ValueError)  # what load_config raised for a bad config before


def test_merge_keys_fill_in_and_a_key_beside_them_overrides(tmp_path: Path, urls: str):
    """Anchors and merge keys (``<<: *one``) are YAML's own reuse, not a key given twice."""
    path = config(
        tmp_path,
        f"""
mix:
  samples_per_epoch: 20
  sources:
    - &one {{urls: {urls}, weight: 1, shuffle: 10}}
    - {{<<: *one, shuffle: 0}}
loader: {{num_workers: 0}}
""",
    )
    ds, _ = load_config(path)
    assert [d.split_options.buffer_size for d in ds.datasets] == [10, 0]


def test_transforms_and_yaml_11_booleans_that_fit_still_build(tmp_path: Path, urls: str):
    path = config(
        tmp_path,
        f"""
dataset: {{urls: {urls}, shuffle: yes, batch_size: 4}}
transform:
  - RandomResizedCrop: {{size: 16}}
  - RandomHorizontalFlip
loader: {{num_workers: 0, pin_memory: no}}
""",
    )
    ds, loader = load_config(path)
    steps = ds.decode_options.transform.transforms
    assert [type(s) for s in steps] == [RandomResizedCrop, RandomHorizontalFlip]
    assert ds.split_options.buffer_size == 1000 and loader.pin_memory is False


def test_serve_names_the_file_and_line(tmp_path: Path, urls: str):
    """``shardpipe serve`` printed "CONFIG: CONFIG, ..." or, for a key given twice, served the last value."""
    path = config(tmp_path, f"dataset:\n  urls: {urls}\n  batch_size: 4\n  batch_size: 8\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "shardpipe", "serve", str(path), "--bind", "tcp://127.0.0.1:*"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"shardpipe serve: error: {path}, line 4: key 'batch_size' given twice (first on line 3)"
    )


def test_relative_paths_are_taken_from_the_current_directory(tmp_path: Path, urls: str, monkeypatch):
    """Not from the config file's folder (as ``ShardDataset`` takes them): the shipped configs name
    ``data/imagenet/...`` from the repository's root, beside ``configs/``."""
    shard = Path(urls)
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "train.yaml"
    path.write_text(f"dataset: {{urls: {shard.name}}}\n")
    monkeypatch.chdir(shard.parent)
    ds, _ = load_config(path)
    assert sum(1 for _ in ds) == 10  # the first shard's samples, found from the current directory
    monkeypatch.chdir(path.parent)
    with pytest.raises(ShardNotFoundError, match=shard.name):
        ds, _ = load_config(path)
        next(iter(ds))
