"""Resume states are checked before use: a clear ``StateError`` naming the field, or an exact
resume; never a sample from outside the dataset (``shardpipe.state``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardpipe import MixedDataset, ShardDataset, ShardLoader, ShardpipeError, StateError
from shardpipe.state import STATE_VERSION, validate_loader_state

from .helpers import make_samples, write_manifest_dataset, write_shards

COUNTS = [5, 3, 6, 4]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("trust-state")
    for sub in ("m", "u", "g", "outside"):
        (root / sub).mkdir()
    samples = make_samples(sum(COUNTS))
    manifest = write_manifest_dataset(root / "m", samples, COUNTS)
    urls = write_shards(root / "u", samples, COUNTS)
    gz = write_manifest_dataset(root / "g", samples, COUNTS, compress="gz")
    outside = write_shards(root / "outside", make_samples(4, prefix="foreign"), [4])[0]
    return {"manifest": manifest, "urls": urls, "gz": gz, "outside": outside, "keys": {s["__key__"] for s in samples}}


def keys(items) -> list[str]:
    return [s["__key__"] for s in items]


def state_after(ds, n: int) -> tuple[dict, list[str]]:
    """The state after ``n`` samples of a pass, and the rest of that pass."""
    it = iter(ds)
    for _ in range(n):
        next(it)
    state = copy.deepcopy(ds.state_dict())
    return state, keys(it)


def find(state: dict, key: str) -> dict:
    """The innermost dict of ``state`` (following "source"/"stages") holding ``key``."""
    node = state["stages"]
    while key not in node:
        node = node["source"]
    return node


DATASETS = {
    "window": lambda d: ShardDataset(d["manifest"], shuffle=4, seed=3, decode=None),
    "sequential": lambda d: ShardDataset(d["manifest"], decode=None),
    "uneven": lambda d: ShardDataset(d["urls"], shuffle=3, seed=1, decode=None),
    "gzip": lambda d: ShardDataset(d["gz"], decode=None),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_valid_state_resumes_exactly(data, name):
    for n in (1, 4, 9):
        state, rest = state_after(DATASETS[name](data), n)
        fresh = DATASETS[name](data)
        fresh.load_state_dict(json.loads(json.dumps(state)))
        assert keys(fresh) == rest


def _mutate(field: str, value):
    def apply(state):
        find(state, field)[field] = value

    return apply


def _shard(field: str, value):
    def apply(state):
        find(state, "shard")["shard"][field] = value

    return apply


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_shard("offset", -5), "['shard']['offset']: must be >= 0, got -5"),
        (_shard("offset", 2**63), "['shard']['offset']: must be <= 4611686018427387904, got 9223372036854775808"),
        (_shard("offset", 100 * 512 * 1024), "['shard']['offset']: must be <= "),
        (_shard("offset", 7), "['shard']['offset']: must be a multiple of 512"),
        (_shard("offset", "0"), "['shard']['offset']: must be an integer, got str '0'"),
        (_shard("offset", True), "['shard']['offset']: must be an integer, got bool True"),
        (_shard("ordinal", -1), "['shard']['ordinal']: must be >= 0, got -1"),
        # (the shard being read at that point holds 5 samples: COUNTS)
        (_shard("ordinal", 10**9), "['shard']['ordinal']: must be <= 5 (samples in the shard), got 1000000000"),
        (_mutate("pos", 0), "['shard']: names a shard being read, but the plan gave no shard for this consumer"),
        (_shard("gz", 1), "['shard']['gz']: must be true or false, got int 1"),
        (_shard("index", 3), "['shard']['index']: is 3, but the plan's shard there"),
        (_shard("samples", 50), "['shard']['samples']: is 50, but the plan's shard there"),
        (_shard("key", ["k"]), "['shard']['key']: must be a string or null, got list"),
        (_shard("extra", 1), "['shard']: unknown key(s) 'extra'"),
        (_mutate("window", -1), "['window']: must be >= 0, got -1"),
        (_mutate("emitted", 10**6), "['emitted']: must be <= 4 (the shuffle buffer's size), got 1000000"),
        (_mutate("pos", -2), "['pos']: must be >= 0, got -2"),
        (_mutate("pos", 10**6), "['pos']: must be <= 4 (this epoch's plan has 4 shards here), got 1000000"),
        (_mutate("pos", 1.0), "['pos']: must be an integer, got float 1.0"),
        (_mutate("source", []), "must be an object (dict), got list []"),
    ],
)
def test_a_tampered_state_is_a_state_error_naming_the_field(data, mutate, message):
    state, _ = state_after(DATASETS["window"](data), 7)
    mutate(state)
    ds = DATASETS["window"](data)
    with pytest.raises(StateError) as info:
        ds.load_state_dict(state)
        next(iter(ds))
    assert message in str(info.value)
    assert str(info.value).startswith("state['stages']")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "state['version']: dataset state has version 2; this shardpipe reads 1"),
        ({"version": True}, "state['version']: dataset state has version True"),
        ({"epoch": -1}, "state['epoch']: must be >= 0, got -1"),
        ({"epoch": False}, "state['epoch']: must be an integer, got bool False"),
        ({"stages": []}, "state['stages']: must be an object (dict) or null, got list []"),
        (
            {"consumer": {"rank": 0, "world_size": 1, "worker": 5, "num_workers": 2}},
            "state['consumer']['worker']: must be <= 1",
        ),
        ({"url": "/etc/passwd"}, "state: unknown key(s) 'url'"),
        ({"fingerprint": 7}, "state['fingerprint']: must be a string or null, got int 7"),
    ],
)
def test_a_tampered_dataset_state_is_refused_at_load(data, change, message):
    state, _ = state_after(DATASETS["window"](data), 2)
    with pytest.raises(StateError) as info:
        DATASETS["window"](data).load_state_dict({**state, **change})
    assert str(info.value).startswith(message)


def test_a_state_is_refused_whatever_its_type(data):
    ds = DATASETS["window"](data)
    for bad in ([1, 2], "state", None, 3):
        with pytest.raises(StateError, match=r"^state: must be an object \(dict\), got"):
            ds.load_state_dict(bad)
    deep: dict = {"version": STATE_VERSION, "epoch": 0, "stages": {}}
    node = deep["stages"]
    for _ in range(5000):
        node["source"] = {}
        node = node["source"]
    with pytest.raises(StateError, match="nests deeper than 48 levels"):
        ds.load_state_dict(deep)


def test_the_url_in_a_state_is_never_opened(data):
    """The state names the plan's shard; a URL pointing elsewhere is a mismatch, not a read."""
    state, _ = state_after(DATASETS["sequential"](data), 2)
    shard = find(state, "shard")["shard"]
    shard["url"] = data["outside"]
    ds = DATASETS["sequential"](data)
    ds.load_state_dict(state)
    with pytest.raises(StateError, match=r"\['shard'\]\['url'\]: is '.*outside.*', but the plan's shard there"):
        next(iter(ds))


def test_an_offset_past_the_end_of_a_shard_without_a_size_is_an_error(data):
    """Without a manifest size the offset is only checked against the file: a clear error."""
    state, _ = state_after(ShardDataset(data["urls"], decode=None), 2)
    find(state, "shard")["shard"]["offset"] = 512 * 10_000
    ds = ShardDataset(data["urls"], decode=None)
    ds.load_state_dict(state)
    with pytest.raises(ShardpipeError, match="truncated tar"):
        list(ds)


def test_loader_state_is_checked_before_use(data):
    loader = ShardLoader(DATASETS["window"](data), num_workers=0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    for change, message in [
        ({"next_worker": 3}, "state['next_worker']: must be <= 0"),
        ({"workers": {"a": 1}}, "state['workers']: must be a list, got dict"),
        ({"workers": [1]}, "state['workers'][0]: must be an object (dict) or null, got int 1"),
        ({"num_workers": -1}, "state['num_workers']: must be >= 0, got -1"),
    ]:
        with pytest.raises(StateError) as info:
            loader.load_state_dict({**state, **change})
        assert str(info.value).startswith(message)
    validate_loader_state(state)


def test_mixed_state_is_checked_before_use(data):
    def mix():
        return MixedDataset(
            [DATASETS["window"](data), DATASETS["sequential"](data)], [1, 1], samples_per_epoch=12, seed=2
        )

    m = mix()
    it = iter(m)
    for _ in range(5):
        next(it)
    state = copy.deepcopy(m.state_dict())
    rest = keys(it)
    fresh = mix()
    fresh.load_state_dict(state)
    assert keys(fresh) == rest
    for change, message in [
        ({"drawn": -1}, "state['drawn']: must be >= 0, got -1"),
        ({"sources": [None]}, "state['sources']: must have 2 entries, got 1"),
        ({"sources": [1, 2]}, "state['sources'][0]: must be an object (dict), got int 1"),
    ]:
        with pytest.raises(StateError) as info:
            mix().load_state_dict({**state, **change})
        assert str(info.value).startswith(message)
    m = mix()
    m.load_state_dict({**state, "drawn": 10**6})
    with pytest.raises(
        StateError, match=r"^state\['drawn'\]: must be <= 12 \(this consumer's draws in epoch 0\), got 1000000"
    ):
        list(m)
    bad = copy.deepcopy(state)
    find(bad["sources"][1] | {"stages": bad["sources"][1]["stages"]}, "shard")["shard"]["url"] = data["outside"]
    m = mix()
    m.load_state_dict(bad)
    with pytest.raises(StateError, match=r"\['shard'\]\['url'\]: is '.*outside"):
        list(m)


# -- property: random mutations of real states -------------------------------------------------
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["/etc/passwd", "../outside.tar", "s3://elsewhere/x.tar"]),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every (container path, key) in a state, for mutation."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix, k
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix, i
            yield from _paths(v, (*prefix, i))


def _apply(state, path, key, action, value):
    node = state
    for p in path:
        node = node[p]
    if action == "replace":
        node[key] = value
    elif action == "delete" and isinstance(node, dict):
        del node[key]
    elif action == "add" and isinstance(node, dict):
        node[f"x{key}"] = value
    elif action == "nudge" and isinstance(node[key], int) and not isinstance(node[key], bool):
        node[key] += value if isinstance(value, int) and not isinstance(value, bool) else 1


def _check_outcome(make, state, outside_ok: set[str], expected: list[str] | None) -> None:
    ds = make()
    try:
        ds.load_state_dict(state)
        got = keys(ds)
    except ShardpipeError:
        return  # a clear error
    assert set(got) <= outside_ok, set(got) - outside_ok  # never a sample from outside the dataset
    if expected is not None:
        assert got == expected


#: the same examples on every machine (a fresh CI machine has no example database), and no health
#: check failing a slow machine
SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.mark.parametrize("name", ["window", "uneven", "gzip"])
@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=SLOW_OK)
@given(
    n=st.integers(min_value=1, max_value=16),
    choice=st.integers(min_value=0, max_value=10**6),
    action=st.sampled_from(["replace", "delete", "add", "nudge"]),
    value=JSON,
)
def test_random_mutations_are_an_error_or_stay_in_the_dataset(data, name, n, choice, action, value):
    make = lambda: DATASETS[name](data)  # noqa: E731
    state, rest = state_after(make(), n)
    _check_outcome(make, copy.deepcopy(state), data["keys"], rest)  # unmutated: exact
    spots = list(_paths(state))
    path, key = spots[choice % len(spots)]
    _apply(state, path, key, action, value)
    _check_outcome(make, state, data["keys"], None)


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=SLOW_OK)
@given(
    n=st.integers(min_value=1, max_value=10),
    choice=st.integers(min_value=0, max_value=10**6),
    action=st.sampled_from(["replace", "delete", "add", "nudge"]),
    value=JSON,
)
def test_random_mutations_of_a_mixed_state(data, n, choice, action, value):
    def make():
        return MixedDataset([DATASETS["window"](data), DATASETS["uneven"](data)], [1, 1], samples_per_epoch=12, seed=2)

    state, rest = state_after(make(), n)
    _check_outcome(make, copy.deepcopy(state), data["keys"], rest)
    spots = list(_paths(state))
    path, key = spots[choice % len(spots)]
    _apply(state, path, key, action, value)
    _check_outcome(make, state, data["keys"], None)


def test_the_outside_shard_really_is_outside(data):
    """The check above would notice a foreign sample: the outside shard's keys are not the dataset's."""
    foreign = keys(ShardDataset(data["outside"], decode=None))
    assert foreign and not set(foreign) & data["keys"]
    assert Path(data["outside"]).exists()
