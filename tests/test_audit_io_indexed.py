"""Audit of IndexedDataset as a user sees it: the same bytes as streaming for every index,
IndexError naming the index asked for, and a lying index refused on the batched path too."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shardpipe import CorruptShardError, IndexedDataset, ShardDataset, worker_context

from .helpers import write_indexed_dataset
from .test_trust_index import _get_offset, _set_offset

COUNTS = [4, 3, 6]


@pytest.fixture
def indexed(tmp_path):
    """A manifest with its index over 3 shards; returns (manifest, index) paths."""
    return write_indexed_dataset(tmp_path, COUNTS)


def _fields(sample: dict) -> tuple:
    return sample["__key__"], sorted((k, v) for k, v in sample.items() if not k.startswith("__"))


def _stream(manifest) -> list[tuple]:
    return [_fields(s) for s in ShardDataset(str(manifest), decode=None)]


def _batched(batch: list[dict]) -> list[dict]:
    return batch  # a collate that keeps the raw samples


def test_every_index_reads_the_streamed_bytes(indexed):
    manifest, _ = indexed
    ds = IndexedDataset(str(manifest), decode=None)
    expected = _stream(manifest)
    assert [_fields(ds[i]) for i in range(len(ds))] == expected
    assert [_fields(s) for s in ds.__getitems__(list(range(len(ds))))] == expected
    assert _fields(ds[-1]) == expected[-1]


def test_a_dataloader_with_workers_reads_the_streamed_bytes(indexed):
    manifest, _ = indexed
    ds = IndexedDataset(str(manifest), decode=None)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=_batched,
                        multiprocessing_context=worker_context(ds))  # fmt: skip
    assert [_fields(s) for batch in loader for s in batch] == _stream(manifest)


@pytest.mark.parametrize("i", [13, 100, -14, -100])
def test_an_index_out_of_range_names_it(indexed, i):
    ds = IndexedDataset(str(indexed[0]), decode=None)
    message = rf"index {i} out of range: the dataset holds 13 samples"
    with pytest.raises(IndexError, match=message):
        ds[i]
    with pytest.raises(IndexError, match=message):
        ds.__getitems__([0, i])


def test_an_end_cut_before_a_last_member_is_refused_in_a_batch(indexed):
    """The index ends sample 0 before its json member: a batch read must not drop it silently."""
    manifest, index = indexed
    _set_offset(index, 1, _get_offset(index, 1) - 1024)
    ds = IndexedDataset(str(manifest), decode=None)
    with pytest.raises(CorruptShardError, match=r"sample 'sample00000' goes on past its indexed end"):
        ds.__getitems__([0])
    loader = DataLoader(ds, batch_size=2, collate_fn=_batched)
    with pytest.raises(CorruptShardError, match=r"goes on past its indexed end"):
        list(loader)


def test_an_end_cut_before_the_last_sample_of_a_shard_is_refused_in_a_batch(indexed):
    """The same at a shard's end: the block after the cut is the sample's own member."""
    manifest, index = indexed
    last = COUNTS[0]  # shard 0's end offset is entry COUNTS[0] (offsets then the end)
    _set_offset(index, last, _get_offset(index, last) - 1024)
    ds = IndexedDataset(str(manifest), decode=None)
    with pytest.raises(CorruptShardError, match=r"sample 'sample00003' goes on past its indexed end"):
        ds.__getitems__([COUNTS[0] - 1])


@pytest.mark.parametrize("i", [2.5, 3.0, "3", slice(1, 3), None])
def test_an_index_that_is_not_an_integer_is_refused(indexed, i):
    """``int(i)`` read 2.5 as sample 2 and "3" as sample 3, silently."""
    ds = IndexedDataset(str(indexed[0]), decode=None)
    message = f"IndexedDataset indices must be integers, not {type(i).__name__} ({i!r})"
    with pytest.raises(TypeError, match="^" + re.escape(message) + "$"):
        ds[i]
    with pytest.raises(TypeError, match="^" + re.escape(message) + "$"):
        ds.__getitems__([0, i])


def test_integer_indices_of_numpy_and_torch_are_read(indexed):
    ds = IndexedDataset(str(indexed[0]), decode=None)
    assert [ds[i]["__index__"] for i in (np.int64(3), torch.tensor(-1), True)] == [3, 12, 1]
