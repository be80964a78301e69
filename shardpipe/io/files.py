"""The one entry point for bytes: open shards for reading, write files atomically.

Local paths are opened directly (fast path). Remote URLs (``s3://``, ``gs://``,
``http(s)://`` and any other fsspec protocol) are streamed by
:class:`shardpipe.io.remote.ResumableReader`, which resumes broken transfers from the
byte offset, optionally through the local shard cache (:mod:`shardpipe.io.cache`).
``pipe:`` URLs run a shell command and are refused unless the caller opts in.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import IO, Any, cast

from shardpipe.errors import CorruptShardError, ShardNotFoundError, ShardReadError, TruncatedShardError
from shardpipe.io.cache import ShardCache
from shardpipe.io.remote import ReadOptions, open_remote

READ_BUFFER = 1 << 20  # large sequential reads: shards are streamed, not seeked

_INHERITED_FILESYSTEMS: list[Any] = []


def _keep_inherited_filesystems() -> None:
    """In a forked child (a DataLoader worker), keep the parent's fsspec instances alive.

    fsspec drops its instance cache in a new process; the dropped async filesystems then
    close their connections from the child, and that unregisters the sockets from the
    event-loop poller the child shares with its parent, so the parent's next request on
    those connections waits forever. Holding the instances (workers end with os._exit,
    which runs no finalizers) leaves the parent's connections alone.
    """
    import sys

    spec = sys.modules.get("fsspec.spec")
    if spec is None:
        return
    classes = [spec.AbstractFileSystem]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        cache = cls.__dict__.get("_cache")
        if cache:
            _INHERITED_FILESYSTEMS.extend(cache.values())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_keep_inherited_filesystems)

#: protocols whose objects appear only when an upload completes (discard aborts it)
PUBLISH_ON_CLOSE = {"s3", "s3a", "gs", "gcs"}


def is_local(url: str) -> bool:
    """True for plain paths and file:// URLs."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def join_url(base_dir: str, name: str) -> str:
    """Resolve ``name`` relative to the directory URL ``base_dir`` (absolute names win)."""
    if "://" in name or os.path.isabs(name) or not base_dir:
        return name
    if is_local(base_dir):
        return os.path.join(local_path(base_dir), name)
    return posixpath.join(base_dir, name)


def dirname_url(url: str) -> str:
    return os.path.dirname(local_path(url)) if is_local(url) else posixpath.dirname(url)


_caches: dict[tuple[str, int | None, int], ShardCache] = {}
_caches_lock = threading.Lock()


def same_file(a: str, b: str) -> bool:
    """Whether two URLs name one file: local paths through symlinks and hard links too."""
    if not (is_local(a) and is_local(b)):
        return a == b
    pa, pb = local_path(a), local_path(b)
    try:
        return os.path.samefile(pa, pb)
    except OSError:  # one does not exist (yet): compare where the paths lead
        return os.path.realpath(pa) == os.path.realpath(pb)


def get_cache(cache_dir: str | os.PathLike[str], cache_size: int | None = None) -> ShardCache:
    """This process's :class:`ShardCache` for ``cache_dir`` (one object, so stats add up)."""
    key = (os.path.abspath(cache_dir), cache_size, os.getpid())
    with _caches_lock:
        if key not in _caches:
            _caches[key] = ShardCache(cache_dir, cache_size)
        return _caches[key]


def open_shard(
    url: str,
    offset: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
    allow_pipe: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_size: int | None = None,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    read_options: ReadOptions | None = None,
) -> IO[bytes]:
    """Open ``url`` for streaming reads, positioned at byte ``offset``.

    Remote streams retry and resume on broken connections (``read_options``) and raise
    :class:`TruncatedShardError` naming the URL and offset when retries run out. With
    ``cache_dir``, remote shards are downloaded once into a local cache of at most
    ``cache_size`` bytes and checked against ``expected_size``/``expected_sha256``
    (from the manifest) when given; a local or remote shard whose size differs from
    ``expected_size`` is a :class:`CorruptShardError`.
    """
    if url.startswith("pipe:"):
        if allow_pipe is not True:  # True only: a truthy "false" from a config must not run a shell
            raise ValueError(f"refusing pipe: URL {url!r}: it runs a shell command; pass allow_pipe=True to opt in")
        return cast(IO[bytes], PipeReader(url[len("pipe:") :], offset))
    if is_local(url):
        path = local_path(url)
        try:
            f = open(path, "rb", buffering=READ_BUFFER)
        except FileNotFoundError as e:
            raise ShardNotFoundError(f"shard not found: {url}") from e
        except OSError as e:  # a directory, no permission, an I/O error
            raise ShardReadError(f"cannot read shard {url}: {e}") from e
        size = os.fstat(f.fileno()).st_size
        if expected_size is not None and size != expected_size:
            f.close()
            raise CorruptShardError(f"shard {url} is {size} bytes but its manifest entry says {expected_size}")
        if offset:
            f.seek(offset)
        return f

    def download() -> IO[bytes]:
        stream = open_remote(url, 0, storage_options=storage_options, options=read_options, expected_size=expected_size)
        return cast(IO[bytes], stream)

    if cache_dir is not None:
        cached = get_cache(cache_dir, cache_size).open(
            url, download, expected_size=expected_size, expected_sha256=expected_sha256
        )
        if cached is not None:
            if offset:
                cached.seek(offset)
            return cached
    stream = open_remote(
        url, offset, storage_options=storage_options, options=read_options, expected_size=expected_size
    )
    return cast(IO[bytes], stream)


def read_bytes(
    url: str, *, storage_options: dict[str, Any] | None = None, read_options: ReadOptions | None = None
) -> bytes:
    """Read a whole small file (a manifest, an index), remotely under ``read_options`` (the dataset's, so its
    deadline and retries hold for these reads too)."""
    with open_shard(url, storage_options=storage_options, read_options=read_options) as f:
        return f.read()


@contextlib.contextmanager
def atomic_write(url: str, *, storage_options: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """Write to ``url`` so that it appears complete or not at all.

    Local files and most fsspec stores: write a temporary name beside ``url`` and
    rename it on success. S3 and GCS: an object appears only when its upload
    completes, so the upload is aborted (``discard``) on an exception instead. A
    crash or exception leaves nothing under the final name.
    """
    if not is_local(url):
        import fsspec.core

        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        if protocols & PUBLISH_ON_CLOSE:
            with _publish_on_close(fs, path) as f:
                yield f
        else:
            with _write_then_move(fs, path) as f:
                yield f
        return
    path = local_path(url)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def _publish_on_close(fs: Any, path: str) -> Iterator[IO[bytes]]:
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        try:
            f.discard()  # abort a multipart/resumable upload; small files were never sent
        finally:
            f.closed = True  # or the file's __del__ would close() and upload the part written
        raise
    f.close()


@contextlib.contextmanager
def _write_then_move(fs: Any, path: str) -> Iterator[IO[bytes]]:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(tmp)
        raise


class PipeReader(io.BufferedIOBase):
    """The stdout of a shell command as a stream (``pipe:`` URLs, opt-in only).

    A command that exits with a non-zero status raises :class:`TruncatedShardError`
    at the end of its output, since the output is then likely incomplete.
    """

    def __init__(self, command: str, offset: int = 0):
        super().__init__()
        self.command = command
        self.name = f"pipe:{command}"
        self._pos = 0
        self._proc = subprocess.Popen(
            command, shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            bufsize=READ_BUFFER,
        )  # fmt: skip
        while self._pos < offset:  # a pipe cannot seek: read and drop
            if not self.read(min(READ_BUFFER, offset - self._pos)):
                break

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError(f"read from closed stream {self.name}")
        assert self._proc.stdout is not None
        data = self._proc.stdout.read(-1 if n is None else n)
        self._pos += len(data)
        if n is None or n < 0 or len(data) < n:  # end of output: did the command succeed?
            status = self._proc.wait()
            if status != 0:
                raise TruncatedShardError(
                    f"pipe command exited with status {status} after {self._pos} bytes: {self.command!r}"
                )
        return data

    def read1(self, n: int = -1) -> bytes:
        return self.read(n)

    def readinto(self, b: Any) -> int:
        data = self.read(len(memoryview(b)))
        memoryview(b).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            if self._proc.poll() is None:
                self._proc.kill()  # the consumer stopped early: don't wait for the command
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc.wait()
        super().close()
