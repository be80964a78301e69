"""The stage contract: small pull-based iterators with resumable state.

Every stage has a ``source`` (the stage before it), and three methods:

* ``reset(state=None)``: start the epoch over, or continue from a ``get_state()`` snapshot;
* ``next()``: the next item (``StopIteration`` at the end of the epoch);
* ``get_state()``: a small JSON-serialisable dict that lets ``reset`` continue exactly
  after the last item this stage returned. It nests the source's state under
  ``"source"``, so the last stage's state describes the whole pipeline.

Stages share a ``Context`` (seed, epoch, rank and worker split, error handler, timers),
bound once by the ``Pipeline``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from shardpipe.errors import ErrorHandler
from shardpipe.state import COUNT, SOURCE, STATE_VERSION, StateCheck, validate_pipeline_state

T = TypeVar("T")
_TIMER_LOCK = threading.Lock()


def _new_timer_lock() -> None:
    # a fork while a decode thread held the lock must not leave the child's copy held
    global _TIMER_LOCK
    _TIMER_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_timer_lock)
State = dict[str, Any]


@dataclass
class Context:
    """What every stage of one pipeline instance shares: the epoch's split, on_error and timers.

    No I/O settings: ``Untar`` gets an opener (``shardpipe.io.opener.ShardOpener``).
    """

    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1
    errors: ErrorHandler = field(default_factory=ErrorHandler)
    #: stage name -> seconds spent inside that stage's own work (not its sources')
    timers: dict[str, float] = field(default_factory=dict)
    #: stage name -> items that stage produced
    counts: dict[str, int] = field(default_factory=dict)
    #: tar members stepped over, by kind (hard links, symbolic links, GNU sparse files): only regular files are read
    skipped: Counter[str] = field(default_factory=Counter)
    #: ``progress(stage, shard_url)``: where this consumer is (DataLoader workers publish it
    #: for the loader's stall watchdog); None = not watched
    progress: Callable[[str, str | None], None] | None = None

    @property
    def split_index(self) -> int:
        """This consumer's index among ``split_count`` (rank-major, then worker)."""
        return self.rank * self.num_workers + self.worker

    @property
    def split_count(self) -> int:
        return self.world_size * self.num_workers

    def where(self, stage: str, url: str | None = None) -> None:
        """Publish that this consumer entered ``stage`` (on shard ``url``), if watched."""
        if self.progress is not None:
            self.progress(stage, url)

    def add_time(self, name: str, seconds: float, items: int = 0) -> None:
        """Add to a stage's timer (thread-safe: decode threads call it concurrently)."""
        with _TIMER_LOCK:
            self.timers[name] = self.timers.get(name, 0.0) + seconds
            if items:
                self.counts[name] = self.counts.get(name, 0) + items


class Stage(Generic[T]):
    """Base class. Subclasses implement ``next`` and, if they hold state, the other two."""

    #: name in the per-stage timing table, or None to leave the stage untimed
    timer_name: str | None = None
    #: the fields of this stage's state and their kinds (``shardpipe.state``); ``source`` is added
    #: for stages with a source
    state_fields: dict[str, str] = {}

    def __init__(self) -> None:
        self.source: Stage[Any] | None = None
        self.ctx: Context = Context()

    # wiring ---------------------------------------------------------------
    def bind(self, source: Stage[Any] | None, ctx: Context) -> None:
        """Attach this stage after ``source``; called by ``Pipeline``."""
        self.source = source
        self.ctx = ctx

    # the contract ---------------------------------------------------------
    def reset(self, state: State | None = None) -> None:
        if self.source is not None:
            self.source.reset(state.get("source") if state else None)

    def next(self) -> T:
        raise NotImplementedError

    def get_state(self) -> State:
        return {"source": self.source.get_state()} if self.source is not None else {}

    def check_state(self, state: State, check: StateCheck, below: Any) -> Any:
        """Check this stage's part of a resume state against its plan (its fields' types are
        checked already); ``below`` is what the source's check returned. Returns what the
        next stage up needs (by default: ``below``)."""
        return below

    # iteration ------------------------------------------------------------
    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return self.next()

    def pull(self) -> Any:
        """Next item from the source (helper for subclasses)."""
        assert self.source is not None, f"{type(self).__name__} has no source"
        return self.source.next()


class Map(Stage[Any]):
    """Apply ``fn`` to each item; stateless, so its state is its source's."""

    def __init__(self, fn: Callable[[Any], Any], name: str | None = None):
        super().__init__()
        self.fn = fn
        self.timer_name = name

    def next(self) -> Any:
        item = self.pull()
        if self.timer_name is None:
            return self.fn(item)
        t0 = time.perf_counter()
        out = self.fn(item)
        self.ctx.add_time(self.timer_name, time.perf_counter() - t0, 1)
        return out


class Filter(Stage[Any]):
    """Keep the items for which ``predicate`` is true."""

    def __init__(self, predicate: Callable[[Any], bool]):
        super().__init__()
        self.predicate = predicate

    def next(self) -> Any:
        while True:
            item = self.pull()
            if self.predicate(item):
                return item


class Take(Stage[Any]):
    """End the epoch after ``limit`` items (a fixed epoch length). State: items taken."""

    state_fields = {"taken": COUNT}

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self._taken = 0

    def check_state(self, state: State, check: StateCheck, below: Any) -> Any:
        check.at("taken").integer(state["taken"], 0, self.limit, f" (this stage takes {self.limit} items)")
        return below

    def reset(self, state: State | None = None) -> None:
        super().reset(state)
        self._taken = int(state["taken"]) if state else 0

    def next(self) -> Any:
        if self._taken >= self.limit:
            raise StopIteration
        item = self.pull()
        self._taken += 1
        return item

    def get_state(self) -> State:
        return {"taken": self._taken, **super().get_state()}


class GeneratorStage(Stage[Any]):
    """Wrap a generator function ``fn(iterator) -> iterator`` as a stage.

    A generator's internals cannot be saved, so this stage resumes by replay: its state
    is the source state when the generator started plus how many items it yielded; on
    ``reset`` it restarts from there and discards that many items. Native stages resume
    by position instead; prefer them (or ``Map``) on hot or long paths.
    """

    state_fields = {"start": SOURCE, "yielded": COUNT}

    def __init__(self, fn: Callable[[Iterator[Any]], Iterator[Any]]):
        super().__init__()
        self.fn = fn
        self._gen: Iterator[Any] | None = None
        self._start: State | None = None
        self._yielded = 0

    def reset(self, state: State | None = None) -> None:
        assert self.source is not None
        self._start = state["start"] if state else None
        self.source.reset(self._start)
        if self._start is None:
            self._start = self.source.get_state()
        self._gen = self.fn(self.source)
        self._yielded = 0
        for _ in range(state["yielded"] if state else 0):
            next(self._gen)
            self._yielded += 1

    def next(self) -> Any:
        assert self._gen is not None, "call reset() before next()"
        item = next(self._gen)
        self._yielded += 1
        return item

    def get_state(self) -> State:
        return {"start": self._start, "yielded": self._yielded}


class Pipeline(Stage[Any]):
    """Chain stages: each one's source is the one before it. Iterating runs the chain.

    ``Pipeline([ShardList(urls), Untar(), GroupSamples(), Decode(), Batch(64)])``.
    Plain callables in the list become ``Map`` stages. State is versioned so that a
    snapshot from an incompatible release is refused rather than misread.
    """

    STATE_VERSION = STATE_VERSION

    def __init__(self, stages: Sequence[Stage[Any] | Callable[[Any], Any]], ctx: Context | None = None):
        super().__init__()
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages: list[Stage[Any]] = [s if isinstance(s, Stage) else Map(s) for s in stages]
        self.ctx = ctx or Context()
        prev: Stage[Any] | None = None
        for stage in self.stages:
            stage.bind(prev, self.ctx)
            prev = stage
        self._started = False

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``reset()`` produces."""
        self.ctx.epoch = epoch

    def reset(self, state: State | None = None) -> None:
        if state is not None:
            validate_pipeline_state(state, self)  # before any of it is used
            self.ctx.epoch = int(state["epoch"])
        self.stages[-1].reset(state["stages"] if state else None)
        self._started = True

    def next(self) -> Any:
        if not self._started:
            self.reset()
        return self.stages[-1].next()

    def get_state(self) -> State:
        return {
            "version": self.STATE_VERSION,
            "epoch": self.ctx.epoch,
            "stages": self.stages[-1].get_state(),
        }

    def __iter__(self) -> Iterator[Any]:
        if not self._started:
            self.reset()
        return self

    def close(self) -> None:
        """Release what the stages hold: open shards, prefetch and decode threads."""
        for stage in self.stages:
            close = getattr(stage, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
