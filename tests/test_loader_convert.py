"""ShardLoader's worker-side conversion: what torch's ``default_convert`` returns, with a shortcut for the
batches shardpipe makes (a dict of tensors and lists of plain values)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data._utils.collate import default_convert

from shardpipe.augment import RandomResizedCrop
from shardpipe.collate import convert as _convert
from shardpipe.dataset import ShardDataset
from shardpipe.devtools.synth import make_dataset
from shardpipe.write.shard_writer import ShardWriter

Point = namedtuple("Point", ["x", "y"])


def _same(a, b) -> bool:
    """Equal structure, types and values (tensors compared by dtype, shape and values)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


INPUTS = {
    "batch": {
        "jpg": torch.zeros((2, 3, 4, 4), dtype=torch.uint8),
        "cls": torch.tensor([1, 2]),
        "__key__": ["a", "b"],
        "__url__": ["s.tar", "s.tar"],
        "__shard__": [0, 0],
        "__pad__": [True, False],
        "txt": [b"x", None],
        "score": [0.5, 1.5],
    },
    "array value": {"jpg": np.zeros((4, 4, 3), np.uint8), "__key__": "a"},
    "arrays in a list": {"jpg": [np.zeros((2, 2), np.uint8), None], "__key__": ["a", "b"]},
    "numpy scalars in a list": {"cls": [np.int64(3), np.int64(4)], "__key__": ["a", "b"]},
    "a tuple": {"pair": (1, np.float32(2.0))},
    "a nested dict": {"meta": {"w": np.ones(2)}, "__key__": ["a"]},
    "an ordered dict": OrderedDict(jpg=torch.zeros(1), __key__=["a"]),
    "a named tuple": Point(np.zeros(2), 1),
    "an array": np.arange(3),
    "a string array": {"names": np.array(["a", "b"])},
    "a list of strings": ["a", "b"],
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_convert_returns_what_default_convert_returns(name):
    item = INPUTS[name]
    assert _same(_convert(item), default_convert(item)), name


def test_a_batch_shardpipe_made_comes_back_as_it_is(tmp_path, dataset_dir):
    """The shortcut is taken for real image batches (images and labels as tensors, keys, urls and shard
    numbers as lists); a batch with JSON (lists of dicts) goes the long way, to the same result."""
    with ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=4) as w:
        for key, data, label in make_dataset(6, 1):
            w.write({"__key__": key, "jpg": data, "cls": label})
    batch = next(iter(ShardDataset(str(tmp_path / "manifest.json"), transform=RandomResizedCrop(16), batch_size=4)))
    assert sorted(batch) == ["__key__", "__shard__", "__url__", "cls", "jpg"]
    assert _convert(batch) is batch and _same(batch, default_convert(batch))

    urls, _ = dataset_dir
    with_json = next(iter(ShardDataset(urls, batch_size=4)))
    assert isinstance(with_json["json"][0], dict)
    converted = _convert(with_json)
    assert converted is not with_json and _same(converted, default_convert(with_json))
