"""The loader protocol: what a loader or a training loop drives, defined once.

Two levels:

* ``Resumable``: anything with epochs and an exact resume state. ``epoch`` / ``set_epoch``,
  ``state_dict`` / ``load_state_dict`` (small JSON, versioned by ``shardpipe.state``),
  ``fingerprint()`` (what a state must match to load) and ``rank_and_world()``.
  ``ShardDataset``, ``MixedDataset`` and ``RemoteLoader`` implement it, and torchdata's
  ``StatefulDataLoader`` drives the first two through it.
* ``LoaderSource``: a ``Resumable`` that ``ShardLoader`` can run in DataLoader workers. It
  adds ``epoch_generation`` (a count of ``set_epoch`` calls, so that a loader sees a call that
  chose again the epoch it just ran), the worker plan (``set_worker_plan``: epoch, first worker
  and resume states for every worker's next pass, shared with running persistent workers, and
  ``worker_plan_published``, which a worker's collate step checks), ``warm`` (imports done
  before workers fork), ``carries_state`` (a pass goes on from the previous pass's end),
  the stall table ``progress`` with the ``shards`` it names, and two calls around the start
  of a pass of workers (``open_worker_pass``, ``workers_started``).

``WorkerPassHooks`` implements those two once, for sources that keep a ``WorkerProgress``
and carry a loader's ``BatchBuffers`` into the workers it starts; ``ShardsFingerprint`` is
the one fingerprint recipe (shards, then option texts), used by every implementation and by
the fleet's servers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from shardpipe.passes import WorkerPlan
    from shardpipe.stages.buffers import BatchBuffers
    from shardpipe.workers import WorkerProgress

State = dict[str, Any]


@runtime_checkable
class Resumable(Protocol):
    """Epochs and exact resume: what a checkpointing training loop (or loader) needs."""

    @property
    def epoch(self) -> int:
        """The epoch whose order the next pass uses (the current one, inside a pass)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` from the next pass on."""
        ...

    def state_dict(self) -> State:
        """Where this stands, as small JSON with ``version`` and ``fingerprint``."""
        ...

    def load_state_dict(self, state: State) -> None:
        """Continue from ``state``; one saved for other data is a ``StateError`` naming the fingerprint."""
        ...

    def fingerprint(self) -> str:
        """A short hash of what a state depends on (shards, sample counts, seed, batch size, ...)."""
        ...

    def rank_and_world(self) -> tuple[int, int]:
        """This process's (rank, world_size)."""
        ...


@runtime_checkable
class LoaderSource(Resumable, Protocol):
    """A ``Resumable`` that ``ShardLoader`` runs in DataLoader workers (see the module docstring)."""

    #: passes go on from where the previous pass of the same worker ended (``ShardLoader`` hands it over)
    carries_state: bool
    #: how many times ``set_epoch`` was called in this process (to any epoch, the current one too): a
    #: loader that sees it changed since its last pass runs the epoch chosen instead of the next one
    epoch_generation: int
    #: where each DataLoader worker is (stage, shard), read by the loader's stall watchdog
    progress: WorkerProgress
    #: the shards that ``progress`` names by index (for messages)
    shards: list[Any]

    def set_worker_plan(self, plan: WorkerPlan | None) -> None:
        """What every DataLoader worker's next pass starts from (``None``: withdraw it)."""
        ...

    def warm(self) -> None:
        """Import what the pipeline needs in this process, before workers start."""
        ...

    def worker_plan_published(self) -> bool:
        """True while a ``ShardLoader`` pass has published its worker plan (read in workers too)."""
        ...

    def open_worker_pass(self, plan: WorkerPlan, *, buffers: BatchBuffers | None) -> None:
        """Before a DataLoader pass: forget the stall table, publish ``plan``; the workers started now
        take ``buffers`` (the loader's recycled batch buffers; ``None``: none)."""
        ...

    def workers_started(self) -> None:
        """The pass's workers have started: workers started later (other loaders) get no recycled buffers."""
        ...


def protocol_members(protocol: type) -> list[str]:
    """The names ``protocol`` requires (its methods, properties and annotated attributes)."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (Protocol, object) or not getattr(klass, "_is_protocol", False):
            continue
        names.update(n for n in vars(klass) if not n.startswith("_"))
        names.update(n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_"))
    return sorted(names)


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (empty: it implements the protocol)."""
    return [name for name in protocol_members(protocol) if not hasattr(obj, name)]


def require(obj: Any, protocol: type, who: str) -> None:
    """Raise ``TypeError`` naming what ``obj`` lacks, unless it implements ``protocol``."""
    if not isinstance(obj, protocol):
        missing = missing_members(obj, protocol)
        raise TypeError(
            f"{who} needs an object implementing shardpipe.protocol.{protocol.__name__} (ShardDataset or "
            f"MixedDataset, for example); a {type(obj).__name__} lacks {', '.join(missing) or 'nothing by name'}"
        )


class WorkerPassHooks:
    """``LoaderSource``'s calls around the start of a pass of workers, for a source with a
    ``progress`` table; ``buffers`` is the loader's pool while its workers start (they take
    it with the source), else ``None``."""

    progress: WorkerProgress
    buffers: BatchBuffers | None

    def open_worker_pass(self, plan: WorkerPlan, *, buffers: BatchBuffers | None) -> None:
        self.progress.clear()
        self.set_worker_plan(plan)  # type: ignore[attr-defined]  # each source validates its own states
        self.buffers = buffers

    def workers_started(self) -> None:
        self.buffers = None  # plain DataLoaders (and other loaders) over this source get no recycled buffers


class ShardsFingerprint:
    """The one fingerprint recipe: sha256 over the shard list (URL and sample count of each),
    then option texts in order; the first 16 hex digits. The shard part is hashed once."""

    def __init__(self, shards: Iterable[Any]):
        self._base = hashlib.sha256()
        for shard in shards:
            self._base.update(f"{shard.url}\0{shard.samples}\n".encode())

    def of(self, *texts: str) -> str:
        h = self._base.copy()
        for text in texts:
            h.update(text.encode())
        return h.hexdigest()[:16]
