"""Remote reads: the read options, which errors are worth a retry, and opening a stream.

A remote shard is streamed by :class:`shardpipe.io.stream.ResumableReader`: a window
of parallel ranged requests sized from the measured latency and throughput, within
one memory bound per process (``ReadOptions.memory_limit``), resuming broken
transfers from the byte offset.

The object's size and version are looked up first: a stream that ends early is
detected, and every ranged request asks for that version (:mod:`shardpipe.io.pin`), so a
shard replaced mid-read is a :class:`~shardpipe.errors.CorruptShardError`, never a
splice of two versions.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

from shardpipe.errors import (
    CorruptShardError,
    ShardNotFoundError,
    ShardpipeError,
    ShardReadError,
    ShardUnavailableError,
)
from shardpipe.io.access import access_error, denied
from shardpipe.io.budget import LinkStats, link_stats
from shardpipe.io.clients import MAX_CONNECTIONS, reading_fs
from shardpipe.io.pin import Pin, fetch_range, is_version_gone, pin_of
from shardpipe.io.read_options import ReadOptions, attempts

if TYPE_CHECKING:
    from shardpipe.io.stream import ResumableReader

log = logging.getLogger("shardpipe")
T = TypeVar("T")


class StoreUnreachableError(ConnectionError):
    """The store cannot be reached after ``ReadOptions.retries`` retries: a listing or existence check
    it did not answer (connection refused, a host name that does not resolve, no answer within
    ``timeout``), or a shard's request that could not connect. No ``ShardpipeError``: no shard of the
    pass would read, so ``on_error="skip"`` stops the pass rather than skip every shard."""


#: errors (by class name, subclasses too) that mean no connection was made: refused, unresolved, timed out
_NO_CONNECTION = ("ClientConnectorError", "EndpointConnectionError", "ConnectTimeoutError", "ConnectionTimeoutError")


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) means no connection to the store could be made;
    False for a request that failed once connected (a 5xx, a body cut short, a stall)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionRefusedError, socket.gaierror)):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return True
        if any(c.__name__ in _NO_CONNECTION for c in type(e).__mro__):
            return True
        e = e.__cause__ or e.__context__
    return False


def store_of(fs: Any, url: str) -> str:
    """The store ``url`` is read from, for messages: its endpoint, else the URL's scheme and host."""
    endpoint = (
        getattr(fs, "endpoint_url", None)
        or (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
        or getattr(fs, "_endpoint", None)  # gcsfs
    )
    if endpoint:
        return str(endpoint)
    scheme, _, rest = url.partition("://")
    if scheme.lower() in ("http", "https"):
        return f"{scheme}://{rest.split('/', 1)[0]}"
    return f"the default {scheme}:// endpoint"


def unreachable_error(fs: Any, url: str, what: str, tries: int, exc: BaseException) -> StoreUnreachableError:
    """'URL: cannot reach the store at STORE WHAT after N attempts: ERROR' (``what``: "to open it", ...)."""
    cause = exc.__cause__ or exc
    return StoreUnreachableError(
        f"{url}: cannot reach the store at {store_of(fs, url)} {what} after {attempts(tries)}: "
        f"{type(cause).__name__}: {cause}"
    )


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
    if isinstance(exc, (ShardpipeError, PermissionError, StoreUnreachableError)) or denied(exc) is not None:
        return False  # our own verdicts, refused or missing credentials: retrying will not help
    if isinstance(exc, FileNotFoundError):
        # fsspec's HTTP info() reports any failure as FileNotFoundError: look at the cause
        return exc.__cause__ is not None and is_retryable(exc.__cause__)
    if type(exc).__name__ == "TooManyRedirects":
        return False  # a redirect loop loops again
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


class _Expired(Exception):
    """The deadline of :func:`call_with_deadline` passed (told apart from a TimeoutError the call raises)."""


async def _within(coro: Any, timeout: float) -> Any:
    """``await coro``, or :class:`_Expired` after ``timeout`` seconds (the call is cancelled, not awaited)."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:  # the caller gave up (a stream closed with requests in flight): the call too
        _drop(task)
        raise
    if not done:
        _drop(task)
        raise _Expired
    return task.result()


def _drop(task: asyncio.Future[Any]) -> None:
    """Cancel ``task``, whose outcome nobody awaits (no "exception was never retrieved" warning)."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def call_with_deadline(fs: Any, method: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
    """``fs.method(*args, **kwargs)``, or ``TimeoutError("no answer within N s")`` after ``timeout`` seconds.

    The clients' own limits are minutes (aiohttp: 5, botocore: 60 s a try, 5 tries), so a
    server that accepts the connection and never answers would hold the caller that long
    whatever ``ReadOptions.timeout`` says. An async filesystem's request (S3, GCS, HTTP) is
    cancelled on its loop; a synchronous one is called on this thread (nothing could cancel
    it: a pool thread would only stop the waiting, and serialise the callers' reads). A
    TimeoutError the client raises itself (aiohttp's ``SocketTimeoutError``, a socket timeout)
    is raised as it is.
    """
    import fsspec.asyn

    if not isinstance(fs, fsspec.asyn.AsyncFileSystem):
        return getattr(fs, method)(*args, **kwargs)
    return _on_loop(fs, getattr(fs, f"_{method}")(*args, **kwargs), timeout)


def _on_loop(fs: Any, coro: Any, timeout: float) -> Any:
    """``coro`` run on ``fs``'s event loop, which keeps the deadline: ``TimeoutError("no answer within N s")``
    after ``timeout`` seconds, a TimeoutError the client raises itself as it is."""
    try:
        return asyncio.run_coroutine_threadsafe(_within(coro, timeout), fs.loop).result()
    except _Expired:
        raise TimeoutError(f"no answer within {timeout} s") from None


def read_range(fs: Any, path: str, start: int, end: int, pin: Pin | None, timeout: float) -> bytes:
    """Bytes ``start``..``end``-1 of the version ``pin`` (as :func:`shardpipe.io.pin.fetch_range` checks
    them), or ``TimeoutError`` after ``timeout`` seconds; a synchronous filesystem's ``cat_file`` otherwise."""
    import fsspec.asyn

    if not isinstance(fs, fsspec.asyn.AsyncFileSystem):
        return fs.cat_file(path, start=start, end=end)  # type: ignore[no-any-return]
    return _on_loop(fs, fetch_range(fs, path, start, end, pin), timeout)  # type: ignore[no-any-return]


def call_store(fs: Any, method: str, *args: Any, url: str, what: str, options: ReadOptions, **kwargs: Any) -> Any:
    """``fs.method(*args, **kwargs)`` for ``url`` under the retry policy, each try within ``options.timeout``.

    A refused request is :class:`~shardpipe.io.access.AccessDeniedError`; a store that still does not
    answer after the retries :class:`StoreUnreachableError`, "URL: cannot reach the store for its WHAT
    after N attempts: ..." (``what``: "listing", "existence check"); other errors (a missing object) are
    raised as they are.
    """
    try:
        return call_with_retries(
            lambda: call_with_deadline(fs, method, *args, timeout=options.timeout, **kwargs),
            f"the {what} of {url}",
            options,
        )
    except Exception as e:
        denial = access_error(url, e)
        if denial is not None:
            raise denial from e
        if not is_retryable(e):
            raise
        cause = e.__cause__ or e
        tries = attempts(options.retries + 1)
        raise StoreUnreachableError(
            f"{url}: cannot reach the store for its {what} after {tries}: {type(cause).__name__}: {cause}"
        ) from e


class AsyncBlockSource:
    """Ranged requests on an fsspec async filesystem's event loop, each with a deadline,
    each for the version ``pin`` (when the store names one)."""

    def __init__(self, fs: Any, path: str, timeout: float, pin: Pin | None = None, stats: LinkStats | None = None):
        self.fs, self.path, self.timeout, self.pin = fs, path, timeout, pin
        self.stats = stats or link_stats()

    async def _fetch(self, start: int, end: int) -> bytes:
        t0 = time.perf_counter()
        first: list[float] = []
        try:  # (a TimeoutError of the client itself is raised as it is)
            data = await _within(fetch_range(self.fs, self.path, start, end, self.pin, first), self.timeout)
        except _Expired:  # (asyncio.wait_for's TimeoutError says nothing: say what stalled, and the deadline)
            raise TimeoutError(f"no data for bytes {start}-{end - 1} within {self.timeout} s") from None
        self.stats.observe(len(data), first[0] - t0 if first else None, time.perf_counter() - t0)
        return data

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

    def __init__(self, fs: Any, path: str, timeout: float, threads: int, stats: LinkStats | None = None):
        self.fs, self.path, self.timeout = fs, path, timeout
        self.stats = stats or link_stats()
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="shardpipe-read")

    def _fetch(self, start: int, end: int) -> bytes:
        t0 = time.perf_counter()
        data = self.fs.cat_file(self.path, start=start, end=end)
        self.stats.observe(len(data), None, time.perf_counter() - t0)
        return data

    def submit(self, start: int, end: int) -> Future[bytes]:
        return self.pool.submit(self._fetch, start, end)

    def result(self, fut: Future[bytes]) -> bytes:
        if not wait([fut], self.timeout).done:  # (a TimeoutError of the read itself is raised as it is)
            raise TimeoutError(f"no data within {self.timeout} s")
        return fut.result()

    def changed(self, exc: BaseException) -> bool:
        return False

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def object_info(fs: Any, path: str, url: str, options: ReadOptions) -> dict[str, Any]:
    """The object's ``info()`` with an integer ``size`` (retried on transient errors)."""
    try:
        info = call_with_retries(
            lambda: call_with_deadline(fs, "info", path, timeout=options.timeout), f"info {url}", options
        )
    except Exception as e:
        denial = access_error(url, e)
        if denial is not None:
            raise denial from e
        cause = e.__cause__ or e  # (fsspec's HTTP info() reports any failure as FileNotFoundError)
        if is_retryable(e) and unreachable(e):  # no connection after the retries: no shard there will open
            raise unreachable_error(fs, url, "to open it", options.retries + 1, e) from e
        if is_retryable(e):  # still failing after the retries (a 5xx, a stall): this shard cannot be opened
            raise ShardUnavailableError(
                f"{url}: cannot open after {attempts(options.retries + 1)}: {type(cause).__name__}: {cause}"
            ) from e
        if type(cause).__name__ == "TooManyRedirects":
            hops = [str(r.headers.get("Location")) for r in getattr(cause, "history", ())][-3:]
            raise ShardReadError(
                f"{url}: cannot open: the server redirects in a loop (more than {len(cause.history)} redirects, "
                f"the last to {', '.join(hops)})"
            ) from e
        if isinstance(e, FileNotFoundError):
            raise ShardNotFoundError(not_found_message(url)) from e
        raise
    size = info.get("size")
    if size is None:
        raise CorruptShardError(f"{url}: the server does not report the object's size")
    return {**info, "size": int(size)}


def not_found_message(url: str) -> str:
    """'shard not found: URL', with a hint when an http(s) URL holds a raw '#' or '?'."""
    if url.lower().startswith(("http://", "https://")) and ("#" in url or "?" in url):
        return (
            f"shard not found: {url} (a raw '#' in an http(s) URL starts its fragment and a '?' its query, "
            "so neither reaches the server as part of the name: percent-encode them, '#' as %23 and '?' as %3F)"
        )
    return f"shard not found: {url}"


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

    from shardpipe.io.stream import ResumableReader

    options = options or ReadOptions()
    fs, path = reading_fs(url, storage_options)
    info = object_info(fs, path, url, options)
    size = info["size"]
    if expected_size is not None and size != expected_size:
        raise CorruptShardError(f"{url}: object is {size} bytes but the manifest says {expected_size}")
    source: AsyncBlockSource | ThreadBlockSource
    if isinstance(fs, fsspec.asyn.AsyncFileSystem):
        source = AsyncBlockSource(fs, path, options.timeout, pin_of(fs, info))
    else:
        threads = MAX_CONNECTIONS if options.readahead is None else options.readahead + 1
        source = ThreadBlockSource(fs, path, options.timeout, threads)
    reader = ResumableReader(url, source, size, offset, options)
    reader.content_type = info.get("mimetype") or info.get("ContentType") or info.get("contentType")
    return reader
