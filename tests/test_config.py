from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shardpipe.augment import Compose, RandomResizedCrop
from shardpipe.config import load_config

from .helpers import write_manifest_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["imagenet_train.yaml", "imagenet_val.yaml"])
def test_shipped_configs_build_and_stream(tmp_path, dataset_dir, name):
    _, samples = dataset_dir
    root = tmp_path / "with-manifest"
    root.mkdir()
    manifest = write_manifest_dataset(root, samples, [len(samples)])
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    config["loader"] = {"num_workers": 0}
    ds, loader = load_config(config, urls=manifest, batch_size=8)
    assert isinstance(ds.decode_options.transform, Compose)
    batches = list(loader)
    assert batches[0]["jpg"].shape[1:] == (3, 224, 224)
    keys = [k for b in batches for k in b["__key__"]]
    expected = [s["__key__"] for s in samples]
    assert len(keys) == len(samples)  # one rank: every sample exactly once, no pad repeats
    if name == "imagenet_val.yaml":
        assert keys == expected  # no shuffle: in order
    else:
        assert sorted(keys) == sorted(expected) and keys != expected  # shuffled


def test_config_transform_parameters(dataset_dir):
    urls, _ = dataset_dir
    ds, _ = load_config(
        {"dataset": {"urls": urls}, "transform": [{"RandomResizedCrop": {"size": 32, "scale": [0.5, 1.0]}}]}
    )
    rrc = ds.decode_options.transform.transforms[0]
    assert isinstance(rrc, RandomResizedCrop) and rrc.scale == (0.5, 1.0)


def test_config_errors(dataset_dir):
    urls, _ = dataset_dir
    with pytest.raises(ValueError, match="unknown transform 'os.system'"):
        load_config({"dataset": {"urls": urls}, "transform": ["os.system"]})
    with pytest.raises(ValueError, match="needs dataset.urls"):
        load_config({"dataset": {}})
    with pytest.raises(ValueError, match="^config: unknown section 'model'"):
        load_config({"dataset": {"urls": urls}, "model": {}})
