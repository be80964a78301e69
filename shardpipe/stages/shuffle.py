"""Shuffle compressed samples in seeded windows, so the order can be recomputed on resume.

The stage reads a window of ``buffer_size`` samples, emits them in a permutation drawn
from (seed, epoch, consumer, window number), then reads the next window. Its state is
three things: the source's state at the start of the window, the window number, and
how many of the window's samples were already emitted. Resuming re-reads one window of
*compressed* bytes (no decode) and skips what was emitted; the buffer contents are never
stored in the state. Samples hold compressed bytes, so a buffer of thousands is cheap; from plain local
shards they hold only where the bytes are (``Untar(defer_from=...)``), read on emission.
Combine with shard shuffling and write-time shuffling (``shardpipe write --shuffle``)
for a near-global shuffle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shardpipe.io.deferred import materialize
from shardpipe.stages.base import Context, Stage, State
from shardpipe.state import COUNT, StateCheck

#: ``planned(ctx)``: the most items a shuffle's source yields to this consumer in ``ctx.epoch`` (None: unknown)
Planned = Callable[[Context], int | None]


class Shuffle(Stage[Any]):
    """Emit the source's items in seeded random order, ``buffer_size`` at a time.

    ``planned`` (optional) tells how many items the source yields at most in an epoch; a
    resume state's window number is then checked against the windows those items fill.
    """

    state_fields = {"window": COUNT, "emitted": COUNT}

    def check_state(self, state: State, check: StateCheck, below: object) -> object:
        size = self.buffer_size
        check.at("emitted").integer(state["emitted"], 0, size, " (the shuffle buffer's size)")
        items = self.planned(self.ctx) if self.planned is not None else None
        if items is not None:  # windows are full but the last; after the last, the empty one past it
            windows = -(-items // size)
            what = f" (this consumer's {items} items fill {windows} windows of {size})"
            window = check.at("window").integer(state["window"], 0, windows, what)
            left = max(0, min(size, items - window * size))
            check.at("emitted").integer(state["emitted"], 0, left, f" (the items of window {window})")
        return below

    def __init__(self, buffer_size: int, planned: Planned | None = None):
        super().__init__()
        if buffer_size < 1:
            raise ValueError(f"shuffle buffer_size must be >= 1, not {buffer_size}")
        self.buffer_size = buffer_size
        self.planned = planned
        self._window: list[Any] = []
        self._order: np.ndarray = np.arange(0)
        self._emitted = 0
        self._window_no = -1
        self._window_start: State | None = None

    def _fill(self) -> bool:
        """Read the next window; False when the source is exhausted."""
        assert self.source is not None
        self._window_start = self.source.get_state()
        self._window_no += 1
        window = []
        for _ in range(self.buffer_size):
            try:
                window.append(self.source.next())
            except StopIteration:
                break
        c = self.ctx
        rng = np.random.default_rng([c.seed, c.epoch, c.split_index, self._window_no, 0x5F])
        self._window, self._order, self._emitted = window, rng.permutation(len(window)), 0
        return bool(window)

    def reset(self, state: State | None = None) -> None:
        self._window, self._order, self._emitted = [], np.arange(0), 0
        if state is None:
            super().reset(None)
            self._window_no, self._window_start = -1, None
            return
        assert self.source is not None
        self.source.reset(state["source"])
        self._window_no = int(state["window"]) - 1
        self._fill()
        self._emitted = int(state["emitted"])

    def next(self) -> Any:
        if self._emitted >= len(self._window) and not self._fill():
            raise StopIteration
        item = self._window[self._order[self._emitted]]
        self._window[self._order[self._emitted]] = None  # release memory as we go
        self._emitted += 1
        # members an Untar(defer_from=...) left in their file are read now, into memory just freed
        return materialize(item) if type(item) is dict else item

    def close(self) -> None:
        """Drop the window's samples (records of deferred members keep their shard files open);
        the state stays as it was, for a ``state_dict()`` after the loop stopped."""
        self._window = [None] * len(self._window)

    def get_state(self) -> State:
        if self._window_start is None:  # nothing read yet
            return {"source": super().get_state()["source"], "window": 0, "emitted": 0}
        return {"source": self._window_start, "window": self._window_no, "emitted": self._emitted}
