"""A local shard cache with a size limit, shared safely by processes on one machine.

Each remote shard is downloaded once into ``cache_dir`` under a temporary name, checked
(size, and sha256 when the manifest gives one) and renamed into place; a sidecar
``.meta`` file records its size, sha256 and mtime, and its own mtime marks the last use
(for LRU eviction). A per-shard ``flock`` makes DataLoader workers and ranks that want
the same shard wait for one download instead of starting their own. Before a download
the cache makes room: least recently used shards go first, and shards another process
holds locked are left alone. Leftover ``.part`` files from crashed processes are
removed when their lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import IO

from shardpipe.errors import CorruptShardError

log = logging.getLogger("shardpipe")

LOCKS = ".locks"
COPY_CHUNK = 8 << 20


@dataclass
class CacheStats:
    """What this process's cache object did (each process counts its own)."""

    hits: int = 0
    downloads: int = 0
    evictions: int = 0
    refetched_corrupt: int = 0
    bypassed: int = 0


class ShardCache:
    """Shards cached under ``cache_dir``, at most ``cache_size`` bytes (None: no limit).

    ``verify_hits``: hash every cached file again on each use (slow, catches silent
    bit rot); by default a hit is trusted when its size and mtime match what was
    recorded when it was verified.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], cache_size: int | None = None, *,
        verify_hits: bool = False,
    ):  # fmt: skip
        if cache_size is not None and cache_size <= 0:
            raise ValueError(f"cache_size must be positive, not {cache_size}")
        self.dir = Path(cache_dir)
        self.size_limit = cache_size
        self.verify_hits = verify_hits
        self.stats = CacheStats()
        (self.dir / LOCKS).mkdir(parents=True, exist_ok=True)

    # -- naming ------------------------------------------------------------------------
    def path_for(self, url: str) -> Path:
        """The cache file of ``url``: a hash of the URL keeps names unique, the base name readable."""
        digest = hashlib.sha1(url.encode()).hexdigest()[:16]
        base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-80:]
        return self.dir / f"{digest}-{base}"

    def _lock_path(self, data: Path) -> Path:
        return self.dir / LOCKS / (data.name + ".lock")

    @staticmethod
    def _meta_path(data: Path) -> Path:
        return data.with_name(data.name + ".meta")

    # -- the one public operation ----------------------------------------------------
    def open(
        self,
        url: str,
        download: Callable[[], IO[bytes]],
        *,
        expected_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> IO[bytes] | None:
        """Open the cached copy of ``url``, downloading it first if needed.

        ``download()`` opens the remote stream; its ``size`` attribute is its length.
        Returns None when the shard cannot fit in the cache (the caller streams it
        instead). Raises :class:`CorruptShardError` when a fresh download does not match
        the expected size or sha256.
        """
        data = self.path_for(url)
        (self.dir / LOCKS).mkdir(parents=True, exist_ok=True)  # (again: it may have been cleared)
        with self._locked(self._lock_path(data)):
            f = self._open_hit(data, expected_size, expected_sha256)
            if f is not None:
                self.stats.hits += 1
                return f
            with download() as src:
                total = int(src.size)  # type: ignore[attr-defined]
                self._remove_stale_parts(data)
                if self.size_limit is not None and total > self.size_limit:
                    self.stats.bypassed += 1
                    log.warning(
                        "%s (%d bytes) is larger than cache_size=%d: streaming it uncached",
                        url, total, self.size_limit,
                    )  # fmt: skip
                    return None
                tmp = data.with_name(f"{data.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.part")
                if not self._reserve(tmp, total, keep=data):
                    self.stats.bypassed += 1
                    log.warning("cache %s is full of shards in use: streaming %s", self.dir, url)
                    return None
                try:
                    digest = _copy(src, tmp, total, url)
                    _check(url, total, digest, expected_size, expected_sha256)
                    os.replace(tmp, data)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(tmp)
                    raise
            st = data.stat()
            meta = {"url": url, "size": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns}
            _write_json(self._meta_path(data), meta)
            _touch(self._meta_path(data))
            self.stats.downloads += 1
            return open(data, "rb", buffering=1 << 20)

    # -- hits ------------------------------------------------------------------------
    def _open_hit(self, data: Path, expected_size: int | None, expected_sha256: str | None) -> IO[bytes] | None:
        meta_path = self._meta_path(data)
        try:
            meta = json.loads(meta_path.read_text())
            st = data.stat()
        except (OSError, ValueError):
            self._drop(data)  # no cached copy, or one without a valid record
            return None
        ok = (
            st.st_size == meta.get("size")
            and st.st_mtime_ns == meta.get("mtime_ns")
            and (expected_size is None or st.st_size == expected_size)
            and (expected_sha256 is None or meta.get("sha256") == expected_sha256.lower())
        )
        if ok and self.verify_hits:
            ok = _sha256(data) == meta.get("sha256")
        if not ok:
            log.warning("cached shard %s changed or does not match its manifest: fetching again", data)
            self.stats.refetched_corrupt += 1
            self._drop(data)
            return None
        _touch(meta_path)
        return open(data, "rb", buffering=1 << 20)

    def _remove_stale_parts(self, data: Path) -> None:
        """Remove .part files of ``data`` left by crashed processes (we hold its lock)."""
        for p in data.parent.glob(glob_escape(data.name) + ".*.part"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)

    def _drop(self, data: Path) -> None:
        for p in (data, self._meta_path(data)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)

    # -- space -------------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes used by cached shards and downloads in progress."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> Iterator[tuple[Path, int, int]]:
        """(data or .part path, bytes, last use) for everything in the cache directory."""
        with os.scandir(self.dir) as it:
            for e in it:
                if not e.is_file() or e.name.endswith((".meta", ".tmp")):
                    continue
                try:
                    size = e.stat().st_size
                except FileNotFoundError:
                    continue  # removed since the listing (another reader evicted it, or its download failed)
                try:
                    # a download in progress (or a crashed one's leftover) counts as never used
                    used = 0 if e.name.endswith(".part") else os.stat(self._meta_path(Path(e.path))).st_mtime_ns
                except FileNotFoundError:
                    used = 0  # its meta is gone (being evicted, or not written yet): first to go
                yield Path(e.path), size, used

    def _reserve(self, tmp: Path, total: int, keep: Path) -> bool:
        """Evict LRU shards until ``total`` more bytes fit, then create ``tmp`` at that size.

        Runs under a cache-wide lock so that concurrent reservations see each other's
        pre-sized ``.part`` files. False when the shards in use leave too little room.
        """
        with self._locked(self.dir / LOCKS / "_space.lock"):
            if self.size_limit is not None:
                entries = sorted(self._entries(), key=lambda e: (e[2], e[0].name))
                used = sum(size for _, size, _ in entries)
                for path, size, _ in entries:
                    if used + total <= self.size_limit:
                        break
                    if path != keep and self._evict(path):
                        used -= size
                if used + total > self.size_limit:
                    return False
            with open(tmp, "wb") as f:
                f.truncate(total)  # reserves the space in the accounting above
        return True

    def _evict(self, path: Path) -> bool:
        """Remove one shard (or a stale .part) unless another process holds its lock."""
        data = path
        if path.name.endswith(".part"):  # name.<pid>.<rand>.part
            data = path.with_name(path.name.rsplit(".", 3)[0])
        lock = self._lock_path(data)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # being downloaded or checked right now
            if path == data:
                self._drop(data)
                self.stats.evictions += 1
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            return True
        finally:
            os.close(fd)

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _copy(src: IO[bytes], tmp: Path, total: int, url: str) -> str:
    """Copy ``total`` bytes from ``src`` into the pre-sized ``tmp``; return their sha256."""
    h = hashlib.sha256()
    written = 0
    with open(tmp, "r+b") as out:
        while chunk := src.read(COPY_CHUNK):
            h.update(chunk)
            out.write(chunk)
            written += len(chunk)
        if written != total:
            raise CorruptShardError(f"{url}: downloaded {written} bytes, expected {total}")
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def _check(url: str, size: int, digest: str, expected_size: int | None, expected_sha256: str | None) -> None:
    if expected_size is not None and size != expected_size:
        raise CorruptShardError(f"{url}: {size} bytes, but the manifest says {expected_size}")
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise CorruptShardError(f"{url}: sha256 {digest} does not match the manifest's {expected_sha256}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _touch(meta: Path) -> None:
    """Mark the last use of a cached shard (for LRU) with an explicit, full-precision time.

    A plain ``utime`` takes the kernel's coarse file clock: shards used a few ms apart
    would tie.
    """
    now = time.time_ns()
    os.utime(meta, ns=(now, now))


def _write_json(path: Path, obj: dict[str, object]) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
