"""Run a function over items on a thread pool, in order, with exact resumable state.

libjpeg-turbo and OpenCV release the GIL, so threads decode in parallel inside one
process (a DataLoader worker or the main process). Up to ``num_threads * depth`` items are
in flight; the stage's state is the source's state as of the last item it *returned*,
not the last one it read ahead, so resuming loses and repeats nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shardpipe.errors import ShardpipeError
from shardpipe.stages.base import Stage, State


class ParallelMap(Stage[Any]):
    """``fn(item)`` on ``num_threads`` threads (inline when num_threads == 0), order preserved.

    Exceptions of type ``ShardpipeError`` go to on_error (the item is skipped
    under skip/warn); any other exception propagates.
    """

    def __init__(self, fn: Callable[[Any], Any], num_threads: int = 0, depth: int = 2):
        super().__init__()
        self.fn = fn
        self.num_threads = num_threads
        self.depth = depth
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: deque[tuple[Future[Any], State]] = deque()
        self._state: State | None = None
        self._exhausted = False

    def reset(self, state: State | None = None) -> None:
        self._drain()
        super().reset(state)
        self._state = state["source"] if state else None
        self._exhausted = False

    def _drain(self) -> None:
        for fut, _ in self._inflight:
            fut.cancel()
        self._inflight.clear()

    def _fill(self) -> None:
        assert self.source is not None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="shardpipe-map")
        while not self._exhausted and len(self._inflight) < self.num_threads * self.depth:
            try:
                item = self.source.next()
            except StopIteration:
                self._exhausted = True
                break
            self._inflight.append((self._pool.submit(self.fn, item), self.source.get_state()))

    def next(self) -> Any:
        if self.num_threads <= 0:
            return self.next_inline(self.fn)
        while True:
            self._fill()
            if not self._inflight:
                raise StopIteration
            fut, state = self._inflight.popleft()
            self._state = state
            try:
                return fut.result()
            except ShardpipeError as e:
                self.ctx.errors(e)

    def next_inline(self, fn: Callable[[Any], Any]) -> Any:
        """``fn`` of the next item, on this thread (what ``next`` does when ``num_threads == 0``)."""
        while True:
            item = self.pull()
            self._state = None
            try:
                return fn(item)
            except ShardpipeError as e:
                self.ctx.errors(e)

    def get_state(self) -> State:
        if self.num_threads > 0 and self._state is not None:
            return {"source": self._state}
        return super().get_state()

    def close(self) -> None:
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
