"""Streaming reads from object stores that survive broken connections.

A remote shard is read as a sequence of ranged requests of ``block_size`` bytes, with
``readahead`` of them in flight while the current one is consumed (large sequential
reads, bounded memory). A block that fails (a cut connection, a stall past
``timeout``, a server restart, a short body) is requested again from the same byte
offset after an exponential backoff, so the stream returns every byte exactly once.
After ``retries`` consecutive failures at one offset the reader raises
:class:`~shardpipe.errors.TruncatedShardError` naming the URL and the offset.

The object's size and version are looked up first: a stream that ends early is
detected, and every ranged request asks for that version (:mod:`shardpipe.io.pin`), so a
shard replaced mid-read is a :class:`~shardpipe.errors.CorruptShardError`, never a
splice of two versions.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from shardpipe.errors import CorruptShardError, ShardNotFoundError, ShardpipeError, TruncatedShardError
from shardpipe.io.pin import Pin, fetch_range, is_version_gone, pin_of

log = logging.getLogger("shardpipe")
T = TypeVar("T")


@dataclass(frozen=True)
class ReadOptions:
    """How remote shards are read: block size, read-ahead and the retry policy."""

    block_size: int = 8 << 20  #: bytes per ranged request
    readahead: int = 2  #: requests in flight beyond the block being consumed
    retries: int = 8  #: consecutive failed attempts at one offset before giving up
    backoff: float = 0.25  #: seconds before the first retry; doubles each time
    max_backoff: float = 8.0  #: cap on the wait between retries
    timeout: float = 60.0  #: seconds one block request may take (stalls are retried)

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.readahead < 0 or self.retries < 0:
            raise ValueError(f"invalid read options: {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff)


def _retryable_types() -> tuple[type[BaseException], ...]:
    """Errors that mean 'the transfer broke', not 'the request is wrong'."""
    import http.client

    types: list[type[BaseException]] = [
        OSError,  # ConnectionError, TimeoutError, aiohttp's ClientOSError, s3fs translations
        EOFError,  # asyncio.IncompleteReadError
        IndexError,  # s3fs 2026.9 _fetch_range on a read timeout
        http.client.HTTPException,  # IncompleteRead
    ]
    try:
        import aiohttp

        types.append(aiohttp.ClientError)  # ClientPayloadError, ServerDisconnectedError, 5xx
    except ImportError:
        pass
    try:
        from botocore.exceptions import BotoCoreError

        types.append(BotoCoreError)  # ResponseStreamingError, ReadTimeoutError, ...
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(types)


_RETRYABLE: tuple[type[BaseException], ...] | None = None


def is_retryable(exc: BaseException) -> bool:
    """True when reading again from the same offset may succeed."""
    global _RETRYABLE
    if _RETRYABLE is None:
        _RETRYABLE = _retryable_types()
    if isinstance(exc, (ShardpipeError, PermissionError)):
        return False  # our own verdicts, bad credentials: retrying will not help
    if isinstance(exc, FileNotFoundError):
        # fsspec's HTTP info() reports any failure as FileNotFoundError: look at the cause
        return exc.__cause__ is not None and is_retryable(exc.__cause__)
    status = getattr(exc, "status", None)
    if isinstance(status, int) and type(exc).__name__ == "ClientResponseError":
        return status >= 500 or status in (408, 429)  # 404, 403, 416: a wrong request
    return isinstance(exc, _RETRYABLE)


def call_with_retries(fn: Callable[[], T], what: str, options: ReadOptions) -> T:
    """Run ``fn`` with the retry policy (for metadata requests such as ``info``)."""
    for attempt in range(options.retries + 1):
        try:
            return fn()
        except Exception as e:
            if not is_retryable(e) or attempt == options.retries:
                raise
            log.info("retrying %s after %s: %s", what, type(e).__name__, e)
            time.sleep(options.delay(attempt + 1))
    raise AssertionError("unreachable")


class AsyncBlockSource:
    """Ranged requests on an fsspec async filesystem's event loop, each with a deadline,
    each for the version ``pin`` (when the store names one)."""

    def __init__(self, fs: Any, path: str, timeout: float, pin: Pin | None = None):
        self.fs, self.path, self.timeout, self.pin = fs, path, timeout, pin

    async def _fetch(self, start: int, end: int) -> bytes:
        coro = fetch_range(self.fs, self.path, start, end, self.pin)
        return await asyncio.wait_for(coro, self.timeout)

    def changed(self, exc: BaseException) -> bool:
        """True when ``exc`` means the pinned version was replaced."""
        return is_version_gone(exc, self.pin)

    def submit(self, start: int, end: int) -> Future[bytes]:
        return asyncio.run_coroutine_threadsafe(self._fetch(start, end), self.fs.loop)

    def result(self, fut: Future[bytes]) -> bytes:
        return fut.result()  # the deadline is enforced on the loop

    def close(self) -> None:
        pass


class ThreadBlockSource:
    """Ranged requests on a synchronous fsspec filesystem, from a small thread pool."""

    pin = None  # synchronous filesystems are read unpinned

    def __init__(self, fs: Any, path: str, timeout: float, threads: int):
        self.fs, self.path, self.timeout = fs, path, timeout
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="shardpipe-read")

    def submit(self, start: int, end: int) -> Future[bytes]:
        return self.pool.submit(self.fs.cat_file, self.path, start=start, end=end)

    def result(self, fut: Future[bytes]) -> bytes:
        try:
            return fut.result(self.timeout)
        except FutureTimeout as e:
            raise TimeoutError(f"no data within {self.timeout} s") from e

    def changed(self, exc: BaseException) -> bool:
        return False

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class ResumableReader(io.BufferedIOBase):
    """A read-only binary stream over a remote object that resumes broken transfers.

    ``read(n)`` returns exactly ``n`` bytes unless the object ends first, like a
    buffered file. ``seek`` moves within the current block or the requests in flight
    without new requests, and otherwise restarts the read-ahead at the target (so
    stepping over unwanted members does not download them). ``retries_used`` counts
    the failed attempts that were retried. After an error every read raises it again.
    """

    def __init__(
        self,
        url: str,
        source: AsyncBlockSource | ThreadBlockSource,
        size: int,
        offset: int = 0,
        options: ReadOptions | None = None,
    ):
        super().__init__()
        if not 0 <= offset <= size:
            raise ValueError(f"offset {offset} outside {url} ({size} bytes)")
        self.url = url
        self.name = url
        self.size = size
        self.options = options or ReadOptions()
        self.retries_used = 0
        self.wait_seconds = 0.0  # time read() spent blocked on the network
        self._source = source
        self._pos = offset  # absolute offset of the next byte read() returns
        self._block = b""
        self._block_pos = 0
        self._next = offset  # start of the next block to request
        self._pending: deque[tuple[int, int, Future[bytes]]] = deque()
        self._error: Exception | None = None
        self._fill_window(max(1, self.options.readahead))  # requests start on open

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
        else:
            self._block, self._block_pos = b"", 0
            while self._pending and (self._pending[0][1] <= target or self._pending[0][0] > target):
                self._pending.popleft()[2].cancel()  # blocks before the target (or behind us)
            if self._pending:  # the target lies in a block already requested
                self._pos = self._pending[0][0]
                self._next_block()
                self._block_pos = target - self._pos
            else:
                self._next = target
                self._fill_window(max(1, self.options.readahead))
        self._pos = target
        return target

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
            for _, _, fut in self._pending:
                fut.cancel()
            self._pending.clear()
            self._block = b""
            self._source.close()
        super().close()

    # -- blocks ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"read from closed stream {self.url}")
        if self._error is not None:
            raise self._error

    def _fill_window(self, want: int) -> None:
        """Keep ``want`` block requests in flight."""
        while len(self._pending) < want and self._next < self.size:
            end = min(self._next + self.options.block_size, self.size)
            self._pending.append((self._next, end, self._source.submit(self._next, end)))
            self._next = end

    def _next_block(self) -> None:
        """Make the block starting at ``self._pos`` current, retrying failed requests."""
        try:
            self._fetch_next_block()
        except Exception as e:
            self._error = e
            raise

    def _fetch_next_block(self) -> None:
        if not self._pending:
            self._fill_window(1)
        start, end, fut = self._pending.popleft()
        assert start == self._pos, (start, self._pos)
        failures = 0
        while True:
            try:
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
            except Exception as e:
                if isinstance(e, ShardpipeError):
                    raise
                if self._source.changed(e):
                    raise CorruptShardError(
                        f"{self.url} changed while being read: the request for bytes {start}-{end - 1} no longer "
                        f"matches {self._source.pin}, seen when it was opened (the object was replaced or "
                        f"deleted): {type(e).__name__}: {e}"
                    ) from e
                if not is_retryable(e):  # e.g. the object was deleted: a shard error all the same
                    raise TruncatedShardError(
                        f"{self.url}: read failed at byte {start} of {self.size}: {type(e).__name__}: {e}"
                    ) from e
                failures += 1
                self.retries_used += 1
                if failures > self.options.retries:
                    raise TruncatedShardError(
                        f"{self.url}: read failed at byte {start} of {self.size} after "
                        f"{failures} attempts: {type(e).__name__}: {e}"
                    ) from e
                wait = self.options.delay(failures)
                log.info(
                    "%s: %s at byte %d (%s); retry %d/%d in %.2f s",
                    self.url, type(e).__name__, start, e, failures, self.options.retries, wait,
                )  # fmt: skip
                time.sleep(wait)
                fut = self._source.submit(start, end)
                continue
            if len(data) < end - start:  # short body: keep it, ask for the rest first
                rest = start + len(data)
                self._pending.appendleft((rest, end, self._source.submit(rest, end)))
            break
        self._block = data
        self._block_pos = 0
        self._fill_window(self.options.readahead)


def object_info(fs: Any, path: str, url: str, options: ReadOptions) -> dict[str, Any]:
    """The object's ``info()`` with an integer ``size`` (retried on transient errors)."""
    try:
        info = call_with_retries(lambda: fs.info(path), f"info {url}", options)
    except Exception as e:
        if is_retryable(e):  # still failing after the retries: the server is unreachable
            raise TruncatedShardError(
                f"{url}: cannot open after {options.retries + 1} attempts: {type(e).__name__}: {e.__cause__ or e}"
            ) from e
        if isinstance(e, FileNotFoundError):
            raise ShardNotFoundError(f"shard not found: {url}") from e
        raise
    size = info.get("size")
    if size is None:
        raise CorruptShardError(f"{url}: the server does not report the object's size")
    return {**info, "size": int(size)}


def open_remote(
    url: str,
    offset: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
    options: ReadOptions | None = None,
    expected_size: int | None = None,
) -> ResumableReader:
    """Open a remote object (any fsspec URL) for resumable streaming from ``offset``."""
    import fsspec.asyn
    import fsspec.core

    options = options or ReadOptions()
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    info = object_info(fs, path, url, options)
    size = info["size"]
    if expected_size is not None and size != expected_size:
        raise CorruptShardError(f"{url}: object is {size} bytes but the manifest says {expected_size}")
    source: AsyncBlockSource | ThreadBlockSource
    if isinstance(fs, fsspec.asyn.AsyncFileSystem):
        source = AsyncBlockSource(fs, path, options.timeout, pin_of(fs, info))
    else:
        source = ThreadBlockSource(fs, path, options.timeout, options.readahead + 1)
    return ResumableReader(url, source, size, offset, options)
