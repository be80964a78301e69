"""torchdata's StatefulDataLoader over a ShardDataset: mid-epoch save and restore are exact."""

from __future__ import annotations

import json

import pytest

from shardpipe import ShardDataset, worker_context
from shardpipe.augment import RandomResizedCrop

from .helpers import make_samples, write_manifest_dataset

stateful = pytest.importorskip("torchdata.stateful_dataloader")

COUNTS = [8, 4, 12, 1, 7, 9]
TOTAL = sum(COUNTS)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest_dataset(tmp_path_factory.mktemp("stateful"), make_samples(TOTAL), COUNTS)


def make(manifest: str, workers: int, epoch: int = 0, **kw):
    ds = ShardDataset(manifest, shuffle=6, seed=3, batch_size=4, transform=RandomResizedCrop(8))
    ds.set_epoch(epoch)
    if workers:  # the test session's server threads are alive: no plain fork beside them
        kw.setdefault("multiprocessing_context", worker_context(ds))
    return stateful.StatefulDataLoader(ds, batch_size=None, num_workers=workers, **kw), ds


def batches(loader, limit=None) -> list[tuple[tuple[str, ...], int]]:
    out = []
    for b in loader:
        out.append((tuple(b["__key__"]), int(b["jpg"].sum())))
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_save_and_restore_mid_epoch_gives_the_exact_rest(manifest, workers):
    full = batches(make(manifest, workers)[0])
    assert sorted(k for ks, _ in full for k in ks) == [f"sample{i:05d}" for i in range(TOTAL)]
    next_epoch = batches(make(manifest, workers, epoch=1)[0])
    assert next_epoch != full
    for stop in sorted({1, 3, len(full) - 1}):
        loader, _ = make(manifest, workers)
        head = batches(loader, limit=stop)
        state = json.loads(json.dumps(loader.state_dict()))  # a checkpoint as plain JSON
        resumed, ds = make(manifest, workers)
        resumed.load_state_dict(state)
        rest = batches(resumed)
        assert head + rest == full, f"restore after {stop} batches diverged"
        # nothing skipped was decoded again: the resumed loader decoded exactly what it yielded
        assert ds.stats.totals()["items.decode"] == sum(len(k) for k, _ in rest)
        ds.set_epoch(1)  # the usual loop: set the epoch, then iterate
        assert batches(resumed) == next_epoch


def test_persistent_workers_follow_set_epoch(manifest):
    expected = [batches(make(manifest, 2, epoch=e)[0]) for e in (0, 1)]
    loader, ds = make(manifest, 2, persistent_workers=True)
    assert batches(loader) == expected[0]
    ds.set_epoch(1)
    assert batches(loader) == expected[1]


def test_state_from_other_options_is_refused(manifest):
    loader, _ = make(manifest, 0)
    batches(loader, limit=2)
    state = loader.state_dict()
    other = ShardDataset(manifest, shuffle=6, seed=4, batch_size=4)
    restored = stateful.StatefulDataLoader(other, batch_size=None)
    restored.load_state_dict(state)
    with pytest.raises(ValueError, match="dataset state was saved for other shards or options"):
        next(iter(restored))
