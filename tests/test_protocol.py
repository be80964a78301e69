"""The loader protocol: one save/resume/fingerprint suite, run over every implementation.

Each case builds a fresh object for every pass (a pass on a fresh object is the reference),
so the suite holds whatever an implementation does between passes. ``RemoteLoader`` runs
against real ``shardpipe serve`` processes, one per configuration.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import shardpipe
from shardpipe import MixedDataset, ShardDataset, ShardLoader, StateError
from shardpipe.protocol import LoaderSource, Resumable, missing_members, protocol_members
from shardpipe.state import STATE_VERSION

from .helpers import make_samples, write_manifest_dataset, write_with_shard_writer

VARIANTS = ("shards", "seed", "batch_size")  # each must change the fingerprint


@dataclass
class Data:
    root: Path
    window: dict[str | None, str]  # variant "shards" -> another shard list
    indexed: dict[str | None, str]
    servers: dict[str | None, str] | None = None  # endpoint per variant (started on first use)


def _indexed(root: Path, n: int) -> str:
    return write_with_shard_writer(root, n, maxcount=9)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    root = tmp_path_factory.mktemp("protocol")
    (root / "w").mkdir()
    (root / "w2").mkdir()
    window = {
        None: write_manifest_dataset(root / "w", make_samples(40), [9, 5, 12, 6, 8]),
        "shards": write_manifest_dataset(root / "w2", make_samples(32), [9, 5, 12, 6]),
    }
    indexed = {None: _indexed(root / "i", 40), "shards": _indexed(root / "i2", 32)}
    return Data(root, window, indexed)


@pytest.fixture(scope="module")
def fleet(data: Data):
    """One ``shardpipe serve`` per configuration (base and each variant), started together."""
    pytest.importorskip("zmq")
    from .fleet_helpers import ServerProcess, write_config

    for name in ("f", "f-shards", "f-seed", "f-batch"):
        (data.root / name).mkdir()
    configs = {
        None: write_config(data.root / "f"),
        "shards": write_config(data.root / "f-shards", samples=40),
        "seed": write_config(data.root / "f-seed", seed=2),
        "batch_size": write_config(data.root / "f-batch", batch_size=5),
    }
    procs = {k: ServerProcess(c, 1) for k, c in configs.items()}
    try:
        yield {k: p.wait_ready().endpoint for k, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()


def _dataset(urls: str, variant: str | None, **kw: Any) -> ShardDataset:
    return ShardDataset(
        urls, seed=2 if variant == "seed" else 3, batch_size=5 if variant == "batch_size" else 4, decode=None, **kw
    )


def window_case(data: Data, variant: str | None) -> ShardDataset:
    return _dataset(data.window["shards" if variant == "shards" else None], variant, shuffle=8)


def block_case(data: Data, variant: str | None) -> ShardDataset:
    urls = data.indexed["shards" if variant == "shards" else None]
    return _dataset(urls, variant, shuffle=True, shuffle_algo="block", shuffle_block_size=8)


def mixed_case(data: Data, variant: str | None) -> MixedDataset:
    sources = [
        ShardDataset(data.window["shards" if variant == "shards" else None], shuffle=8, seed=5, decode=None),
        ShardDataset(data.indexed[None], shuffle=4, seed=6, decode=None),
    ]
    return MixedDataset(
        sources,
        [0.6, 0.4],
        samples_per_epoch=50,
        seed=2 if variant == "seed" else 3,
        batch_size=5 if variant == "batch_size" else 4,
    )


def remote_case(data: Data, variant: str | None) -> Any:
    from shardpipe import RemoteLoader

    assert data.servers is not None
    return RemoteLoader([data.servers[variant]], timeout=20)


@dataclass(frozen=True)
class Case:
    implementation: type
    make: Callable[[Data, str | None], Any]
    loader_source: bool  # ShardLoader can run it in DataLoader workers


def _remote_type() -> type:
    from shardpipe.serve.client import RemoteLoader

    return RemoteLoader


CASES: dict[str, Case] = {
    "dataset-window": Case(ShardDataset, window_case, True),
    "dataset-block": Case(ShardDataset, block_case, True),
    "mixed": Case(MixedDataset, mixed_case, True),
    "remote": Case(_remote_type(), remote_case, False),
}

#: classes with state_dict/load_state_dict/set_epoch that are not protocol implementations (with the reason);
#: by name where importing the class needs an optional package
NOT_IMPLEMENTATIONS: dict[type | str, str] = {
    ShardLoader: "a DataLoader that drives a LoaderSource; test_resume, test_persistent and test_mix resume it "
    "over ShardDataset and MixedDataset",
    "AcceleratedShardLoader": "wraps a ShardLoader for Accelerate (device placement, collective checkpoints); "
    "test_integrations resumes it",
}


@pytest.fixture(params=list(CASES))
def case(request, data: Data) -> tuple[str, Case]:
    name = request.param
    if name == "remote" and data.servers is None:
        data.servers = request.getfixturevalue("fleet")
    return name, CASES[name]


@pytest.fixture
def make(case, data: Data):
    """``make(variant=None)``: a fresh object of the case; every one made is closed afterwards."""
    made: list[Any] = []

    def build(variant: str | None = None) -> Any:
        obj = case[1].make(data, variant)
        made.append(obj)
        return obj

    yield build
    for obj in made:
        if hasattr(obj, "close"):
            obj.close()


def ident(item: dict[str, Any]) -> tuple:
    """What must match: the keys, and for decoded batches the pixels' checksum too."""
    keys = item["__key__"]
    keys = tuple(keys) if isinstance(keys, list) else (keys,)
    image = item.get("jpg")
    return (keys, int(image.sum())) if hasattr(image, "sum") else (keys,)


def run_pass(obj: Any, epoch: int | None = None, limit: int | None = None) -> tuple[list, Any]:
    """(items of one pass, the live iterator): the first ``limit`` items, or the whole pass."""
    if epoch is not None:
        obj.set_epoch(epoch)
    it = iter(obj)
    out = []
    for item in it:
        out.append(ident(item))
        if limit is not None and len(out) == limit:
            break
    return out, it


def full_pass(make, epoch: int = 0, variant: str | None = None) -> list:
    return run_pass(make(variant), epoch)[0]


def test_every_case_implements_the_protocol(case, make):
    name, c = case
    obj = make()
    assert isinstance(obj, c.implementation)
    assert isinstance(obj, Resumable), missing_members(obj, Resumable)
    assert isinstance(obj, LoaderSource) == c.loader_source, missing_members(obj, LoaderSource)
    if c.loader_source:
        ShardLoader(obj)  # accepted as it is
    else:
        with pytest.raises(
            TypeError, match=r"ShardLoader needs an object implementing .*LoaderSource.*open_worker_pass"
        ):
            ShardLoader(obj)


def test_state_round_trips_through_json_and_resumes_exactly(case, make):
    full = full_pass(make)
    assert len(full) >= 4
    keys = [k for item in full for k in item[0]]
    assert len(keys) == len(set(keys)) or case[0] == "mixed"  # datasets: every sample once
    for stop in sorted({1, len(full) // 2, len(full) - 1, len(full)}):
        obj = make()
        head, it = run_pass(obj, 0, limit=stop)
        state = obj.state_dict()
        saved = json.loads(json.dumps(state))
        assert saved == state  # JSON types only: a checkpoint file holds it unchanged
        assert saved["version"] == STATE_VERSION and saved["fingerprint"] == obj.fingerprint()
        fresh = make()
        fresh.load_state_dict(saved)
        rest = run_pass(fresh)[0]
        if saved["epoch"] == 0:
            assert head + rest == full, f"{case[0]}: resume after {stop} of {len(full)} items diverged"
        else:  # saved after the last item, pointing at the next epoch: it goes on as the original does
            assert stop == len(full) and saved["epoch"] == 1 and head == full
            assert list(it) == []
            assert rest == run_pass(obj, epoch=1)[0], f"{case[0]}: the next epoch after a resume diverged"


def test_fingerprint_changes_with_shards_seed_and_batch_size(case, make):
    base = make().fingerprint()
    assert isinstance(base, str) and len(base) == 16
    assert make().fingerprint() == base  # deterministic: the same data and options, the same fingerprint
    others = {variant: make(variant).fingerprint() for variant in VARIANTS}
    assert all(fp != base for fp in others.values()), others
    assert len(set(others.values())) == len(VARIANTS), others


def test_set_epoch_changes_the_order(case, make):
    first, second = full_pass(make, epoch=0), full_pass(make, epoch=1)
    assert first != second
    assert full_pass(make, epoch=1) == second  # and the order is the epoch's, every time
    if case[0] != "mixed":  # a dataset's epoch is a new order of the same samples
        assert sorted(k for item in first for k in item[0]) == sorted(k for item in second for k in item[0])


def test_a_state_from_another_dataset_is_refused_naming_the_fingerprint(case, make):
    for variant in VARIANTS:
        other = make(variant)
        run_pass(other, 0, limit=2)
        state = json.loads(json.dumps(other.state_dict()))
        obj = make()
        with pytest.raises(StateError, match=f"fingerprint {state['fingerprint']}.*{obj.fingerprint()}"):
            obj.load_state_dict(state)
            next(iter(obj))  # a loader checks against its servers when the pass starts


def resumable_classes() -> set[type]:
    """Every shardpipe class with state_dict, load_state_dict and set_epoch (its modules imported first)."""
    for info in pkgutil.walk_packages(shardpipe.__path__, "shardpipe."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # an optional dependency (DALI, ray, ...) is missing
            if (e.name or "").startswith("shardpipe"):
                raise
    found = set()
    for module in [m for name, m in list(__import__("sys").modules.items()) if name.startswith("shardpipe.")]:
        for _, klass in inspect.getmembers(module, inspect.isclass):
            if klass.__module__ != module.__name__ or getattr(klass, "_is_protocol", False):
                continue
            if all(callable(getattr(klass, m, None)) for m in ("state_dict", "load_state_dict", "set_epoch")):
                found.add(klass)
    return found


def test_every_implementation_has_a_case():
    """Fails when a new resumable class has no case in CASES (so no save/resume/fingerprint check)."""
    found = resumable_classes()
    covered = {c.implementation for c in CASES.values()}
    assert {ShardDataset, MixedDataset, _remote_type(), ShardLoader} <= found  # the discovery is real
    exempt = {k for k in found if k in NOT_IMPLEMENTATIONS or k.__qualname__ in NOT_IMPLEMENTATIONS}
    missing = found - covered - exempt
    assert not missing, f"add a case to CASES for: {sorted(k.__qualname__ for k in missing)}"


def test_protocol_members_are_what_loaders_call():
    assert protocol_members(Resumable) == [
        "epoch",
        "fingerprint",
        "load_state_dict",
        "rank_and_world",
        "set_epoch",
        "state_dict",
    ]
    assert set(protocol_members(LoaderSource)) - set(protocol_members(Resumable)) == {
        "carries_state",
        "epoch_generation",
        "open_worker_pass",
        "progress",
        "set_worker_plan",
        "shards",
        "warm",
        "worker_plan_published",
        "workers_started",
    }


def test_shard_loader_names_what_a_source_lacks():
    class HalfSource:
        epoch = 0

        def set_epoch(self, epoch: int) -> None: ...

        def state_dict(self) -> dict: ...

    with pytest.raises(TypeError) as err:
        ShardLoader(HalfSource())
    message = str(err.value)
    assert message.startswith("ShardLoader needs an object implementing shardpipe.protocol.LoaderSource")
    assert (
        "a HalfSource lacks carries_state, epoch_generation, fingerprint, load_state_dict, open_worker_pass" in message
    )
    assert "set_epoch" not in message.split("lacks")[1]
