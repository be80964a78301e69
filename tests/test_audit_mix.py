"""Audit of MixedDataset as a user sees it: weights, equal rank epochs, resume, bad weights."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

from shardpipe import MixedDataset, ShardDataset, ShardLoader, StateError
from shardpipe.mix import quotas

from .helpers import make_samples, write_manifest_dataset


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[str, str]:
    """Two manifests: 20 samples keyed ``a...`` and 9 keyed ``b...``."""
    root = tmp_path_factory.mktemp("audit-mix")
    (root / "a").mkdir()
    (root / "b").mkdir()
    return (
        write_manifest_dataset(root / "a", make_samples(20, "a"), [7, 13]),
        write_manifest_dataset(root / "b", make_samples(9, "b"), [4, 5]),
    )


def _mixed(sources: tuple[str, str], weights: list[float], total: int = 40) -> MixedDataset:
    a, b = (ShardDataset(m, decode=None, shuffle=4) for m in sources)
    return MixedDataset([a, b], weights, samples_per_epoch=total, seed=1)


def _keys(loader, limit: int | None = None) -> list[str]:
    out = []
    for s in loader:
        out.append(s["__key__"])
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("weights", [[1e308, 1e308], [1e308, 1e308, 1e308]])
def test_quotas_of_huge_finite_weights_add_up(weights):
    """Their sum overflows to inf: every quota used to be 0 plus the leftovers handed out one each."""
    assert quotas(weights, 12) == [12 // len(weights)] * len(weights)


def test_huge_finite_weights_mix_a_whole_epoch(sources):
    keys = _keys(_mixed(sources, [1e308, 1e308], total=12))
    assert collections.Counter(k[0] for k in keys) == {"a": 6, "b": 6}


def test_weights_hold_in_every_epoch_with_workers(sources):
    loader = ShardLoader(_mixed(sources, [3, 1]), num_workers=2)
    for _ in range(3):
        assert collections.Counter(k[0] for k in _keys(loader)) == {"a": 30, "b": 10}


def test_resume_mid_epoch_is_exact(sources):
    full = _keys(ShardLoader(_mixed(sources, [3, 1]), num_workers=2))
    first = ShardLoader(_mixed(sources, [3, 1]), num_workers=2)
    head = _keys(first, limit=17)
    resumed = ShardLoader(_mixed(sources, [3, 1]), num_workers=2)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + _keys(resumed) == full


def test_ranks_get_equal_batches(sources):
    counts = []
    for rank in range(2):
        a, b = (ShardDataset(m, decode=None, rank=rank, world_size=2) for m in sources)
        mixed = MixedDataset([a, b], [1, 1], samples_per_epoch=21, batch_size=4)
        counts.append([len(batch["__key__"]) for batch in ShardLoader(mixed, num_workers=2)])
    assert counts[0] == counts[1] == [4, 4, 1, 1]


def test_a_zero_weight_source_is_never_read(sources):
    assert {k[0] for k in _keys(_mixed(sources, [0, 1], total=12))} == {"b"}


@pytest.mark.parametrize("weights", [[1, -1], [float("nan"), 1], [float("inf"), 1], [0, 0]])
def test_bad_weights_are_refused(sources, weights):
    with pytest.raises(ValueError, match=r"weights must be finite, >= 0 and not all 0"):
        _mixed(sources, weights)


def test_a_source_too_small_for_the_consumers_is_named(tmp_path: Path, sources):
    one = write_manifest_dataset(tmp_path, make_samples(1, "c"), [1])
    mixed = MixedDataset([ShardDataset(sources[0], decode=None), ShardDataset(one, decode=None)], [1, 1],
                         samples_per_epoch=12)  # fmt: skip
    with pytest.raises(ValueError, match=r"source 1 \(.*shard-0000.tar, ...\) has no samples for consumer"):
        _keys(ShardLoader(mixed, num_workers=2))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_state_without_positions_loaded_after_a_pass_starts_the_sources_afresh(sources, num_workers):
    """A checkpoint taken after ``set_epoch(1)`` on a new loader holds no source positions: loaded into
    a loader that has just run epoch 0, its sources start epoch 1 afresh, as in a new process (without
    workers, the mix went on from where its own last pass had left them)."""
    saved = ShardLoader(_mixed(sources, [3, 1]), num_workers=num_workers)
    saved.set_epoch(1)
    state = json.loads(json.dumps(saved.state_dict()))
    assert (state["epoch"], state["workers"]) == (1, None)
    expected = _keys(saved)
    loader = ShardLoader(_mixed(sources, [3, 1]), num_workers=num_workers)
    assert _keys(loader) != expected  # epoch 0
    loader.load_state_dict(state)
    assert _keys(loader) == expected


def test_a_boundary_state_of_other_workers_is_refused_saying_what_to_do(sources):
    """A mix's state between epochs holds each worker's sources' positions: the message said to
    resume "from a state saved at an epoch boundary", which this state is."""
    saved = ShardLoader(_mixed(sources, [3, 1]), num_workers=2)
    _keys(saved)
    state = json.loads(json.dumps(saved.state_dict()))
    assert state["epoch"] == 1 and state["workers"] is not None
    message = (
        "cannot resume with world_size=1, num_workers=0 (rank 0): the state was saved with world_size=1, "
        "num_workers=2 (rank 0), and a MixedDataset state holds each consumer's position, between epochs too; "
        "resume with the same configuration, or start epoch 1 afresh with this split by set_epoch(1) instead of "
        "loading the state"
    )
    with pytest.raises(StateError, match="^" + re.escape(message) + "$"):
        ShardLoader(_mixed(sources, [3, 1])).load_state_dict(state)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_state_saved_after_an_epochs_last_batch_resumes_the_next_epoch_in_its_own_pass(sources, num_workers):
    """The state after the last batch of epoch 0 points at epoch 1: without workers, the resumed pass of
    epoch 0 ran all of epoch 1, and every later pass one epoch ahead (an extra epoch of samples)."""
    reference = ShardLoader(_mixed(sources, [3, 1]), num_workers=num_workers)
    _keys(reference)  # epoch 0
    expected = [[], _keys(reference), _keys(reference)]  # the rest of epoch 0 (nothing), epochs 1 and 2
    first = ShardLoader(_mixed(sources, [3, 1]), num_workers=num_workers)
    _keys(first, limit=40)  # every sample of epoch 0, the pass left before its end
    resumed = ShardLoader(_mixed(sources, [3, 1]), num_workers=num_workers)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [_keys(resumed) for _ in range(3)] == expected
    assert resumed.source.epoch == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumes_a_state_saved_after_an_epochs_last_batch(sources, num_workers):
    """The documented StatefulDataLoader loop (set_epoch each epoch): the resumed epoch 0 ran all of
    epoch 1, and the loop then ran epoch 1 again (an extra epoch). Without workers, StatefulDataLoader
    loads the dataset's state as the pass starts, after the loop's set_epoch(0), and the state's epoch won."""
    stateful = pytest.importorskip("torchdata.stateful_dataloader")

    def run(state=None, stop=None):
        mixed = _mixed(sources, [3, 1])
        loader = stateful.StatefulDataLoader(mixed, batch_size=None, num_workers=num_workers)
        if state is not None:
            loader.load_state_dict(state)
        keys = []
        for epoch in range(2):
            mixed.set_epoch(epoch)
            for sample in loader:
                keys.append(sample["__key__"])
                if len(keys) == stop:
                    return keys, loader.state_dict()
        return keys, None

    expected, _ = run()
    head, state = run(stop=40)
    assert head + run(state)[0] == expected


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_source_counts_the_samples_it_skipped_in_its_stats(tmp_path: Path, num_workers):
    """A bad sample skipped by a source (on_error="skip") was counted nowhere: a source read through a
    MixedDataset never added what its pipeline measured to its ``stats``, which stayed empty."""
    samples = make_samples(20, "a")
    samples[3]["jpg"] = b"\xff\xd8 not a jpeg"  # the 4th sample of shard 0: drawn in the first epoch
    bad = write_manifest_dataset(tmp_path, samples, [10, 10])
    a = ShardDataset(bad, decode="rgb8", on_error="skip")
    (tmp_path / "b").mkdir()
    b = ShardDataset(write_manifest_dataset(tmp_path / "b", make_samples(20, "b"), [10, 10]), decode="rgb8")
    mixed = MixedDataset([a, b], [1, 1], samples_per_epoch=32, seed=1, batch_size=4)  # a: 8 draws a worker
    loader = ShardLoader(mixed, num_workers=num_workers) if num_workers else mixed
    keys = [k for batch in loader for k in batch["__key__"]]
    assert len(keys) == 32 and "a00003" not in keys
    assert (a.stats.errors(), b.stats.errors()) == ({"DecodeError": 1}, {})
    alone = ShardDataset(bad, decode="rgb8", on_error="skip")
    assert len(list(alone)) == 19 and alone.stats.errors() == a.stats.errors()  # as it counts when read alone
