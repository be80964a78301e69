"""A ShardLoader worker's batch crosses by value (small tensors) and by reference (held buffers)."""

from __future__ import annotations

import copy
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop
from shardpipe.handover import INLINE_BYTES, Inline, pack, unpack
from shardpipe.stages.buffers import SLOTS, BatchBuffers, SlotRef
from tests.test_buffers import check, per_key_pixels


def trip(item: object) -> object:
    """What the main process unpickles of an item a worker put on its queue."""
    return pickle.loads(ForkingPickler.dumps(item))


def test_small_tensors_travel_by_value_and_come_back_equal() -> None:
    pool = BatchBuffers()
    labels = torch.arange(64, dtype=torch.int64)
    scores = torch.linspace(0, 1, 7, dtype=torch.float32)
    big = torch.ones(INLINE_BYTES // 4 + 1, dtype=torch.float32)  # one element over: stays a tensor
    brain = torch.zeros(4, dtype=torch.bfloat16)  # no numpy dtype: stays a tensor
    eight = torch.zeros(4).to(torch.float8_e4m3fn)
    conj = torch.tensor([1 + 2j]).conj()  # a conjugate view numpy() refuses
    sent = pack(
        {"cls": labels, "score": scores, "big": big, "bf": brain, "__key__": ["a"], "f8": eight, "c": conj}, pool, 0
    )
    assert sent["f8"] is eight and sent["c"] is conj
    edge = torch.zeros(INLINE_BYTES, dtype=torch.uint8)  # exactly the limit: by value
    assert isinstance(pack({"x": edge}, pool, 0)["x"], Inline)
    graded = torch.zeros(4, requires_grad=True)
    sparse = torch.zeros(4).to_sparse()
    assert pack({"g": graded}, pool, 0)["g"] is graded and pack({"s": sparse}, pool, 0)["s"] is sparse
    pool.track(0, {"s": sparse.to(torch.uint8)})  # the main side passes over sparse tensors too
    assert isinstance(sent["cls"], Inline) and isinstance(sent["score"], Inline)
    assert sent["big"] is big and sent["bf"] is brain and sent["__key__"] == ["a"]
    got = unpack(trip(sent), pool, 0)
    assert set(got) == {"cls", "score", "big", "bf", "__key__", "f8", "c"}
    for name, want in (("cls", labels), ("score", scores), ("big", big), ("bf", brain)):
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
    got["cls"][0] = 5  # the loop may write into what it receives
    assert not isinstance(pack(7, pool, 0), Inline) and unpack([1], pool, 0) == [1]  # non-dict items pass


@pytest.mark.parametrize(
    "make, same_strides",
    [
        (lambda x: x.reshape(2, 4, 5, 3).permute(0, 3, 1, 2), True),  # a channels_last batch
        (lambda x: x.reshape(3, 4, 10).permute(2, 0, 1), True),  # a CHW view of an HWC image
        (lambda x: x.reshape(12, 10).t(), True),  # a transposed matrix
        (lambda x: x.reshape(4, 30)[:, ::2], False),  # not dense: its values, contiguous
        (lambda x: x.reshape(12, 10).t()[:, ::2], False),  # transposed and not dense: the same
        (lambda x: x[:1].expand(6), False),  # a zero stride
        (lambda x: x.reshape(2, 60)[:, :1], False),  # a dimension of one
    ],
    ids=["channels_last", "chw", "transposed", "strided", "transposed-strided", "expanded", "size1"],
)
def test_a_small_tensor_by_value_keeps_its_memory_layout(make, same_strides) -> None:
    """A channels_last batch that goes by value (small images; a pool whose slots the loop
    all holds) arrives channels_last, as the worker made it."""
    t = make(torch.arange(120, dtype=torch.uint8))
    sent = pack({"jpg": t}, BatchBuffers(), 0)
    assert isinstance(sent["jpg"], Inline)
    got = unpack(trip(sent), BatchBuffers(), 0)["jpg"]
    assert got.shape == t.shape and torch.equal(got, t)
    assert got.stride() == t.stride() if same_strides else got.is_contiguous()


def test_a_recycled_buffer_goes_by_reference_once_the_main_process_holds_it() -> None:
    worker = BatchBuffers()
    main = copy.copy(worker)  # the main process's side: the same shared table, its own mappings
    t = worker.take((4, 3, 8, 8), worker=1)
    t.copy_(torch.arange(t.numel()).reshape(t.shape).to(torch.uint8))
    view = t.permute(0, 2, 3, 1)[1:3]  # a strided view with an offset
    first = pack({"jpg": view}, worker, 1)
    assert first["jpg"] is view  # the main process has not seen this segment: it travels as a tensor
    assert not isinstance(pack({"jpg": torch.zeros(8, dtype=torch.uint8)}, worker, 1)["jpg"], SlotRef)
    main.track(1, first)  # received: the main process keeps its mapping and says so in the table
    sent = pack({"jpg": view}, worker, 1)
    assert isinstance(sent["jpg"], SlotRef) and sent["jpg"].offset == view.storage_offset()
    got = unpack(trip(sent), main, 1)["jpg"]
    assert got.shape == view.shape and got.stride() == view.stride() and torch.equal(got, view)
    assert got.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()


def test_a_reference_to_a_segment_the_main_process_lacks_is_an_error() -> None:
    pool = BatchBuffers()
    ref = SlotRef(slot=2, segment=999, shape=(1, 3, 2, 2), stride=(12, 1, 6, 3), offset=0)
    with pytest.raises(RuntimeError, match=r"worker 0 sent a batch in its buffer slot 2 by reference.*\(999\)"):
        unpack({"jpg": ref}, pool, 0)


def test_a_reference_beyond_its_segment_is_refused() -> None:
    pool = BatchBuffers()
    t = pool.take((2, 3, 4, 4), worker=0)
    pool.track(0, {"jpg": t})
    seg = int(pool.table[0, 0, 1])
    with pytest.raises(RuntimeError, match=r"slot 0 reaching past its segment \(shape \(3, 3, 4, 4\).*96 bytes\)"):
        pool.resolve(0, SlotRef(slot=0, segment=seg, shape=(3, 3, 4, 4), stride=(48, 16, 4, 1), offset=0))


class CountingBuffers(BatchBuffers):
    """The pool, counting the batches the main process rebuilt from a reference."""

    resolved = 0

    def resolve(self, worker: int, ref: SlotRef) -> torch.Tensor:
        type(self).resolved += 1
        return super().resolve(worker, ref)


@pytest.mark.parametrize("persistent", [False, True])
def test_a_loader_over_workers_delivers_the_same_pixels_and_labels_by_reference(
    dataset_dir, persistent, monkeypatch
) -> None:
    urls, samples = dataset_dir
    ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2)
    monkeypatch.setattr("shardpipe.loader.BatchBuffers", CountingBuffers)  # the pools the loader makes count
    CountingBuffers.resolved = 0
    loader = ShardLoader(ds, num_workers=2, prefetch_factor=2, persistent_workers=persistent)
    labels = {s["__key__"]: s["cls"] for s in samples}
    batches = 0
    for epoch in range(2):
        ref = per_key_pixels(urls, epoch)
        keys = []
        for batch in loader:
            check(batch, ref)
            assert batch["cls"].dtype == torch.int64 and not batch["cls"].is_shared()
            assert batch["cls"].tolist() == [labels[k] for k in batch["__key__"]]
            keys += batch["__key__"]
            batches += 1
        assert sorted(keys) == sorted(labels)
    # every batch past each worker's first few came by reference
    assert batches - 2 * 2 * SLOTS <= CountingBuffers.resolved < batches  # at most SLOTS fresh per worker and pass


def test_labels_from_a_plain_dataloader_are_tensors_as_torch_sends_them(dataset_dir) -> None:
    urls, samples = dataset_dir
    ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1))
    assert all(isinstance(b["cls"], torch.Tensor) and b["cls"].is_shared() for b in batches)
    assert sum(len(b["cls"]) for b in batches) == len(samples)
    assert np.array_equal(
        np.sort(np.concatenate([b["cls"].numpy() for b in batches])), np.sort([s["cls"] for s in samples])
    )


def test_unbatched_samples_travel_by_value_with_their_pixels(dataset_dir) -> None:
    """Without batch_size each sample is an item: its image (under INLINE_BYTES) comes in the message."""
    urls, samples = dataset_dir
    ds = ShardDataset(urls, transform=RandomResizedCrop(16))
    want = {}
    for s in ShardDataset(urls, transform=RandomResizedCrop(16)):
        want[s["__key__"]] = s["jpg"]
    got = list(ShardLoader(ds, num_workers=2))
    assert sorted(s["__key__"] for s in got) == sorted(want)
    for s in got:
        img = s["jpg"]
        assert isinstance(img, torch.Tensor) and not img.is_shared() and img.shape == (16, 16, 3)
        assert np.array_equal(img.numpy(), want[s["__key__"]]), s["__key__"]
