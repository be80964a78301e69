"""Member bytes left in a local shard file until a later stage needs them.

A shuffle buffer holds thousands of samples. Read into memory as they arrive, each worker's
first window faults in and zeroes ~100 MB of fresh pages (1,000 photos of ~110 KB), which
stays resident while the window drains. A plain local tar can hand out ``(file, offset,
size)`` records instead and read the bytes when the shuffle emits the sample: one copy
from the page cache into memory the allocator has just freed. ``Untar(defer_from=...)``
makes the records; ``Shuffle`` reads them (``materialize``); nothing past the shuffle sees one.
"""

from __future__ import annotations

import io
import os
import stat
from typing import Any

from shardpipe.errors import ShardReadError, TruncatedShardError

#: members this large and larger are deferred (images; labels and small JSON or text are read as usual)
DEFER_FROM = 1024
#: at most this many shard files held open by records still in a buffer (each record keeps
#: its file open); past it, members are read into memory as usual
MAX_OPEN_FILES = 64


class SharedFile:
    """A read-only descriptor shared by the records of one shard; closed with the last of them."""

    live = 0  # open instances, across the process

    def __init__(self, fd: int, url: str):
        self.fd, self.url = fd, url
        SharedFile.live += 1

    def __del__(self) -> None:
        SharedFile.live -= 1
        try:
            os.close(self.fd)
        except Exception:  # noqa: BLE001 - closed already, or interpreter shutdown
            pass


class DeferredBytes:
    """``size`` bytes at ``offset`` of a shared shard file, read by :meth:`read`."""

    __slots__ = ("file", "offset", "size")

    def __init__(self, file: SharedFile, offset: int, size: int):
        self.file, self.offset, self.size = file, offset, size

    def read(self) -> bytes:
        try:
            data = os.pread(self.file.fd, self.size, self.offset)
        except OSError as e:
            raise ShardReadError(f"cannot read shard {self.file.url} at byte {self.offset}: {e}") from e
        if len(data) != self.size:
            raise TruncatedShardError(
                f"shard {self.file.url} changed while it was read: {self.size} bytes at byte {self.offset} "
                f"are now {len(data)} (the file was truncated or replaced)"
            )
        return data

    def __repr__(self) -> str:
        return f"DeferredBytes({self.file.url!r}, offset={self.offset}, size={self.size})"


def unbuffered_local(stream: Any, url: str) -> tuple[io.FileIO, SharedFile] | None:
    """For a buffered reader over a regular local file, with nothing read yet: its raw file
    (reads of member data become seeks; no read-ahead copies bytes that are skipped) and a
    shared descriptor for records. ``None`` for anything else, and past ``MAX_OPEN_FILES``."""
    if not hasattr(os, "pread") or type(stream) is not io.BufferedReader or not isinstance(stream.raw, io.FileIO):
        return None  # (no os.pread on Windows)
    if SharedFile.live >= MAX_OPEN_FILES:
        return None
    try:
        fd = stream.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if not regular or os.pread(fd, 2, 0) == b"\x1f\x8b":  # gzip: its offsets are not the file's
            return None
        pos = stream.tell()
        dup = os.dup(fd)
    except (OSError, ValueError):
        return None
    raw = stream.detach()
    raw.seek(pos)
    return raw, SharedFile(dup, url)


def materialize(sample: dict[str, Any]) -> dict[str, Any]:
    """``sample`` with every ``DeferredBytes`` value read (the same dict when it holds none)."""
    for value in sample.values():
        if type(value) is DeferredBytes:
            return {k: v.read() if type(v) is DeferredBytes else v for k, v in sample.items()}
    return sample
