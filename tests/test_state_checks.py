"""``shardpipe.state``'s checks on their own: each refusal by its exact message, each bound at its edge.

The dataset-level tests (tests/test_trust_state.py) show tampered states are refused on the
way in; these pin what each check accepts and says, so a loosened bound cannot pass unseen.
"""

from __future__ import annotations

import copy

import pytest

from shardpipe.errors import StateError
from shardpipe.state import (
    MAX_DEPTH,
    MAX_INT,
    MAX_STR,
    StateCheck,
    check_json,
    check_version,
    validate_dataset_state,
    validate_loader_state,
    validate_mixed_state,
    validate_pipeline_state,
    validate_remote_state,
)


def refused(message: str):
    """``pytest.raises`` for a StateError whose whole message is ``message``."""
    import re

    return pytest.raises(StateError, match="^" + re.escape(message) + "$")


# -- StateCheck ------------------------------------------------------------------------------
def test_paths_nest_by_repr_of_each_key():
    assert StateCheck().path == "state"
    assert StateCheck("s").at("a").at(0).at("b").path == "s['a'][0]['b']"
    with refused("x['k']: went wrong"):
        StateCheck("x").at("k").fail("went wrong")


def test_integer_bounds_are_inclusive_and_bools_are_not_integers():
    c = StateCheck("n")
    assert c.integer(0) == 0 and c.integer(MAX_INT) == MAX_INT
    assert c.integer(3, 3, 3) == 3
    with refused(f"n: must be <= {MAX_INT}, got {MAX_INT + 1}"):
        c.integer(MAX_INT + 1)
    with refused("n: must be >= 0, got -1"):
        c.integer(-1)
    with refused("n: must be >= 3, got 2"):
        c.integer(2, 3, 9)
    with refused("n: must be <= 9 (why), got 10"):
        c.integer(10, 3, 9, " (why)")
    with refused("n: must be an integer, got bool False"):
        c.integer(False)
    with refused("n: must be an integer, got float 1.0"):
        c.integer(1.0)
    with refused("n: must be an integer, got NoneType None"):
        c.integer(None)


def test_boolean_string_and_sequence():
    c = StateCheck("v")
    assert c.boolean(True) is True and c.boolean(False) is False
    with refused("v: must be true or false, got int 0"):
        c.boolean(0)
    assert c.string("") == "" and c.string(None, none=True) is None
    assert c.string("x" * MAX_STR) == "x" * MAX_STR
    with refused(f"v: is {MAX_STR + 1} characters long, over the limit of {MAX_STR}"):
        c.string("x" * (MAX_STR + 1))
    assert c.string("abc", max_len=3) == "abc"
    with refused("v: is 4 characters long, over the limit of 3"):
        c.string("abcd", max_len=3)
    with refused("v: must be a string, got NoneType None"):
        c.string(None)
    with refused("v: must be a string or null, got int 5"):
        c.string(5, none=True)
    assert c.sequence([1, 2]) == [1, 2] and c.sequence([], 0) == []
    with refused("v: must be a list, got tuple (1,)"):
        c.sequence((1,))
    with refused("v: must have 3 entries, got 2"):
        c.sequence([1, 2], 3)


def test_mapping_names_missing_and_unknown_keys():
    c = StateCheck("m")
    value = {"a": 1, "b": 2}
    assert c.mapping(value, ["a"], ["b"]) is value
    assert c.mapping({"a": 1}, ["a"], ["b"]) == {"a": 1}
    with refused("m: missing key(s) 'b', 'c'"):
        c.mapping({"a": 1}, ["a", "b", "c"])
    with refused("m: unknown key(s) 'x', 'y'"):
        c.mapping({"a": 1, "x": 0, "y": 0}, ["a"])
    many = {f"k{i}": 0 for i in range(7)}
    with refused("m: unknown key(s) 'k0', 'k1', 'k2', 'k3', 'k4'"):
        c.mapping(many, [])
    long_key = "q" * 100
    with refused(f"m: unknown key(s) {repr(long_key)[:60]}"):
        c.mapping({long_key: 0}, [])
    with refused("m: must be an object (dict), got list [1]"):
        c.mapping([1], [])


def test_equal_compares_type_as_well_as_value():
    c = StateCheck("e")
    c.equal(3, 3, "the plan's")
    with refused("e: is True, but the plan's is 1"):
        c.equal(True, 1, "the plan's")
    with refused("e: is 'a', but the plan's is 'b'"):
        c.equal("a", "b", "the plan's")
    long = "z" * 100
    with refused(f"e: is {repr(long)[:77]}..., but x is 1"):
        c.equal(long, 1, "x")
    exactly = "y" * 78  # its repr is 80 characters: shown whole
    with refused(f"e: is {exactly!r}, but x is 1"):
        c.equal(exactly, 1, "x")


# -- check_json ------------------------------------------------------------------------------
def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_json_depth_is_bounded_inclusively():
    check_json(nested(MAX_DEPTH))
    with refused(f"state: nests deeper than {MAX_DEPTH} levels"):
        check_json(nested(MAX_DEPTH + 1))
    deep: dict = {}
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    with refused(f"s: nests deeper than {MAX_DEPTH} levels"):
        check_json(deep, StateCheck("s"))


def test_json_counts_values(monkeypatch):
    import shardpipe.state as state

    monkeypatch.setattr(state, "MAX_VALUES", 5)
    check_json([1, 2, 3, 4])  # the list and four values
    with refused("state: holds more than 5 values"):
        check_json([1, 2, 3, 4, 5])
    with refused("state: holds more than 5 values"):
        check_json({"a": [1, 2], "b": {"c": 3}})


def test_json_types_keys_and_string_lengths():
    check_json({"a": [None, True, 1, 1.5, "s", (1, 2)], "b": {}})
    with refused("state: has a key of type int (keys are strings)"):
        check_json({1: 2})
    with refused("state: holds a bytes, which is not a JSON value"):
        check_json({"a": [b"x"]})
    with refused("state: holds a set, which is not a JSON value"):
        check_json({"a": {1}})
    check_json("x" * MAX_STR)
    with refused(f"state: holds a string of {MAX_STR + 1} characters, over the limit of {MAX_STR}"):
        check_json(["x" * (MAX_STR + 1)])


def test_version_first():
    c = StateCheck()
    check_version({"version": 1}, c, "dataset")
    with refused("state['version']: loader state has version 2; this shardpipe reads 1"):
        check_version({"version": 2}, c, "loader")
    with refused("state['version']: mixed state has version None; this shardpipe reads 1"):
        check_version({}, c, "mixed")
    with refused("state['version']: dataset state has version True; this shardpipe reads 1"):
        check_version({"version": True}, c, "dataset")
    with refused("state: must be an object (dict), got str 'v1'"):
        check_version("v1", c, "dataset")


# -- a pipeline's state ------------------------------------------------------------------------
def dataset_state(**over) -> dict:
    state = {"version": 1, "epoch": 0, "stages": None, "fingerprint": "f" * 128}
    state.update(over)
    return state


def consumer(**over) -> dict:
    c = {"rank": 1, "world_size": 2, "worker": 2, "num_workers": 3}
    c.update(over)
    return c


def test_dataset_state_shape():
    s = dataset_state(consumer=consumer(), stages={"any": 1})
    assert validate_dataset_state(s) is s
    validate_dataset_state(dataset_state(consumer=None, fingerprint=None))
    validate_dataset_state({"version": 1, "epoch": 5, "stages": None})
    with refused("state['fingerprint']: is 129 characters long, over the limit of 128"):
        validate_dataset_state(dataset_state(fingerprint="f" * 129))
    with refused("state: missing key(s) 'stages'"):
        validate_dataset_state({"version": 1, "epoch": 0})
    with refused("state['stages']: must be an object (dict) or null, got int 3"):
        validate_dataset_state(dataset_state(stages=3))
    with refused("state['epoch']: must be an integer, got str '1'"):
        validate_dataset_state(dataset_state(epoch="1"))
    with refused("state['version']: dataset state has version 0; this shardpipe reads 1"):
        validate_dataset_state(dataset_state(version=0))
    with refused("state: holds a bytes, which is not a JSON value"):
        validate_dataset_state(dataset_state(stages={"x": b""}))


@pytest.mark.parametrize(
    "over, message",
    [
        ({"world_size": 0}, "state['consumer']['world_size']: must be >= 1, got 0"),
        ({"rank": 2}, "state['consumer']['rank']: must be <= 1 (below world_size), got 2"),
        ({"rank": -1}, "state['consumer']['rank']: must be >= 0, got -1"),
        ({"num_workers": 0}, "state['consumer']['num_workers']: must be >= 1, got 0"),
        ({"worker": 3}, "state['consumer']['worker']: must be <= 2 (below num_workers), got 3"),
        ({"worker": None}, "state['consumer']['worker']: must be an integer, got NoneType None"),
    ],
)
def test_consumer_fields(over, message):
    with refused(message):
        validate_dataset_state(dataset_state(consumer=consumer(**over)))


def test_consumer_edges_are_accepted():
    validate_dataset_state(dataset_state(consumer=consumer(rank=1, world_size=2, worker=2, num_workers=3)))
    validate_dataset_state(dataset_state(consumer=consumer(rank=0, world_size=1, worker=0, num_workers=1)))
    with refused("state['consumer']: missing key(s) 'worker'"):
        validate_dataset_state(dataset_state(consumer={"rank": 0, "world_size": 1, "num_workers": 1}))


def test_pipeline_state_walks_the_stage_chain():
    from shardpipe.stages import Context, Pipeline, Shard, ShardList, Shuffle

    pipe = Pipeline([ShardList([Shard(f"s{i}", i) for i in range(6)]), Shuffle(4)], Context(seed=2))
    it = iter(pipe)
    next(it)
    good = pipe.get_state()
    validate_pipeline_state(copy.deepcopy(good), pipe)
    stages = good["stages"]
    assert "source" in stages
    bad = copy.deepcopy(good)
    bad["stages"]["source"] = {"pos": 1, "extra": 0}
    with pytest.raises(StateError, match=r"^state\['stages'\]\['source'\]: unknown key\(s\) 'extra'$"):
        validate_pipeline_state(bad, pipe)
    bad = copy.deepcopy(good)
    bad["stages"]["source"]["pos"] = -1
    with pytest.raises(StateError, match=r"^state\['stages'\]\['source'\]\['pos'\]: must be >= 0, got -1$"):
        validate_pipeline_state(bad, pipe)
    validate_pipeline_state({**copy.deepcopy(good), "stages": None}, pipe)
    only_source = Pipeline([ShardList([Shard("a", 0)])], Context())
    with pytest.raises(StateError, match=r"^state\['stages'\]: missing key\(s\) 'pos'$"):
        validate_pipeline_state({"version": 1, "epoch": 0, "stages": {}}, only_source)


def test_pipeline_state_checks_the_plan_of_the_states_epoch_and_restores_the_context():
    from shardpipe.stages import Context, Pipeline, Shard, ShardList

    ctx = Context(epoch=7)
    pipe = Pipeline([ShardList([Shard(f"s{i}", i) for i in range(3)])], ctx)
    validate_pipeline_state({"version": 1, "epoch": 2, "stages": {"pos": 3}}, pipe)
    assert ctx.epoch == 7
    with pytest.raises(StateError, match=r"^state\['stages'\]\['pos'\]: must be <= 3 "):
        validate_pipeline_state({"version": 1, "epoch": 2, "stages": {"pos": 4}}, pipe)
    assert ctx.epoch == 7


# -- the loaders' states ---------------------------------------------------------------------
def loader_state(**over) -> dict:
    state = {
        "version": 1, "fingerprint": "abc", "epoch": 3, "rank": 1, "world_size": 2,
        "num_workers": 2, "next_worker": 1, "workers": [None, {"version": 1}],
    }  # fmt: skip
    state.update(over)
    return state


def test_a_loader_state_at_its_edges_is_accepted():
    s = loader_state()
    assert validate_loader_state(s) is s
    validate_loader_state(loader_state(num_workers=0, next_worker=0, workers=[None]))
    validate_loader_state(loader_state(workers=None))
    validate_loader_state(loader_state(rank=0, world_size=1))


@pytest.mark.parametrize(
    "over, message",
    [
        ({"version": 3}, "state['version']: loader state has version 3; this shardpipe reads 1"),
        ({"fingerprint": None}, "state['fingerprint']: must be a string, got NoneType None"),
        ({"fingerprint": "f" * 129}, "state['fingerprint']: is 129 characters long, over the limit of 128"),
        ({"epoch": -1}, "state['epoch']: must be >= 0, got -1"),
        ({"world_size": 0, "rank": 0}, "state['world_size']: must be >= 1, got 0"),
        ({"rank": 2}, "state['rank']: must be <= 1 (below world_size), got 2"),
        ({"num_workers": -1}, "state['num_workers']: must be >= 0, got -1"),
        ({"next_worker": 2}, "state['next_worker']: must be <= 1 (below num_workers), got 2"),
        ({"num_workers": 0, "next_worker": 1, "workers": [None]}, "state['next_worker']: must be <= 0 (below num_workers), got 1"),
        ({"workers": [None]}, "state['workers']: must have 2 entries, got 1"),
        ({"num_workers": 0, "next_worker": 0, "workers": []}, "state['workers']: must have 1 entries, got 0"),
        ({"workers": [None, []]}, "state['workers'][1]: must be an object (dict) or null, got list []"),
        ({"workers": {}}, "state['workers']: must be a list, got dict {}"),
        ({"extra": 1}, "state: unknown key(s) 'extra'"),
    ],
)  # fmt: skip
def test_loader_state_refusals(over, message):
    with refused(message):
        validate_loader_state(loader_state(**over))
    missing = loader_state()
    del missing["next_worker"]
    with refused("state: missing key(s) 'next_worker'"):
        validate_loader_state(missing)


def mixed_state(**over) -> dict:
    state = {"version": 1, "epoch": 1, "drawn": 4, "sources": [dataset_state(), dataset_state()]}
    state.update(over)
    return state


def test_mixed_state():
    s = mixed_state(consumer=consumer(), fingerprint="x")
    assert validate_mixed_state(s, 2) is s
    validate_mixed_state(mixed_state(sources=None), 5)
    with refused("state['sources']: must have 3 entries, got 2"):
        validate_mixed_state(mixed_state(), 3)
    with refused("state['sources'][1]['epoch']: must be >= 0, got -2"):
        validate_mixed_state(mixed_state(sources=[dataset_state(), dataset_state(epoch=-2)]), 2)
    with refused("state['drawn']: must be >= 0, got -1"):
        validate_mixed_state(mixed_state(drawn=-1), 2)
    with refused("state['epoch']: must be an integer, got NoneType None"):
        validate_mixed_state(mixed_state(epoch=None), 2)
    with refused("state['consumer']['rank']: must be <= 1 (below world_size), got 5"):
        validate_mixed_state(mixed_state(consumer=consumer(rank=5)), 2)
    with refused("state['fingerprint']: must be a string or null, got int 1"):
        validate_mixed_state(mixed_state(fingerprint=1), 2)
    validate_mixed_state(mixed_state(fingerprint="f" * 128), 2)
    with refused("state['fingerprint']: is 129 characters long, over the limit of 128"):
        validate_mixed_state(mixed_state(fingerprint="f" * 129), 2)
    with refused("state['version']: mixed state has version 2; this shardpipe reads 1"):
        validate_mixed_state(mixed_state(version=2), 2)
    with refused("state: unknown key(s) 'stages'"):
        validate_mixed_state(mixed_state(stages=None), 2)
    with refused("state: has a key of type int (keys are strings)"):
        validate_mixed_state({**mixed_state(), 1: 0}, 2)


def remote_state(**over) -> dict:
    state = {
        "version": 1, "fingerprint": "fp", "epoch": 2, "rank": 0, "world_size": 1, "parts": 3,
        "next_part": 2, "states": [None, dataset_state(), None], "done": [False, False, True],
    }  # fmt: skip
    state.update(over)
    return state


def test_a_remote_state_at_its_edges_is_accepted():
    s = remote_state()
    assert validate_remote_state(s) is s
    validate_remote_state(remote_state(states=None, done=None))  # between epochs
    validate_remote_state(remote_state(parts=None, states=None, done=None, next_part=0))  # before the first pass
    validate_remote_state(remote_state(fingerprint=None))
    validate_remote_state(remote_state(parts=4096, next_part=4095, states=None, done=None))
    validate_remote_state(remote_state(parts=8, next_part=7, states=None, done=None), max_parts=8)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"version": 0}, "state['version']: remote loader state has version 0; this shardpipe reads 1"),
        ({"done": None}, "state: 'states' and 'done' are both lists (mid-epoch) or both null"),
        ({"states": None}, "state: 'states' and 'done' are both lists (mid-epoch) or both null"),
        ({"parts": None, "states": None, "done": None, "next_part": 1}, "state['next_part']: must be <= 0, got 1"),
        ({"parts": 0}, "state['parts']: must be >= 1, got 0"),
        ({"parts": 4097, "states": None, "done": None}, "state['parts']: must be <= 4096, got 4097"),
        ({"next_part": 3}, "state['next_part']: must be <= 2 (below parts), got 3"),
        ({"states": [None, None]}, "state['states']: must have 3 entries, got 2"),
        ({"done": [False, False]}, "state['done']: must have 3 entries, got 2"),
        ({"done": [False, 0, True]}, "state['done'][1]: must be true or false, got int 0"),
        ({"states": [None, dataset_state(epoch=-1), None]}, "state['states'][1]['epoch']: must be >= 0, got -1"),
        ({"rank": 1}, "state['rank']: must be <= 0 (below world_size), got 1"),
        ({"world_size": 0}, "state['world_size']: must be >= 1, got 0"),
        ({"epoch": -3}, "state['epoch']: must be >= 0, got -3"),
        ({"fingerprint": 4}, "state['fingerprint']: must be a string or null, got int 4"),
    ],
)  # fmt: skip
def test_remote_state_refusals(over, message):
    with refused(message):
        validate_remote_state(remote_state(**over))


def test_remote_parts_limit_is_the_callers():
    with refused("state['parts']: must be <= 2, got 3"):
        validate_remote_state(remote_state(states=None, done=None), max_parts=2)
