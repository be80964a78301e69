"""Recycled shared-memory batch buffers: reused once the training loop lets go, never before."""

from __future__ import annotations

import pytest
import torch

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop
from shardpipe.stages.buffers import SLOTS, BatchBuffers, _segment_id


def per_key_pixels(urls: list[str], epoch: int = 0) -> dict[str, torch.Tensor]:
    """Each sample's augmented pixels, from an in-process pass (crops are seeded per key and epoch)."""
    out = {}
    ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2)
    ds.set_epoch(epoch)
    for batch in ds:
        for key, img in zip(batch["__key__"], batch["jpg"]):
            out[key] = img.clone()
    return out


def check(batch: dict, ref: dict[str, torch.Tensor]) -> None:
    for key, img in zip(batch["__key__"], batch["jpg"]):
        assert torch.equal(img, ref[key]), key


def test_batches_the_loop_drops_are_recycled_with_the_right_pixels(dataset_dir) -> None:
    urls, samples = dataset_dir
    ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2)
    loader = ShardLoader(ds, num_workers=2, prefetch_factor=2)
    segments, batches = set(), 0
    for epoch in range(2):  # new workers each epoch: their own segments, nothing stale freed
        ref = per_key_pixels(urls, epoch)
        for batch in loader:
            check(batch, ref)
            segments.add(_segment_id(batch["jpg"].untyped_storage()))
            batches += 1
    assert batches >= 2 * len(samples) // 2
    assert len(segments) <= 2 * 2 * SLOTS < batches  # reused, per worker and epoch at most SLOTS


def test_batches_the_loop_keeps_are_never_overwritten(dataset_dir) -> None:
    urls, _ = dataset_dir
    ref = per_key_pixels(urls)
    kept = list(ShardLoader(ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2), num_workers=2))
    assert len(kept) > 2 * SLOTS  # more batches than slots: the workers had to allocate fresh ones
    for batch in kept:
        check(batch, ref)
    segments = {_segment_id(b["jpg"].untyped_storage()) for b in kept}
    assert len(segments) == len(kept)


def test_a_plain_dataloader_does_not_use_the_pool(dataset_dir) -> None:
    """Nobody would free the slots: every batch gets its own segment, as before."""
    urls, _ = dataset_dir
    ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1))
    assert all(b["jpg"].is_shared() for b in batches)
    assert len({_segment_id(b["jpg"].untyped_storage()) for b in batches}) == len(batches)
    assert ds.buffers is None  # no pool was ever handed to a worker


def test_a_view_keeps_its_batch_busy() -> None:
    pool = BatchBuffers()
    t = pool.take((4, 3, 8, 8), worker=0)
    ptr = t.data_ptr()
    pool.track(0, {"jpg": t})
    view = t[1:3]
    del t
    assert pool.release() == 0  # the view still reads the buffer
    assert pool.take((4, 3, 8, 8), worker=0).data_ptr() != ptr  # so the worker gets another one
    del view
    assert pool.release() == 1
    assert pool.take((4, 3, 8, 8), worker=0).data_ptr() == ptr  # now it is reused


def test_a_slot_taken_over_by_a_new_segment_is_not_freed_for_the_old_one() -> None:
    pool = BatchBuffers()
    t = pool.take((2, 3, 4, 4), worker=1)
    pool.track(1, {"jpg": t})
    pool.table[1, 0, 1] = 12345  # the slot now holds another segment (a restarted worker's)
    del t
    assert pool.release() == 0
    assert int(pool.table[1, 0, 0]) == 1  # still busy: its new owner decides


@pytest.mark.parametrize("persistent", [False, True])
def test_two_loaders_over_one_dataset_never_recycle_each_others_batches(dataset_dir, persistent) -> None:
    """Each pass of workers takes its own pool: a batch one loop keeps is never overwritten by
    the other loader's workers (they once shared one table of slots, indexed by worker id)."""
    urls, _ = dataset_dir
    ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2)
    a = ShardLoader(ds, num_workers=2, persistent_workers=persistent)
    b = ShardLoader(ds, num_workers=2, persistent_workers=persistent)
    for epoch in range(2 if persistent else 1):  # both loaders' second pass is epoch 1
        ref = per_key_pixels(urls, epoch)
        kept: list[dict] = []
        for x, y in zip(a, b):
            kept = (kept + [x])[-12:]  # a loop that holds on to a's last batches
            for batch in (*kept, y):
                check(batch, ref)
        assert len(kept) == 12
    assert ds.buffers is None


def test_torch_tensor_samples_are_batched_in_recycled_buffers_with_the_same_pixels(dataset_dir) -> None:
    urls, samples = dataset_dir
    ref = per_key_pixels(urls)
    ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2, decode="torchrgb8")
    segments, keys = set(), []
    for batch in ShardLoader(ds, num_workers=2, prefetch_factor=2):
        check(batch, ref)
        segments.add(_segment_id(batch["jpg"].untyped_storage()))
        keys += batch["__key__"]
    assert sorted(keys) == sorted(s["__key__"] for s in samples)
    assert len(segments) <= 2 * SLOTS < len(keys) // 2  # recycled, as rgb8 batches are


def test_a_full_pool_hands_out_unpooled_buffers_then_replaces_a_free_slot_of_another_size() -> None:
    pool = BatchBuffers()
    held = [pool.take((2, 3, 4, 4), worker=0) for _ in range(SLOTS)]  # every slot busy
    extra = pool.take((1, 3, 4, 4), worker=0)
    assert extra.shape == (1, 3, 4, 4) and pool.slot_of(extra) is None  # unpooled: nothing to recycle
    pool.table[0, 5, 0] = 0  # the loop let go of slot 5's batch
    other = pool.take((1, 3, 4, 4), worker=0)
    assert pool.slot_of(other) == 5 and int(pool.table[0, 5, 0]) == 1
    assert int(pool.table[0, 5, 1]) == _segment_id(other.untyped_storage()) and int(pool.table[0, 5, 2]) == 48
    assert [pool.slot_of(t) for t in held[:5]] == list(range(5))


def test_a_pool_crosses_into_a_worker_with_its_table_and_without_its_buffers() -> None:
    import pickle
    from multiprocessing.reduction import ForkingPickler

    pool = BatchBuffers()
    t = pool.take((2, 3, 4, 4), worker=1)
    pool.track(1, {"jpg": t})
    copy = pickle.loads(ForkingPickler.dumps(pool))  # as spawn and forkserver workers receive it
    assert copy._pool == {} and copy._held == [] and copy._mapped == {}
    copy.table[1, 0, 0] = 0  # one table, shared: the original sees what the copy writes
    assert int(pool.table[1, 0, 0]) == 0
    assert copy.take((2, 3, 4, 4), worker=2).shape == (2, 3, 4, 4)


def test_a_reference_to_a_zero_dimensional_view_resolves() -> None:
    from shardpipe.stages.buffers import SlotRef

    pool = BatchBuffers()
    t = pool.take((2, 3, 4, 4), worker=0)
    t.view(-1)[7] = 42
    pool.track(0, {"jpg": t})
    seg = int(pool.table[0, 0, 1])
    got = pool.resolve(0, SlotRef(slot=0, segment=seg, shape=(), stride=(), offset=7))
    assert got.shape == () and int(got) == 42


def test_every_pooled_field_of_a_batch_is_tracked_and_freed() -> None:
    """A sample with two image fields makes two batch tensors: both go back to the pool."""
    pool = BatchBuffers()
    jpg, png = pool.take((2, 3, 4, 4), worker=0), pool.take((2, 3, 4, 4), worker=0)
    pool.track(0, {"jpg": jpg, "png": png, "cls": torch.tensor([1, 2])})
    assert pool.release() == 0  # the loop still holds both
    del jpg, png
    assert pool.release() == 2
    assert [int(pool.table[0, s, 0]) for s in range(2)] == [0, 0]


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")
def test_a_pinned_memory_loader_gets_torchs_batches_without_a_pool(dataset_dir) -> None:
    """pin_memory=True copies each batch before the loop sees it: no recycling, no references
    (here, without a GPU, torch skips the pinning itself; the loader still keeps out of its way)."""
    urls, _ = dataset_dir
    ref = per_key_pixels(urls)
    loader = ShardLoader(
        ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=2), num_workers=2, pin_memory=True
    )
    batches = list(loader)
    for batch in batches:
        check(batch, ref)
    assert len({_segment_id(b["jpg"].untyped_storage()) for b in batches}) == len(batches)  # one fresh segment each
    assert all(b["cls"].is_shared() for b in batches)  # labels as torch sends them, not by value
