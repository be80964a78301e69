"""``ResumableReader``: a remote object read as a window of parallel ranged requests.

The requests in flight plus the block being consumed make the stream's window. By
default it adapts: requests start at ``min_block`` bytes and double up to
``block_size`` (large sequential GETs), and the window holds ``demand x request time``
bytes, where the request time comes from the measured first-byte latency and
per-connection throughput and ``demand`` (bytes/s, shared by the process's streams,
``shardpipe.io.budget.LinkStats``) grows by half each time a consumer had to wait for
the network. A stream opened ahead (``fill_ahead``) fills its whole share until it is read. At cloud latency it
settles near the bandwidth-delay product; a consumer slower than the link never waits
and keeps the window small. Every byte requested is reserved from the process's
:class:`~shardpipe.io.budget.MemoryBudget` first, and one stream holds at most its
share of it, so prefetched streams keep filling (requests go out as soon as bytes are
freed, not only when they are read) while the total stays under one bound.

A failed block is requested again from its first byte after a backoff (``retries``
in a row at one offset, then :class:`TruncatedShardError`); a short body keeps what
arrived and asks for the rest first: every byte is returned exactly once.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from shardpipe.errors import CorruptShardError, ShardpipeError, ShardReadError, TruncatedShardError
from shardpipe.io.access import access_error
from shardpipe.io.budget import LinkStats, MemoryBudget, link_stats, process_budget
from shardpipe.io.read_options import attempts
from shardpipe.io.remote import ReadOptions, is_retryable, unreachable, unreachable_error

log = logging.getLogger("shardpipe")

MAX_DEMAND = 8.0 * (1 << 30)  # bytes/s: a ceiling on the demand estimate
_RECHECK = 0.05  # seconds between looks at whether a read waiting for memory was sent meanwhile


class _Request:
    """One ranged request ``[start, end)`` in flight, holding ``reserved`` bytes of the budget."""

    __slots__ = ("start", "end", "fut", "reserved")

    def __init__(self, start: int, end: int, fut: Future[bytes], reserved: int):
        self.start, self.end, self.fut, self.reserved = start, end, fut, reserved


class ResumableReader(io.BufferedIOBase):
    """A read-only binary stream over a remote object that resumes broken transfers.

    ``read(n)`` returns exactly ``n`` bytes unless the object ends first, like a
    buffered file. ``seek`` moves within the current block or the requests in flight
    without new requests, and otherwise restarts the window at the target (stepping
    over unwanted members does not download them). Counters: ``retries_used`` (failed
    attempts retried), ``wait_seconds`` (time ``read`` blocked on the network),
    ``stalls`` (reads that found their block not yet arrived), ``requests``,
    ``max_reserved`` (the most bytes this stream held at once). After an error every
    read raises it again. ``content_type``: the Content-Type the store reported, if any.
    """

    content_type: str | None = None

    def __init__(
        self,
        url: str,
        source: Any,
        size: int,
        offset: int = 0,
        options: ReadOptions | None = None,
        budget: MemoryBudget | None = None,
        stats: LinkStats | None = None,
    ):
        super().__init__()
        if not 0 <= offset <= size:
            raise ValueError(f"offset {offset} outside {url} ({size} bytes)")
        self.url = url
        self.name = url
        self.size = size
        self.options = options = options or ReadOptions()
        self.budget = budget or process_budget(options.memory_limit)
        self.stats = stats or link_stats()
        self.retries_used = 0
        self.wait_seconds = 0.0
        self.stalls = 0
        self.requests = 0
        self.max_reserved = 0
        self._source = source
        self._pos = offset  # absolute offset of the next byte read() returns
        self._block = b""
        self._block_pos = 0
        self._block_reserved = 0  # budget bytes held by the current block
        self._next = offset  # start of the next block to request
        self._pending: deque[_Request] = deque()
        self._reserved = 0  # budget bytes held: requests in flight + the current block
        self._req_size = (
            options.block_size if options.readahead is not None else min(options.min_block, options.block_size)
        )
        self._ahead = False  # opened ahead and not yet read: fill the whole share
        self._lock = threading.Lock()
        self._started = False  # a block has been returned (the first wait is not a stall)
        self._error: Exception | None = None
        self.budget.register()
        self._fill()  # requests start on open

    # -- io.BufferedIOBase ---------------------------------------------------------
    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._check_open()
        target = (offset, self._pos + offset, self.size + offset)[whence]
        if not 0 <= target <= self.size:
            raise ValueError(f"seek to {target} outside {self.url} ({self.size} bytes)")
        block_start = self._pos - self._block_pos
        if block_start <= target <= block_start + len(self._block):
            self._block_pos = target - block_start
            self._pos = target
            return target
        self._drop_block()
        dropped = 0
        with self._lock:
            while self._pending and (self._pending[0].end <= target or self._pending[0].start > target):
                req = self._pending.popleft()  # blocks before the target (or behind us)
                req.fut.cancel()
                dropped += req.reserved
            if not self._pending:
                self._next = target
            self._reserved -= dropped
        self.budget.release(dropped)
        if self._pending:  # the target lies in a block already requested
            self._pos = self._pending[0].start
            self._next_block()
            self._block_pos = target - self._pos
        else:
            self._fill()
        self._pos = target
        return target

    def fill_ahead(self) -> None:
        """This stream was opened ahead of its turn: fill its whole share of the budget
        while the stream before it is read (until its own first read)."""
        self._ahead = True
        self._fill()

    def read(self, n: int | None = -1) -> bytes:
        self._check_open()
        if n is None or n < 0:
            n = self.size - self._pos
        parts = []
        while n > 0 and self._pos < self.size:
            if self._block_pos >= len(self._block):
                self._next_block()
            avail = len(self._block) - self._block_pos
            if self._block_pos == 0 and n >= avail:
                part = self._block  # the whole block: no copy
            else:
                part = self._block[self._block_pos : self._block_pos + n]
            self._block_pos += len(part)
            self._pos += len(part)
            n -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read1(self, n: int = -1) -> bytes:
        self._check_open()
        if self._pos >= self.size:
            return b""
        if self._block_pos >= len(self._block):
            self._next_block()
        avail = len(self._block) - self._block_pos
        return self.read(avail if n is None or n < 0 else min(n, avail))

    def readinto(self, b: Any) -> int:
        data = self.read(len(memoryview(b)))
        memoryview(b).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with self._lock:
                freed = self._reserved
                for req in self._pending:
                    req.fut.cancel()
                self._pending.clear()
                self._reserved = 0
                self._block, self._block_reserved = b"", 0
            super().close()  # before the wake-ups below, so no callback refills this stream
            self.budget.unregister()
            self.budget.release(freed)
            self._source.close()
            return
        super().close()

    @property
    def reserved(self) -> int:
        """Budget bytes this stream holds now (requests in flight + the current block)."""
        return self._reserved

    # -- the window -------------------------------------------------------------------
    def _check_open(self) -> None:
        self._ahead = False  # being read now: the adaptive window applies
        if self.closed:
            raise ValueError(f"read from closed stream {self.url}")
        if self._error is not None:
            raise self._error

    def window(self) -> int:
        """Bytes this stream wants reserved now: ``demand x request time`` within its share."""
        share = self.budget.share()
        if self.options.readahead is not None:
            return share
        if self._ahead:
            return share
        want = self.stats.demand * self.stats.request_time(self._req_size)
        return int(min(max(want, 2 * self._req_size), share))

    def _fill(self) -> None:
        """Send requests until the window is full (or the budget is spent; then again when freed)."""
        with self._lock:
            self._fill_locked()

    def _fill_locked(self) -> None:
        if self.closed or self._error is not None:
            return
        opts = self.options
        limit = self.window()
        while self._next < self.size:
            if opts.readahead is not None:
                wanted = opts.readahead if self._started or self._block else max(1, opts.readahead)
                if len(self._pending) >= wanted:
                    return
            elif self._pending and self._reserved >= limit:
                return
            n = min(self._req_size, self.size - self._next)
            if self._pending and self._reserved + n > limit:
                n = limit - self._reserved  # a smaller last request fills the window exactly
                if n < min(opts.min_block, self.size - self._next):
                    return
            if not self.budget.try_acquire(n):
                self.budget.when_freed(self._on_freed)
                return
            self._submit(self._next, self._next + n, n)
            self._next += n
            if opts.readahead is None:
                self._req_size = min(self._req_size * 2, self._largest_request())

    def _largest_request(self) -> int:
        """Requests long enough that the first-byte wait costs ~1/9 of a connection's time
        (8 x latency x per-connection throughput), short enough that one shard is read by
        at least 4 requests in parallel; within [min_block, block_size]."""
        opts = self.options
        want = min(8 * self.stats.latency * self.stats.conn_rate, self.size / 4)
        return int(min(max(want, opts.min_block), opts.block_size))

    def _submit(self, start: int, end: int, reserved: int) -> _Request:
        req = _Request(start, end, self._source.submit(start, end), reserved)
        self._pending.append(req)
        self._reserved += reserved
        self.max_reserved = max(self.max_reserved, self._reserved)
        self.requests += 1
        return req

    def _on_freed(self) -> None:
        """The budget freed bytes: top the window up (from whichever thread freed them)."""
        if self.closed:
            return
        if self._lock.acquire(blocking=False):
            try:
                self._fill_locked()
            finally:
                self._lock.release()
        else:  # this stream is busy and refills itself when done; ask again next time
            self.budget.when_freed(self._on_freed)

    def _request_now(self) -> None:
        """Nothing in flight and a block is needed: wait for the budget rather than give up."""
        n = min(self._req_size, self.size - self._pos, self.budget.share())
        n = max(n, 1)
        deadline = time.monotonic() + self.options.timeout
        # in slices: the bytes freed may go to this stream's own wake-up (``_on_freed``), which then
        # sends the request this read waits for
        while not self.budget.acquire(n, min(_RECHECK, max(0.0, deadline - time.monotonic()))):
            with self._lock:
                if self._pending:
                    return
            if time.monotonic() >= deadline:
                raise ShardReadError(
                    f"{self.url}: no memory for the read at byte {self._pos}: the {self.budget.limit}-byte "
                    f"memory_limit stayed in use by other streams for {self.options.timeout} s"
                )
        with self._lock:
            if not self._pending:  # (a wake-up from the budget may have sent it meanwhile)
                self._next = self._pos + n
                self._submit(self._pos, self._pos + n, n)
                return
        self.budget.release(n)

    def _drop_block(self) -> None:
        freed = self._block_reserved
        with self._lock:
            self._reserved -= freed
            self._block, self._block_pos, self._block_reserved = b"", 0, 0
        self.budget.release(freed)

    # -- blocks ----------------------------------------------------------------------
    def _next_block(self) -> None:
        """Make the block starting at ``self._pos`` current, retrying failed requests."""
        try:
            self._fetch_next_block()
        except Exception as e:
            self._error = e
            raise

    def _fetch_next_block(self) -> None:
        self._drop_block()
        with self._lock:
            req = self._pending.popleft() if self._pending else None
        if req is None:
            self._request_now()
            with self._lock:
                req = self._pending.popleft()
        assert req.start == self._pos, (req.start, self._pos)
        try:
            data = self._receive(req)
        except BaseException:
            with self._lock:
                self._reserved -= req.reserved
            self.budget.release(req.reserved)
            raise
        with self._lock:
            if len(data) < req.end - req.start:  # short body: keep it, ask for the rest first
                rest = req.start + len(data)
                left = _Request(rest, req.end, self._source.submit(rest, req.end), req.reserved - len(data))
                self._pending.appendleft(left)
                self.requests += 1
            self._block, self._block_pos, self._block_reserved = data, 0, len(data)
            self._started = True
            self._fill_locked()

    def _receive(self, req: _Request) -> bytes:
        """The body of ``req``, requesting it again after transient failures."""
        start, end, fut = req.start, req.end, req.fut
        failures = 0
        while True:
            try:
                if not failures and not fut.done() and self._started and self.options.readahead is None:
                    self.stalls += 1  # the consumer caught up with the network: widen the window
                    self.stats.demand = min(self.stats.demand * 1.5, MAX_DEMAND)
                t0 = time.perf_counter()
                try:
                    data = self._source.result(fut)
                finally:
                    self.wait_seconds += time.perf_counter() - t0
                if len(data) > end - start:
                    raise CorruptShardError(
                        f"{self.url}: asked for bytes {start}-{end - 1}, got {len(data)} bytes: "
                        "the server ignores Range requests"
                    )
                if not data:
                    raise EOFError(f"empty response for bytes {start}-{end - 1}")
                return data
            except Exception as e:
                if isinstance(e, ShardpipeError):
                    raise
                if self._source.changed(e):
                    raise CorruptShardError(
                        f"{self.url} changed while being read: the request for bytes {start}-{end - 1} no longer "
                        f"matches {self._source.pin}, seen when it was opened (the object was replaced or "
                        f"deleted): {type(e).__name__}: {e}"
                    ) from e
                denial = access_error(self.url, e)
                if denial is not None:  # credentials that expired mid-read: no shard of this run will read
                    raise denial from e
                if not is_retryable(e):  # e.g. the object was deleted: a shard error all the same
                    raise TruncatedShardError(
                        f"{self.url}: read failed at byte {start} of {self.size}: {type(e).__name__}: {e}"
                    ) from e
                failures += 1
                self.retries_used += 1
                if failures > self.options.retries:
                    if unreachable(e):  # the store went away: no shard of this pass would read either
                        where = f"for bytes {start}-{end - 1}"
                        raise unreachable_error(getattr(self._source, "fs", None), self.url, where, failures, e) from e
                    raise TruncatedShardError(
                        f"{self.url}: read failed at byte {start} of {self.size} after "
                        f"{attempts(failures)}: {type(e).__name__}: {e}"
                    ) from e
                wait = self.options.delay(failures)
                log.info(
                    "%s: %s at byte %d (%s); retry %d/%d in %.2f s",
                    self.url, type(e).__name__, start, e, failures, self.options.retries, wait,
                )  # fmt: skip
                time.sleep(wait)
                fut = self._source.submit(start, end)
                self.requests += 1
