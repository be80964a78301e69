"""ShardLoader with persistent workers, the dataset's shared epoch/plan, and refused DataLoader arguments."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from shardpipe import ShardDataset, ShardLoader, worker_context
from shardpipe.augment import RandomResizedCrop
from shardpipe.config import load_config
from shardpipe.passes import SharedPlan, WorkerPlan

from .helpers import make_samples, write_manifest_dataset

COUNTS = [8, 4, 12, 1, 7, 9, 5]
TOTAL = sum(COUNTS)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest_dataset(tmp_path_factory.mktemp("persistent"), make_samples(TOTAL), COUNTS)


def dataset(manifest: str) -> ShardDataset:
    return ShardDataset(manifest, shuffle=6, seed=11, batch_size=4, transform=RandomResizedCrop(8))


def _record_start(log_dir: str, worker_id: int) -> None:
    Path(log_dir, f"{os.getpid()}-{worker_id}").touch()


def loader(manifest: str, workers: int, persistent: bool, starts: Path | None = None) -> ShardLoader:
    init = None
    if starts is not None:
        starts.mkdir(exist_ok=True)
        import functools

        init = functools.partial(_record_start, str(starts))
    return ShardLoader(dataset(manifest), num_workers=workers, persistent_workers=persistent, worker_init_fn=init)


def batches(source, limit=None) -> list[tuple[tuple[str, ...], int]]:
    """(keys, pixel sum) per batch: the order and the decoded, augmented pixels."""
    out = []
    for b in source:
        out.append((tuple(b["__key__"]), int(b["jpg"].sum())))
        if limit is not None and len(out) == limit:
            break
    return out


def keys(epoch: list[tuple[tuple[str, ...], int]]) -> list[str]:
    return [k for ks, _ in epoch for k in ks]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_persistent_epochs_equal_fresh_workers_and_every_sample_once(manifest, tmp_path, workers):
    fresh = loader(manifest, workers, persistent=False)
    expected = [batches(fresh) for _ in range(3)]
    starts = tmp_path / "starts"
    kept = loader(manifest, workers, persistent=True, starts=starts)
    got = [batches(kept) for _ in range(3)]
    assert got == expected
    for epoch in got:
        assert sorted(keys(epoch)) == [f"sample{i:05d}" for i in range(TOTAL)]
    assert len({tuple(keys(e)) for e in got}) == 3  # each epoch its own order
    assert len(list(starts.iterdir())) == workers  # the workers started once, not once per epoch


def test_set_epoch_between_persistent_passes(manifest):
    def epoch_of(n: int) -> list:
        fresh = loader(manifest, 2, persistent=False)
        fresh.set_epoch(n)
        return batches(fresh)

    kept = loader(manifest, 2, persistent=True)
    assert batches(kept) == epoch_of(0)
    kept.set_epoch(5)
    assert batches(kept) == epoch_of(5)
    assert batches(kept) == epoch_of(6)  # later passes go on from there
    kept.source.set_epoch(2)  # on the dataset itself, too
    assert batches(kept) == epoch_of(2)
    assert kept.source.epoch == 2


def _saved_mid_epoch(manifest: str, stop: int) -> tuple[list, dict, list, list]:
    """(head, state after ``stop`` batches, the whole epoch, the next epoch) of a fresh-worker run."""
    full_run = loader(manifest, 2, persistent=False)
    full, following = batches(full_run), batches(full_run)
    cut = loader(manifest, 2, persistent=False)
    head = batches(cut, limit=stop)
    return head, json.loads(json.dumps(cut.state_dict())), full, following


@pytest.mark.parametrize("stop", [1, 3, 7])
def test_resume_into_a_fresh_persistent_loader(manifest, stop):
    head, state, full, following = _saved_mid_epoch(manifest, stop)
    resumed = loader(manifest, 2, persistent=True)
    resumed.load_state_dict(state)
    assert head + batches(resumed) == full
    assert batches(resumed) == following


@pytest.mark.parametrize("midway", [False, True])
def test_resume_into_a_running_persistent_loader(manifest, tmp_path, midway):
    head, state, full, following = _saved_mid_epoch(manifest, 3)
    starts = tmp_path / "starts"
    running = loader(manifest, 2, persistent=True, starts=starts)
    batches(running)  # a whole epoch: the workers are up
    if midway:
        batches(running, limit=2)  # and a pass left unfinished
    running.load_state_dict(state)
    assert head + batches(running) == full
    assert batches(running) == following
    assert len(list(starts.iterdir())) == 2  # resumed by the same two workers
    # and a state saved from the persistent loader resumes a fresh-worker loader the same way
    again = loader(manifest, 2, persistent=True)
    again.load_state_dict(state)
    part = batches(again, limit=2)
    fresh = loader(manifest, 2, persistent=False)
    fresh.load_state_dict(again.state_dict())
    assert head + part + batches(fresh) == full


def test_plain_dataloader_persistent_workers_follow_set_epoch(manifest):
    """The dataset's own protocol: set_epoch reaches running workers of any DataLoader."""
    ds = dataset(manifest)
    plain = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, timeout=120,
                       multiprocessing_context=worker_context(ds))  # fmt: skip
    reference = loader(manifest, 2, persistent=False)
    for epoch in (0, 3, 1):
        ds.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert batches(plain) == batches(reference)


def test_worker_state_refused_elsewhere(manifest):
    ds = dataset(manifest)
    it = iter(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=_state_and_item, timeout=120,
                         multiprocessing_context=worker_context(ds)))  # fmt: skip
    state, _ = next(it)
    del it
    assert state["consumer"] == {"rank": 0, "world_size": 1, "worker": 0, "num_workers": 2}
    inline = dataset(manifest)
    inline.load_state_dict(state)
    with pytest.raises(ValueError, match=r"cannot resume mid-epoch as worker 0 of 1 on rank 0 of 1: .*worker 0 of 2"):
        next(iter(inline))
    other = ShardDataset(manifest, shuffle=7, seed=11, batch_size=4)
    with pytest.raises(ValueError, match="dataset state was saved for other shards or options"):
        other.load_state_dict(state)


def _state_and_item(item):
    from torch.utils.data import get_worker_info

    return get_worker_info().dataset.state_dict(), item


REFUSED = [
    ({"batch_size": 32}, r"batch_size=32: .*pass batch_size to ShardDataset\(\.\.\., batch_size=N\)"),
    ({"shuffle": True}, r"shuffle=True: .*pass shuffle=True \(or a buffer size\) to ShardDataset"),
    ({"sampler": [0, 1]}, r"sampler=\[0, 1\]: .*plans its own order and rank/worker split"),
    ({"batch_sampler": [[0, 1]]}, r"batch_sampler=\[\[0, 1\]\]: .*makes its own batches"),
    (
        {"drop_last": True},
        r"drop_last=True: ShardDataset makes the batches; ask it instead: ShardDataset\(\.\.\., batch_size=N, drop_last=True\)",
    ),
    ({"collate_fn": list}, r"collate_fn=<class 'list'>: .*ShardDataset already collates"),
    ({"in_order": False}, r"in_order=False: .*round robin"),
    ({"persistent_workers": True}, r"persistent_workers=True with num_workers=0: there are no worker processes"),
]


@pytest.mark.parametrize("kwargs,message", REFUSED, ids=[next(iter(k)) for k, _ in REFUSED])
def test_arguments_shardloader_cannot_honour_are_refused(manifest, kwargs, message):
    with pytest.raises(ValueError, match=r"^ShardLoader cannot honour " + message):
        ShardLoader(dataset(manifest), **kwargs)


def test_refused_from_yaml_config_and_harmless_values_accepted(manifest):
    with pytest.raises(ValueError, match="ShardLoader cannot honour batch_size=64"):
        load_config({"dataset": {"urls": manifest, "batch_size": 4}, "loader": {"batch_size": 64}})
    ok = ShardLoader(dataset(manifest), batch_size=None, shuffle=False, drop_last=False, in_order=True)
    assert sorted(keys(batches(ok))) == [f"sample{i:05d}" for i in range(TOTAL)]


def test_shared_plan_round_trip_and_capacity():
    plan = SharedPlan(capacity=64)
    assert plan.read() == (0, None)
    plan.set_epoch(4)
    plan.set_plan(WorkerPlan(7, 1, [None, {"epoch": 7}]))
    assert plan.read() == (4, WorkerPlan(7, 1, [None, {"epoch": 7}]))
    plan.set_plan(None)
    assert plan.read() == (4, None)
    with pytest.raises(ValueError, match=r"resume states take \d+ bytes, more than the 64 bytes shared"):
        plan.set_plan(WorkerPlan(0, 0, [{"stages": "x" * 80}]))
