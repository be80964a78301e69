"""One shard converted: its JPEGs restart-marked, every other member, name, order and tar header field kept.

``convert_shard`` reads a tar/tgz shard (any tool's) member by member through shardpipe's io
layer and writes the new shard so that it appears complete or not at all: locally under a
temporary name (``NAME.restart-tmp``) renamed when complete, on S3/GCS published when its
upload completes. A damaged input (cut short, a bad header, a gzip CRC that does not match)
raises ``CorruptShardError`` naming it, rather than giving a shorter shard that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlsplit

from shardpipe.errors import CorruptShardError
from shardpipe.format.tar.writer import HashingWriter, gzip_writer
from shardpipe.image.restart import DEFAULT_PER_ROW, add_restart_intervals, restart_layout
from shardpipe.io.files import atomic_write, is_local, local_path, open_shard
from shardpipe.io.remote import ReadOptions

_JPEG_EXTS = (".jpg", ".jpeg")
TEMP = ".restart-tmp"  #: the suffix of a local shard being written
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a write refused: disk full, quota, file size limit


def _safe_name(name: str, shard: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts:
        raise CorruptShardError(f"{shard}: member {name!r} escapes the shard; refusing to copy it")


class _CheckedInfo(tarfile.TarInfo):
    """tarfile's reader takes a stream cut at a member boundary, or a damaged header, for the end
    of the archive (the members after it would be left out quietly): these raise instead."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        at = tarfile_.fileobj.tell()  # type: ignore[union-attr]
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            end = tarfile_.fileobj.tell()  # type: ignore[union-attr]
            raise tarfile.ReadError(f"it ends at byte {end} without the end-of-archive marker") from None
        except tarfile.InvalidHeaderError as e:
            raise tarfile.ReadError(f"bad tar header at byte {at}: {e}") from None


class _CountingReader(io.RawIOBase):
    """A read-only view of a stream that counts the bytes read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        b[: len(data)] = data
        self.count += len(data)
        return len(data)


def _tar_input(raw: _CountingReader) -> tuple[IO[bytes], str]:
    """The stream that tarfile reads ``raw`` through, and its mode: gzip is inflated by
    ``GzipFile``, which checks each member's CRC and length (tarfile's own inflater does not)."""
    buffered = io.BufferedReader(raw, 1 << 20)
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb"), "r|"
    return buffered, "r|*"


def _drain(stream: IO[bytes]) -> None:
    """Read to the end: a tar's trailing padding, a gzip stream's trailer (checked on the way)."""
    while stream.read(1 << 20):
        pass


@contextlib.contextmanager
def _output(dst: str, storage_options: dict[str, Any] | None) -> Iterator[IO[bytes]]:
    """``dst`` opened for writing; it appears complete when the block ends, or not at all."""
    if not is_local(dst):
        with atomic_write(dst, storage_options=storage_options) as f:
            yield f
        return
    path = local_path(dst)
    tmp = path + TEMP
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # or a crash could keep the name and lose the bytes: a rerun would skip it
        os.replace(tmp, path)
    except OSError as e:
        remove(tmp)
        if e.errno in _NO_ROOM and e.filename is None:  # say where: the disk is full, not a shard bad
            raise OSError(e.errno, e.strerror, path) from e
        raise
    except BaseException:
        remove(tmp)
        raise


def convert_shard(
    src: str,
    dst: str,
    per_row: int = DEFAULT_PER_ROW,
    *,
    storage_options: dict[str, Any] | None = None,
    output_storage_options: dict[str, Any] | None = None,
    read_options: ReadOptions | None = None,
) -> tuple[int, int, int, int, str]:
    """Write ``dst`` (atomically) from ``src`` with restart-marked JPEGs; either may be a URL
    (``storage_options`` for ``src``, ``output_storage_options`` for ``dst``; a remote ``src`` is
    read under ``read_options``).

    A ``.gz``/``.tgz`` output is gzipped as the shard writer does it (no timestamp or file
    name in the header), so converting the same input twice gives the same bytes.
    Returns ``(jpegs, marked, bytes of src, bytes of dst, sha256 of dst)``.
    """
    jpegs = marked = 0
    gz = urlsplit(src).path.endswith((".gz", ".tgz"))
    try:
        raw_in = open_shard(src, storage_options=storage_options, read_options=read_options)
        with raw_in as raw, _output(dst, output_storage_options) as out:
            counted, hashed = _CountingReader(raw), HashingWriter(out)
            stream, mode = _tar_input(counted)
            with (
                tarfile.open(fileobj=stream, mode=mode, tarinfo=_CheckedInfo) as tin,
                gzip_writer(hashed) if gz else contextlib.nullcontext(hashed) as sink,  # type: ignore[arg-type]
                tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tout,
            ):
                for info in tin:
                    _safe_name(info.name, src)
                    if not info.isfile():
                        tout.addfile(info)
                        continue
                    f = tin.extractfile(info)
                    data = f.read() if f is not None else b""
                    if info.name.lower().endswith(_JPEG_EXTS):
                        jpegs += 1
                        new = add_restart_intervals(data, per_row)
                        if new is not data or restart_layout(data) is not None:
                            marked += 1
                        data = new
                    info.size = len(data)
                    if "size" in info.pax_headers:  # it has priority over the header's field
                        info.pax_headers["size"] = str(len(data))
                    tout.addfile(info, io.BytesIO(data))
            _drain(stream)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise CorruptShardError(f"{src}: not a readable tar shard ({e})") from e
    return jpegs, marked, counted.count, hashed.size, hashed.sha.hexdigest()


def remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
