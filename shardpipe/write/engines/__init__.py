"""Where write and index work runs: a small registry of engines, by name.

An engine is ``"module:function"`` loaded on first use, so an optional one (Ray) costs
nothing until asked for, and a missing package turns into an install hint. A write
engine is called as ``run(job, tasks, workers=, address=, on_images=, on_done=)``
(see :func:`shardpipe.write.plan.run_local`): it runs every
:class:`~shardpipe.write.plan.ShardTask` and reports each shard's result to ``on_done``.
A map function runs one function per item elsewhere (index scans of existing shards).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple


class Engine(NamedTuple):
    write: str  #: "module:function" running shard tasks
    map: str | None  #: "module:function" mapping a function over items remotely (None: the caller's own pool)
    install: str | None  #: what to install when its module is missing


ENGINES: dict[str, Engine] = {
    "local": Engine("shardpipe.write.plan:run_local", None, None),
    "ray": Engine(
        "shardpipe.write.engines.ray:run_ray",
        "shardpipe.write.engines.ray:map_ray",
        'pip install "shardpipe[ray]"  (or: pip install ray)',
    ),  # fmt: skip
}


def _load(target: str, name: str, install: str | None) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ImportError as e:
        if install is None:
            raise
        raise ImportError(f"the {name!r} engine needs a package that is not installed ({e}): {install}") from e


def _engine(name: str) -> Engine:
    engine = ENGINES.get(name)
    if engine is None:
        raise ValueError(f"unknown engine {name!r}: choose one of {sorted(ENGINES)}")
    return engine


def write_engine(name: str) -> Callable[..., Any]:
    """The function that runs shard tasks for engine ``name`` (``"local"``, ``"ray"``)."""
    engine = _engine(name)
    return _load(engine.write, name, engine.install)


def map_engine(name: str) -> Callable[..., Any] | None:
    """``map(fn, shared, items, describe, address=None)`` yielding ``(item, fn(shared, item))`` as they
    finish, for engine ``name``; ``None`` for the local engine (callers use their own thread pool)."""
    engine = _engine(name)
    return None if engine.map is None else _load(engine.map, name, engine.install)
