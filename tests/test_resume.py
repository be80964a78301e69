"""Exact mid-epoch resume: the resumed run yields exactly the rest of the uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop

from .helpers import make_samples, write_manifest_dataset

COUNTS = [8, 4, 12, 1, 7, 9]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("resume")
    return write_manifest_dataset(root, make_samples(sum(COUNTS)), COUNTS)


def make(manifest: str, workers: int, shuffle, epoch_policy="auto", **kw) -> ShardLoader:
    ds = ShardDataset(
        manifest, shuffle=shuffle, seed=7, batch_size=4, transform=RandomResizedCrop(8), epoch_policy=epoch_policy, **kw
    )
    return ShardLoader(ds, num_workers=workers)


def batches(loader, limit=None):
    out = []
    for b in loader:
        out.append((tuple(b["__key__"]), b["jpg"].sum().item()))
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, 6])
def test_resume_at_several_points_gives_the_exact_rest(manifest, workers, shuffle):
    full_loader = make(manifest, workers, shuffle)
    full = batches(full_loader)
    next_epoch = batches(full_loader)
    assert sum(len(k) for k, _ in full) == sum(COUNTS)
    # first batch, mid-shard, the batch ending at the first shard boundary (8 samples), last batch
    for stop in sorted({1, 2, len(full) // 2, len(full) - 1, len(full)}):
        loader = make(manifest, workers, shuffle)
        head = batches(loader, limit=stop)
        state = json.loads(json.dumps(loader.state_dict()))
        assert len(json.dumps(state)) < 4000
        resumed = make(manifest, workers, shuffle)
        resumed.load_state_dict(state)
        rest = batches(resumed)
        assert head + rest == full, f"resume after {stop} batches diverged"
        # nothing skipped was decoded: the resumed run decoded exactly what it yielded
        assert resumed.source.stats.totals()["items.decode"] == sum(len(k) for k, _ in rest)
        assert batches(resumed) == next_epoch  # and the following epoch is the same too


def test_state_between_epochs_starts_the_next_epoch(manifest):
    loader = make(manifest, 2, 6)
    batches(loader)
    state = loader.state_dict()
    assert state["workers"] is None and state["epoch"] == 1
    expected = batches(loader)
    other = make(manifest, 1, 6)  # any worker count may resume at an epoch boundary
    other.load_state_dict(state)
    assert sorted(k for ks, _ in batches(other) for k in ks) == sorted(k for ks, _ in expected for k in ks)
    assert other.source.epoch == 1


def test_changed_world_size_or_workers_mid_epoch_is_refused(manifest):
    loader = make(manifest, 2, 6)
    batches(loader, limit=2)
    state = loader.state_dict()
    with pytest.raises(
        ValueError,
        match=r"cannot resume mid-epoch with world_size=1, num_workers=3 .*saved with world_size=1, num_workers=2",
    ):
        make(manifest, 3, 6).load_state_dict(state)
    ds = ShardDataset(manifest, shuffle=6, seed=7, batch_size=4, transform=RandomResizedCrop(8), rank=0, world_size=2)
    with pytest.raises(ValueError, match="cannot resume mid-epoch with world_size=2"):
        ShardLoader(ds, num_workers=2).load_state_dict(state)


def test_state_for_other_data_or_options_is_refused(manifest):
    loader = make(manifest, 0, 6)
    batches(loader, limit=1)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="saved for other shards or options"):
        make(manifest, 0, 7).load_state_dict(state)
    state["version"] = 0
    with pytest.raises(ValueError, match="loader state has version 0"):
        make(manifest, 0, 6).load_state_dict(state)


def test_set_epoch_orders_are_deterministic_and_distinct(manifest):
    def epoch_keys(epoch):
        loader = make(manifest, 2, 6)
        loader.set_epoch(epoch)
        return [k for ks, _ in batches(loader) for k in ks]

    e0, e1 = epoch_keys(0), epoch_keys(1)
    assert e0 == epoch_keys(0) and e0 != e1 and sorted(e0) == sorted(e1)


def test_resume_inside_gzip_shards(tmp_path: Path):
    path = write_manifest_dataset(tmp_path, make_samples(20), [11, 9], compress="gz")
    full = batches(make(path, 0, False))
    loader = make(path, 0, False)
    head = batches(loader, limit=2)  # 8 samples: inside the first shard
    resumed = make(path, 0, False)
    resumed.load_state_dict(loader.state_dict())
    assert head + batches(resumed) == full


def test_loader_set_epoch_between_passes_selects_that_epoch(manifest):
    loader = make(manifest, 0, 6)
    batches(loader)  # epoch 0
    loader.set_epoch(5)
    fifth = batches(loader)
    assert loader.source.epoch == 5
    fresh = make(manifest, 0, 6)
    fresh.set_epoch(5)
    assert batches(fresh) == fifth
    batches(loader)
    assert loader.source.epoch == 6  # and the passes after it go on from there
