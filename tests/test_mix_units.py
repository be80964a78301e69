"""MixedDataset units: the draw order's seeding, the first epoch, resume refusals by message,
batches of a single source, and a pass inside DataLoader workers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shardpipe import MixedDataset, ShardDataset, ShardLoader
from shardpipe.errors import StateError
from shardpipe.mix import draw_order, quotas
from shardpipe.state import STATE_VERSION

from .helpers import make_samples, write_manifest_dataset


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[str, str]:
    """Two manifests: 8 samples keyed ``a...`` (shards of 3 and 5), 6 keyed ``b...`` (2 and 4)."""
    root = tmp_path_factory.mktemp("mix-units")
    (root / "a").mkdir()
    (root / "b").mkdir()
    return (
        write_manifest_dataset(root / "a", make_samples(8, "a"), [3, 5]),
        write_manifest_dataset(root / "b", make_samples(6, "b"), [2, 4]),
    )


def _mixed(sources, weights=(3, 1), samples_per_epoch=8, seed=5, **kw) -> MixedDataset:
    a, b = (ShardDataset(m, decode=None, shuffle=4, seed=1 + i) for i, m in enumerate(sources))
    return MixedDataset([a, b], list(weights), samples_per_epoch=samples_per_epoch, seed=seed, **kw)


def _keys(items) -> list[str]:
    out: list[str] = []
    for item in items:
        key = item["__key__"]
        out.extend(key if isinstance(key, list) else [key])
    return out


# -- draw_order ----------------------------------------------------------------


def test_draw_order_is_the_quotas_permuted_by_the_documented_seed():
    """The order is a seeded permutation of the quotas, seeded by (seed, epoch, consumer) and the
    salt "mix" in ASCII; a saved state's ``drawn`` indexes this order, so it must not change
    between versions (a resume would repeat or skip samples)."""
    weights, total, seed, epoch, consumer = [0.5, 0.3, 0.2], 20, 11, 3, 2
    counts = quotas(weights, total)
    assert counts == [10, 6, 4]
    salt = int.from_bytes(b"mix", "big")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, consumer, salt])))
    expected = rng.permutation(np.repeat(np.arange(3, dtype=np.int32), counts))

    got = draw_order(weights, total, seed, epoch, consumer)
    assert got.dtype == np.int32
    assert got.tolist() == expected.tolist()
    assert Counter(got.tolist()) == {0: 10, 1: 6, 2: 4}
    # each of seed, epoch and consumer gives another order of the same multiset
    for other in ((seed + 1, epoch, consumer), (seed, epoch + 1, consumer), (seed, epoch, consumer + 1)):
        order = draw_order(weights, total, *other)
        assert Counter(order.tolist()) == {0: 10, 1: 6, 2: 4}
        assert order.tolist() != got.tolist()


# -- the first epoch -------------------------------------------------------------


def test_a_new_mix_starts_at_epoch_0(sources):
    mix = _mixed(sources)
    assert mix.epoch == 0
    assert mix.state_dict() == {
        "version": STATE_VERSION,
        "epoch": 0,
        "drawn": 0,
        "sources": None,
        "fingerprint": mix.fingerprint(),
    }
    first = _keys(mix)
    # its first pass is mixed epoch 0: the same as a pass asked for epoch 0 explicitly
    again = _mixed(sources)
    again.set_epoch(0)
    assert _keys(again) == first
    # 8 draws split 3:1 -> 6 from a, 2 from b
    assert Counter(k[0] for k in first) == {"a": 6, "b": 2}
    # after the whole pass the state points at the start of epoch 1
    after = mix.state_dict()
    assert (after["epoch"], after["drawn"]) == (1, 0)


def test_buffers_are_none_outside_a_worker_start(sources):
    """``buffers`` is a ShardLoader's pool only while its workers start (protocol.WorkerPassHooks)."""
    mix = _mixed(sources)
    assert mix.buffers is None
    _keys(mix)
    assert mix.buffers is None


# -- refused states, by message ----------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [{"weights": (1, 1)}, {"samples_per_epoch": 10}, {"seed": 6}, {"batch_size": 4}, {"drop_last": True}],
    ids=["weights", "samples_per_epoch", "seed", "batch_size", "drop_last"],
)
def test_a_state_of_other_options_is_refused_naming_both_fingerprints(sources, changed):
    saved_by = _mixed(sources, **changed)
    mix = _mixed(sources)
    assert saved_by.fingerprint() != mix.fingerprint()
    state = saved_by.state_dict()
    mix.load_state_dict(state)
    with pytest.raises(StateError) as e:
        iter(mix)
    assert str(e.value) == (
        "mixed state was saved for other sources or options (shards, weights, samples_per_epoch, seed or batch size "
        f"differ): resuming would repeat or skip samples (state fingerprint {saved_by.fingerprint()}, this "
        f"dataset's {mix.fingerprint()})"
    )


def test_a_state_of_another_consumer_is_refused_naming_both(sources):
    mix = _mixed(sources)
    it = iter(mix)
    next(it)
    state = mix.state_dict()
    it.close()
    assert state["consumer"] == {"rank": 0, "world_size": 1, "worker": 0, "num_workers": 1}
    # the same state, as if saved by worker 2 of 4 on rank 1 of 3
    state["consumer"] = {"rank": 1, "world_size": 3, "worker": 2, "num_workers": 4}
    fresh = _mixed(sources)
    fresh.load_state_dict(state)
    with pytest.raises(StateError) as e:
        iter(fresh)
    assert str(e.value) == (
        "cannot continue a mixed state saved by worker 2 of 4 on rank 1 of 3 as worker 0 of 1 on rank 0 of 1: "
        "each consumer's sources stand at their own positions"
    )


# -- batches ---------------------------------------------------------------------


def test_a_single_source_mix_batches_its_samples(sources):
    a = ShardDataset(sources[0], decode=None, shuffle=4, seed=1)
    mix = MixedDataset([a], [1.0], samples_per_epoch=5, batch_size=2)
    batches = list(mix)
    assert [len(b["__key__"]) for b in batches] == [2, 2, 1]
    keys = _keys(batches)
    # 5 draws of a source of 8 samples: 5 distinct samples of it
    assert len(set(keys)) == 5 and all(k.startswith("a") for k in keys)
    # with drop_last the fifth draw is not taken
    dropped = MixedDataset([a], [1.0], samples_per_epoch=5, batch_size=2, drop_last=True)
    assert [len(b["__key__"]) for b in dropped] == [2, 2]


# -- DataLoader workers ------------------------------------------------------------


def test_a_pass_in_workers_keeps_the_proportions_per_worker(sources):
    """Each of 2 workers is a consumer of 10 // 2 = 5 draws, split 3:1 -> 4 from a, 1 from b."""
    mix = _mixed(sources, samples_per_epoch=10)
    in_process = _keys(mix)  # one consumer of all 10 draws: 8 from a (its epoch's 8 samples) and 2 from b
    assert Counter(k[0] for k in in_process) == {"a": 8, "b": 2}
    assert sorted(k for k in in_process if k[0] == "a") == [f"a{i:05d}" for i in range(8)]

    loader = ShardLoader(_mixed(sources, samples_per_epoch=10), num_workers=2)
    keys = _keys(loader)
    assert len(keys) == 10
    assert Counter(k[0] for k in keys) == {"a": 8, "b": 2}
    # the two workers read disjoint halves of each source's epoch: no sample twice
    assert len(set(keys)) == 10
