"""``ShardLoader.state_dict`` / ``load_state_dict`` field by field: what a state holds before, during
and after an epoch, and which saved configurations a resume refuses (each by its message)."""

from __future__ import annotations

import copy
import re

import pytest

from shardpipe import ShardDataset, ShardLoader, StateError

from .helpers import make_samples, write_manifest_dataset

COUNTS = [6, 3, 7]
KEYS = {"version", "fingerprint", "epoch", "rank", "world_size", "num_workers", "next_worker", "workers"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest_dataset(tmp_path_factory.mktemp("loader-state"), make_samples(sum(COUNTS)), COUNTS)


def loader(manifest: str, workers: int = 0, rank: int = 0, world: int = 1, seed: int = 3) -> ShardLoader:
    ds = ShardDataset(manifest, shuffle=4, seed=seed, batch_size=2, decode=None, rank=rank, world_size=world)
    return ShardLoader(ds, num_workers=workers)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


def test_a_fresh_loader_state_starts_its_epoch(manifest):
    ld = loader(manifest, rank=1, world=2)
    state = ld.state_dict()
    assert set(state) == KEYS
    assert state == {
        "version": 1, "fingerprint": ld.source.fingerprint(), "epoch": 0, "rank": 1, "world_size": 2,
        "num_workers": 0, "next_worker": 0, "workers": None,
    }  # fmt: skip
    ld.set_epoch(4)
    assert ld.state_dict()["epoch"] == 4


def test_mid_epoch_the_state_holds_the_workers_position_and_after_it_the_next_epoch(manifest):
    ld = loader(manifest)
    it = iter(ld)
    first = next(it)
    mid = ld.state_dict()
    assert mid["epoch"] == 0 and mid["next_worker"] == 0
    assert isinstance(mid["workers"], list) and len(mid["workers"]) == 1 and isinstance(mid["workers"][0], dict)
    rest = list(it)
    end = ld.state_dict()
    assert end["epoch"] == 1 and end["workers"] is None and end["next_worker"] == 0
    resumed = loader(manifest)
    resumed.load_state_dict(copy.deepcopy(mid))
    assert keys_of(resumed) == keys_of(rest)
    assert keys_of([first]) + keys_of(rest) == keys_of(loader(manifest))
    nxt = loader(manifest)
    nxt.load_state_dict(end)
    assert nxt.source.epoch == 1
    expected = loader(manifest)
    expected.set_epoch(1)
    assert keys_of(nxt) == keys_of(expected)


def test_a_state_for_other_data_is_refused_naming_both_fingerprints(manifest):
    state = loader(manifest).state_dict()
    other = loader(manifest, seed=4)
    with pytest.raises(StateError) as e:
        other.load_state_dict(state)
    assert str(e.value) == (
        "loader state was saved for other shards or options (shard list, sample counts, seed, shuffle, batch size "
        "or epoch policy differ): resuming would repeat or skip samples "
        f"(state fingerprint {state['fingerprint']}, this loader's {other.source.fingerprint()})"
    )


def mid_epoch_state(manifest: str, **saved) -> dict:
    ld = loader(manifest)
    it = iter(ld)
    next(it)
    state = copy.deepcopy(ld.state_dict())
    state.update(saved)
    return state


@pytest.mark.parametrize(
    "saved, here",
    [
        ({"num_workers": 2, "workers": [None, None]}, {}),  # other worker count
        ({"world_size": 2}, {}),  # other world size, same rank
        ({"world_size": 2, "rank": 1}, {"rank": 0, "world": 2}),  # other rank, same world size
    ],
)
def test_mid_epoch_a_state_from_another_split_is_refused(manifest, saved, here):
    state = mid_epoch_state(manifest, **saved)
    rank, world = here.get("rank", 0), here.get("world", 1)
    ld = loader(manifest, rank=rank, world=world)
    state["fingerprint"] = ld.source.fingerprint()
    message = (
        f"cannot resume mid-epoch with world_size={world}, num_workers=0 (rank {rank}): the state was saved with "
        f"world_size={state['world_size']}, num_workers={state['num_workers']} (rank {state['rank']}), and each "
        "consumer's position only holds for that split; resume with the same configuration, or from a state "
        "saved at an epoch boundary"
    )
    with pytest.raises(StateError, match="^" + re.escape(message) + "$"):
        ld.load_state_dict(state)


def test_at_an_epoch_boundary_any_split_may_resume(manifest):
    ld = loader(manifest)
    list(ld)
    state = ld.state_dict()
    other = loader(manifest, rank=1, world=2)
    state["fingerprint"] = other.source.fingerprint()
    state.update(rank=0, world_size=1, num_workers=3, next_worker=2)
    other.load_state_dict(state)
    assert other.source.epoch == 1
    expected = loader(manifest, rank=1, world=2)
    expected.set_epoch(1)
    assert keys_of(other) == keys_of(expected)


def test_a_malformed_state_is_refused_before_anything_is_compared(manifest):
    state = loader(manifest).state_dict()
    state["epoch"] = -1
    with pytest.raises(StateError, match=r"^state\['epoch'\]: must be >= 0, got -1$"):
        loader(manifest).load_state_dict(state)
    with pytest.raises(StateError, match=r"^state: must be an object \(dict\), got list \[\]$"):
        loader(manifest).load_state_dict([])


def test_a_boundary_state_loaded_after_a_mid_epoch_one_replaces_it(manifest):
    mid = mid_epoch_state(manifest)
    ld = loader(manifest)
    ld.load_state_dict(mid)
    ld.load_state_dict(loader(manifest).state_dict())  # epoch 0 from its start
    assert keys_of(ld) == keys_of(loader(manifest))


def test_a_mixed_source_carries_its_workers_end_states_into_the_next_epoch(manifest):
    from shardpipe import MixedDataset

    def mixed() -> ShardLoader:
        sources = [ShardDataset(manifest, shuffle=4, seed=s, decode=None) for s in (1, 2)]
        return ShardLoader(MixedDataset(sources, [1, 1], samples_per_epoch=6, seed=5, batch_size=2))

    ld = mixed()
    fresh = ld.state_dict()
    assert fresh["workers"] is None and fresh["epoch"] == 0
    first = keys_of(ld)
    end = ld.state_dict()
    assert end["epoch"] == 1 and end["next_worker"] == 0
    assert isinstance(end["workers"], list) and len(end["workers"]) == 1 and end["workers"][0] is not None
    second = keys_of(ld)
    resumed = mixed()
    resumed.load_state_dict(copy.deepcopy(end))
    assert keys_of(resumed) == second and second != first


def test_with_workers_a_boundary_state_starts_the_next_epoch_at_worker_0(manifest):
    """Under the uneven policy the last batch can come from any worker: the position where the
    round robin stopped is not part of an epoch-boundary state, and one there is ignored."""

    def uneven() -> ShardLoader:
        ds = ShardDataset(manifest, seed=3, batch_size=1, decode=None, epoch_policy="uneven")
        return ShardLoader(ds, num_workers=2)

    ld = uneven()
    assert len(keys_of(ld)) == sum(COUNTS)
    assert ld._next_worker == 1  # where the round robin stopped (the precondition of this test)
    end = ld.state_dict()
    assert (end["epoch"], end["next_worker"], end["workers"]) == (1, 0, None)
    expected = uneven()
    expected.set_epoch(1)
    want = keys_of(expected)
    resumed = uneven()
    resumed.load_state_dict({**end, "next_worker": 1})  # valid, and ignored at a boundary
    assert keys_of(resumed) == want
