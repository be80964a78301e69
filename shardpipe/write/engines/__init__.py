"""Where write and index work runs: a small registry of engines, by name.

An engine is ``"module:function"`` loaded on first use, so an optional one (Ray) costs
nothing until asked for, and a missing package turns into an install hint. A write
engine is called as ``run(job, tasks, workers=, address=, on_images=, on_done=)``
(see :func:`shardpipe.write.plan.run_local`): it runs every
:class:`~shardpipe.write.plan.ShardTask` and reports each shard's result to ``on_done``.
A map function runs one function per item elsewhere (index scans of existing shards).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardpipe.registry import Entry, Registry

_RAY_INSTALL = 'pip install "shardpipe[ray]"  (or: pip install ray)'

#: engine name -> the function running shard tasks
ENGINES = Registry(
    "engine",
    {
        "local": Entry("shardpipe.write.plan:run_local"),
        "ray": Entry("shardpipe.write.engines.ray:run_ray", _RAY_INSTALL),
    },
)
#: engine name -> a function mapping a function over items remotely (absent: the caller's own pool)
MAP_ENGINES = Registry("engine", {"ray": Entry("shardpipe.write.engines.ray:map_ray", _RAY_INSTALL)})


def write_engine(name: str) -> Callable[..., Any]:
    """The function that runs shard tasks for engine ``name`` (``"local"``, ``"ray"``)."""
    return ENGINES.load(name)  # type: ignore[no-any-return]


def map_engine(name: str) -> Callable[..., Any] | None:
    """``map(fn, shared, items, describe, address=None)`` yielding ``(item, fn(shared, item))`` as they
    finish, for engine ``name``; ``None`` for the local engine (callers use their own thread pool)."""
    ENGINES.entry(name)
    return MAP_ENGINES.load(name) if name in MAP_ENGINES else None
