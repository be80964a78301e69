"""Read byte ranges of shards: ``pread`` on local files, ranged GETs remotely, or the cache.

Random access (``IndexedDataset``, the block shuffle) reads samples by byte range. A
local shard is opened once per process and read with ``os.pread`` (no seek, thread
safe); a remote one is copied into the shard cache when ``cache_dir`` is set, else
read by ranged requests (retried on transient errors). ``read_many`` takes a batch:
ranges of one shard that lie close together become one request of at most
``block_size`` bytes, and the requests go out in parallel, each reserving its bytes
from the process's memory budget (``shardpipe.io.budget``). The first use of a shard
checks its size against the index, so a changed shard is reported, not misread; each
request then names the version seen then and is checked to hold the range asked for
(``shardpipe.io.pin``), as a stream's requests are.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shardpipe.errors import (
    CorruptShardError,
    ShardNotFoundError,
    ShardpipeError,
    ShardReadError,
    TruncatedShardError,
)
from shardpipe.io.access import AccessDeniedError, access_error
from shardpipe.io.budget import process_budget
from shardpipe.io.clients import reading_fs
from shardpipe.io.files import is_local, local_path, open_shard
from shardpipe.io.pin import is_version_gone, pin_of
from shardpipe.io.read_options import attempts
from shardpipe.io.remote import (
    ReadOptions,
    StoreUnreachableError,
    call_with_retries,
    is_retryable,
    object_info,
    read_range,
    unreachable,
    unreachable_error,
)

#: ranges of one shard closer than this are read by one request (the gap is read and dropped)
MERGE_GAP = 256 * 1024
#: parallel requests of one process's batch reads
PARALLEL_REQUESTS = 32

#: one range to read: (url, start, end, shard size from the index, shard sha256)
RangeRequest = tuple[str, int, int, "int | None", "str | None"]


class LocalFile:
    """An open local shard, closed when its last holder lets go: a file evicted (``max_open``) or
    dropped by ``close`` while a read on another thread still uses it stays open until that read
    ends, so the read never meets a closed descriptor, nor one the number of which a newer open got.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # os.close bound at definition: at interpreter exit the module's globals (os among them) can be None
        # before the last holder of a file lets go of it
        try:
            _close(self.fd)
        except OSError:  # already closed
            pass


class RangeReader:
    """Byte ranges of shards, with at most ``max_open`` shards held open per process.

    Picklable (DataLoader workers): open handles stay in the process that opened them.
    """

    def __init__(
        self,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        cache_size: int | None = None,
        read_options: ReadOptions | None = None,
        max_open: int = 64,
    ):
        self.storage_options = storage_options
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.read_options = read_options or ReadOptions()
        self.max_open = max_open
        self._init()

    def _init(self) -> None:
        self._pid = os.getpid()
        self._open: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.requests = 0  # reads sent to the shards' storage (ranged GETs remotely)

    def _forget_parents(self) -> None:
        """In a forked worker: the parent's handles are not ours. Its files stay open here unclosed
        (their numbers may name other files by now, if anything in this process closed them)."""
        for kind, handle in self._open.values():
            if kind == "fd":
                handle.fd = -1
        self._init()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_open", "_lock", "_pid", "_pool")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init()

    def read(self, url: str, start: int, end: int, size: int | None = None, sha256: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``url``; ``size`` is what the index recorded for the shard.

        ``TruncatedShardError`` when the shard ends before ``end``.
        """
        data = self._read(self._handle(url, size, sha256), url, start, end)
        if len(data) < end - start:
            raise TruncatedShardError(
                f"truncated shard {url}: asked for bytes {start}-{end - 1}, it ends at byte {start + len(data)}"
            )
        return data

    def _read(self, handle: tuple[str, Any], url: str, start: int, end: int) -> bytes:
        kind, h = handle
        self.requests += 1
        if kind == "fd":
            return os.pread(h.fd, end - start, start)
        fs, path, pin = h
        opts = self.read_options
        try:
            return call_with_retries(
                lambda: read_range(fs, path, start, end, pin, opts.timeout), f"read {url} [{start}, {end})", opts
            )
        except Exception as e:
            if isinstance(e, ShardpipeError):
                raise
            if is_version_gone(e, pin):
                raise CorruptShardError(
                    f"{url} changed since it was opened: the request for bytes {start}-{end - 1} no longer matches "
                    f"{pin}: {type(e).__name__}: {e}; rebuild the index with `shardpipe index` if it was rewritten"
                ) from e
            denial = access_error(url, e)
            if denial is not None:
                raise denial from e
            if is_retryable(e) and unreachable(e):  # the store went away: no shard of this pass would read either
                raise unreachable_error(fs, url, f"for bytes {start}-{end - 1}", opts.retries + 1, e) from e
            tries = f" after {attempts(opts.retries + 1)}" if is_retryable(e) else ""
            raise TruncatedShardError(
                f"{url}: read of bytes {start}-{end - 1} failed{tries}: {type(e).__name__}: {e}"
            ) from e

    def read_many(self, requests: Sequence[RangeRequest]) -> list[bytes | Exception]:
        """The bytes of each request, in order; a request that failed gets its exception instead.

        Nearby ranges of one shard are merged into requests of at most ``block_size``
        bytes, sent in parallel (``PARALLEL_REQUESTS``), each within the memory budget.
        """
        if os.getpid() != self._pid:
            self._forget_parents()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix="shardpipe-ranges")
        out: list[bytes | Exception] = [b""] * len(requests)
        by_url: dict[str, list[int]] = {}
        for i, (url, *_rest) in enumerate(requests):
            by_url.setdefault(url, []).append(i)
        handles = {url: self._pool.submit(self._handle, url, *requests[ix[0]][3:5]) for url, ix in by_url.items()}
        runs = [run for ix in by_url.values() for run in self._runs(requests, ix)]
        futures = [
            (run, self._pool.submit(self._read_run, handles[requests[run[0]][0]], requests, run)) for run in runs
        ]
        for run, fut in futures:
            try:
                parts = fut.result()
            except Exception as e:
                parts = [e] * len(run)
            for i, part in zip(run, parts):
                out[i] = part
        return out

    def _runs(self, requests: Sequence[RangeRequest], indices: list[int]) -> list[list[int]]:
        """Group one shard's requests (``indices``) into runs read by one request each."""
        order = sorted(indices, key=lambda i: requests[i][1])
        runs: list[list[int]] = []
        run_start = run_end = 0
        for i in order:
            start, end = requests[i][1], requests[i][2]
            if runs and start - run_end <= MERGE_GAP and max(end, run_end) - run_start <= self.read_options.block_size:
                runs[-1].append(i)
                run_end = max(run_end, end)
            else:
                runs.append([i])
                run_start, run_end = start, end
        return runs

    def _read_run(self, handle_fut: Any, requests: Sequence[RangeRequest], run: list[int]) -> list[bytes | Exception]:
        url = requests[run[0]][0]
        start = min(requests[i][1] for i in run)
        end = max(requests[i][2] for i in run)
        handle = handle_fut.result()
        budget = process_budget(self.read_options.memory_limit) if handle[0] == "fs" else None
        n = min(end - start, budget.limit) if budget is not None else 0
        if budget is not None and not budget.acquire(n, self.read_options.timeout):
            raise ShardReadError(
                f"{url}: no memory for the read of bytes {start}-{end - 1}: the {budget.limit}-byte memory_limit "
                f"stayed in use for {self.read_options.timeout} s"
            )
        try:
            data = self._read(handle, url, start, end)
            parts: list[bytes | Exception] = []
            for i in run:
                lo, hi = requests[i][1] - start, requests[i][2] - start
                if len(data) < hi:
                    parts.append(TruncatedShardError(
                        f"truncated shard {url}: asked for bytes {requests[i][1]}-{requests[i][2] - 1}, "
                        f"it ends at byte {start + len(data)}"
                    ))  # fmt: skip
                else:
                    parts.append(data[lo:hi])
            return parts
        finally:
            if budget is not None:
                budget.release(n)

    def advise(self, url: str, start: int, end: int, size: int | None = None, sha256: str | None = None) -> None:
        """Ask the kernel to start reading ``[start, end)`` of a local or cached shard (no-op remotely).

        For a caller that knows its next random reads (a custom sampler over ``IndexedShards``),
        so reads from a cold disk overlap instead of waiting one by one. shardpipe's own block
        shuffle does not call it: its reads come from the page cache in every benchmark so far,
        and the gain on a cold disk is not measured.
        """
        kind, handle = self._handle(url, size, sha256)
        if kind == "fd" and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle.fd, start, end - start, os.POSIX_FADV_WILLNEED)

    def _handle(self, url: str, size: int | None, sha256: str | None) -> tuple[str, Any]:
        if os.getpid() != self._pid:
            self._forget_parents()
        with self._lock:
            got = self._open.get(url)
            if got is not None:
                self._open.move_to_end(url)
                return got
        got = self._connect(url, size, sha256)
        with self._lock:
            self._open[url] = got  # (another thread's open of the same url is dropped: see LocalFile)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)  # closed once no read holds it (LocalFile)
        return got

    def _connect(self, url: str, size: int | None, sha256: str | None) -> tuple[str, Any]:
        if is_local(url) or self.cache_dir is not None:
            try:
                if is_local(url):
                    fd = os.open(local_path(url), os.O_RDONLY)
                else:  # through the cache: a verified local copy
                    f = open_shard(
                        url, storage_options=self.storage_options, cache_dir=self.cache_dir,
                        cache_size=self.cache_size, expected_sha256=sha256, read_options=self.read_options,
                    )  # fmt: skip
                    try:
                        fd = os.dup(f.fileno()) if isinstance(f, io.BufferedReader) else None
                    finally:
                        f.close()
                    if fd is None:  # too big for the cache: ranged requests instead
                        return self._remote(url, size)
            except FileNotFoundError as e:
                raise ShardNotFoundError(f"shard not found: {url}") from e
            except (AccessDeniedError, StoreUnreachableError):  # the store's problem, not this shard's
                raise
            except OSError as e:
                raise ShardReadError(f"cannot read shard {url}: {e}") from e
            actual = os.fstat(fd).st_size
            if size is not None and actual != size:
                os.close(fd)
                raise CorruptShardError(
                    f"shard {url} is {actual} bytes but was {size} when indexed: it changed; "
                    "rebuild the index with `shardpipe index`"
                )
            return "fd", LocalFile(fd)
        return self._remote(url, size)

    def _remote(self, url: str, size: int | None) -> tuple[str, Any]:
        fs, path = reading_fs(url, self.storage_options)
        info = object_info(fs, path, url, self.read_options)
        actual = info["size"]
        if size is not None and actual != size:
            raise CorruptShardError(
                f"shard {url} is {actual} bytes but was {size} when indexed: it changed; "
                "rebuild the index with `shardpipe index`"
            )
        return "fs", (fs, path, pin_of(fs, info))

    def close(self) -> None:
        """Close the open local files (remote handles hold nothing); one a read on another thread
        still uses closes when that read ends."""
        if os.getpid() != self._pid:
            self._forget_parents()
            return
        with self._lock:
            self._open.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None
