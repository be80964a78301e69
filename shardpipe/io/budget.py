"""One memory bound per process for remote reads, and what the link was measured to do.

Every remote stream of a process (the shard being read, the shards opened ahead, the
random-access reads) reserves the bytes of a ranged request from one
:class:`MemoryBudget` before sending it and returns them when the block has been
consumed, so the bytes requested and not yet consumed never exceed ``limit`` however
many streams are open. Each open stream may hold at most an equal share of it, so a
stream opened ahead cannot starve the one being read.

:class:`LinkStats` keeps exponentially weighted averages of what ranged requests saw:
the time to the first byte and the throughput of one connection once bytes flow. A
stream sizes its requests and its window from them (see ``shardpipe.io.window``), and
a new stream starts from what the previous ones learned.

The default bound, 256 MiB per process, is sized for a training node running 16
DataLoader workers: 4 GiB in all, a small share of the RAM such nodes carry, and at
cloud latency (tens of ms to the first byte, 25-100 MiB/s per connection) room for
8-16 requests of 8-16 MiB in flight per worker, which is what fills the link.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

MiB = 1 << 20
#: bytes one process may have requested and not yet consumed (see the module docstring)
DEFAULT_MEMORY_LIMIT = 256 * MiB


class MemoryBudget:
    """Bytes reserved by this process's remote streams, at most ``limit`` at any time.

    ``used``/``peak``: bytes reserved now and the most ever reserved at once.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"memory_limit must be a positive number of bytes, not {limit}")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.streams = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._hungry: list[Callable[[], None]] = []

    def register(self) -> None:
        """A stream opens: the shares shrink."""
        with self._lock:
            self.streams += 1

    def unregister(self) -> None:
        """A stream closes: the others' shares grow."""
        with self._lock:
            self.streams = max(0, self.streams - 1)
        self._wake()

    def share(self) -> int:
        """The most one open stream may hold."""
        return self.limit // max(1, self.streams)

    def available(self) -> int:
        return self.limit - self.used

    def try_acquire(self, n: int) -> bool:
        """Reserve ``n`` bytes if they fit under the limit."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def acquire(self, n: int, timeout: float) -> bool:
        """Reserve ``n`` bytes, waiting up to ``timeout`` seconds for other streams to free them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.used + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._freed.wait(left)
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self.used -= n
            assert self.used >= 0, "released more than was reserved"
            self._freed.notify_all()
        self._wake()

    def when_freed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, the next time bytes are freed or a stream closes."""
        with self._lock:
            self._hungry.append(callback)

    def _wake(self) -> None:
        with self._lock:
            hungry, self._hungry = self._hungry, []
        for callback in hungry:
            callback()


class LinkStats:
    """Moving averages of the ranged requests of this process: first-byte latency and
    per-connection throughput, and the demand (bytes/s) streams last wanted."""

    ALPHA = 0.2  # weight of a new measurement

    def __init__(self) -> None:
        self.latency = 0.02  # seconds to the first byte; updated by the first measurement
        self.conn_rate = 50.0 * MiB  # bytes/s of one connection once bytes flow
        self.demand = 64.0 * MiB  # bytes/s the last streams wanted (a new stream starts there)
        self.requests = 0
        self._lock = threading.Lock()

    def observe(self, nbytes: int, first_byte: float | None, total: float) -> None:
        """One request: ``nbytes`` in ``total`` seconds, the first after ``first_byte`` (None: unknown)."""
        if total <= 0:
            return
        with self._lock:
            a = 1.0 if self.requests == 0 else self.ALPHA
            self.requests += 1
            if first_byte is not None:
                self.latency += a * (first_byte - self.latency)
                flowing = max(total - first_byte, 1e-4)
            else:  # one figure for the whole request: count it all as transfer
                flowing = total
            if nbytes >= 256 * 1024:  # small bodies say little about throughput
                self.conn_rate += a * (nbytes / flowing - self.conn_rate)

    def request_time(self, block: int) -> float:
        """Expected seconds for one ranged request of ``block`` bytes."""
        return self.latency + block / max(self.conn_rate, 1.0)


_budgets: dict[tuple[int, int], MemoryBudget] = {}
_stats: dict[int, LinkStats] = {}
_lock = threading.Lock()


def process_budget(limit: int) -> MemoryBudget:
    """This process's budget for ``limit`` (one object per limit, so all streams share it)."""
    key = (os.getpid(), limit)
    with _lock:
        if key not in _budgets:
            _budgets[key] = MemoryBudget(limit)
        return _budgets[key]


def link_stats() -> LinkStats:
    """This process's link measurements."""
    pid = os.getpid()
    with _lock:
        if pid not in _stats:
            _stats[pid] = LinkStats()
        return _stats[pid]
