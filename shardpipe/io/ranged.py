"""Read byte ranges of shards: ``pread`` on local files, one ranged GET remotely, or the cache.

Random access (``IndexedDataset``, the block shuffle) reads one sample at a time. A
local shard is opened once per process and read with ``os.pread`` (no seek, thread
safe); a remote one is copied into the shard cache when ``cache_dir`` is set, else
each read is one ranged request (retried on transient errors). The first use of a
shard checks its size against the index, so a changed shard is reported, not misread.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from typing import Any

from shardpipe.errors import CorruptShardError, ShardNotFoundError, ShardReadError, TruncatedShardError
from shardpipe.io.files import is_local, local_path, open_shard
from shardpipe.io.remote import ReadOptions, call_with_retries, object_info


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

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_open", "_lock", "_pid")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init()

    def read(self, url: str, start: int, end: int, size: int | None = None, sha256: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``url``; ``size`` is what the index recorded for the shard.

        ``TruncatedShardError`` when the shard ends before ``end``.
        """
        kind, handle = self._handle(url, size, sha256)
        if kind == "fd":
            data = os.pread(handle, end - start, start)
        else:
            fs, path = handle
            data = call_with_retries(
                lambda: fs.cat_file(path, start=start, end=end), f"read {url} [{start}, {end})", self.read_options
            )
        if len(data) < end - start:
            raise TruncatedShardError(
                f"truncated shard {url}: asked for bytes {start}-{end - 1}, it ends at byte {start + len(data)}"
            )
        return data

    def advise(self, url: str, start: int, end: int, size: int | None = None, sha256: str | None = None) -> None:
        """Ask the kernel to start reading ``[start, end)`` of a local or cached shard (no-op remotely).

        The block shuffle calls it a few samples ahead, so random reads from a cold disk
        overlap instead of waiting one by one.
        """
        kind, handle = self._handle(url, size, sha256)
        if kind == "fd" and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle, start, end - start, os.POSIX_FADV_WILLNEED)

    def _handle(self, url: str, size: int | None, sha256: str | None) -> tuple[str, Any]:
        if os.getpid() != self._pid:  # a forked worker: the parent's handles are not ours
            self._init()
        with self._lock:
            got = self._open.get(url)
            if got is not None:
                self._open.move_to_end(url)
                return got
        got = self._connect(url, size, sha256)
        with self._lock:
            self._open[url] = got
            while len(self._open) > self.max_open:
                _, (kind, old) = self._open.popitem(last=False)
                if kind == "fd":
                    os.close(old)
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
            except OSError as e:
                raise ShardReadError(f"cannot read shard {url}: {e}") from e
            actual = os.fstat(fd).st_size
            if size is not None and actual != size:
                os.close(fd)
                raise CorruptShardError(
                    f"shard {url} is {actual} bytes but was {size} when indexed: it changed; "
                    "rebuild the index with `shardpipe index`"
                )
            return "fd", fd
        return self._remote(url, size)

    def _remote(self, url: str, size: int | None) -> tuple[str, Any]:
        import fsspec.core

        fs, path = fsspec.core.url_to_fs(url, **(self.storage_options or {}))
        actual = object_info(fs, path, url, self.read_options)["size"]
        if size is not None and actual != size:
            raise CorruptShardError(
                f"shard {url} is {actual} bytes but was {size} when indexed: it changed; "
                "rebuild the index with `shardpipe index`"
            )
        return "fs", (fs, path)

    def close(self) -> None:
        """Close the open local files (remote handles hold nothing)."""
        if os.getpid() != self._pid:
            self._init()
            return
        with self._lock:
            for kind, handle in self._open.values():
                if kind == "fd":
                    os.close(handle)
            self._open.clear()
