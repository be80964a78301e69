"""A streaming tar reader: (name, bytes) members from a byte stream, one at a time.

It never holds more than one member in memory, tracks the byte offset of every member
boundary (so a reader can resume there), transparently decompresses gzip, and tells a
truncated stream (``TruncatedShardError``) from a damaged one (``CorruptShardError``).
A stream must end with the tar end-of-archive block: a shard cut exactly at a member
boundary is reported as truncated, never read as a shorter shard. A gzip stream is read
to its end after the end-of-archive block, so that the trailer of every gzip member
(CRC32 and length) is checked: a mismatch is corrupt, a missing trailer truncated.

No size field from the file is trusted for an allocation: a member that declares more
than ``max_member_size`` bytes is refused before any of it is read, and data is read in
chunks, so a header declaring 64 GiB in front of a few bytes allocates a few bytes.
"""

from __future__ import annotations

import gzip
import re
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from typing import IO

from shardpipe.errors import CorruptShardError, NotTarError, TruncatedShardError
from shardpipe.format.sample import split_name

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6", b"g")  # links, devices, dirs, FIFOs, global pax
#: skipped members that may hold what a user meant as data: counted, so that index and verify say so
SKIPPED_KINDS = {b"1": "hard link", b"2": "symbolic link", b"S": "GNU sparse file"}
#: Default ``max_member_size``: 256 MiB. Ten times the largest common image members (a
#: 50-megapixel camera JPEG is ~25 MB, a 16-bit 24-megapixel TIFF ~150 MB), yet eight
#: DataLoader workers each holding one such member stay within a few GB.
MAX_MEMBER_SIZE = 256 << 20
#: pax and GNU long-name headers hold a few names and numbers: 1 MiB is plenty
MAX_META_SIZE = 1 << 20
#: bytes allowed after the end-of-archive block of a gzip stream (tar pads to 10 KiB records)
MAX_TAIL = 16 << 20
_MAX_ANY_SIZE = 1 << 48  # 256 TiB: no member of any kind, skipped or not, is larger
_CHUNK = 4 << 20  # the largest single read: allocations follow the bytes that arrive


class _TimedReader:
    """Wrap a stream, adding the seconds spent in ``read`` to ``self.seconds``."""

    def __init__(self, raw: IO[bytes], prefix: bytes = b""):
        self.raw = raw
        self.prefix = prefix
        self.seconds = 0.0

    def read(self, n: int = -1) -> bytes:
        t0 = time.perf_counter()
        if not self.prefix:
            data = self.raw.read(n)
        elif n < 0:
            data, self.prefix = self.prefix + self.raw.read(), b""
        else:
            head, self.prefix = self.prefix[:n], self.prefix[n:]
            data = head + self.raw.read(n - len(head)) if len(head) < n else head
        self.seconds += time.perf_counter() - t0
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        t0 = time.perf_counter()
        if self.prefix:  # only at the very start, before any seek
            offset -= len(self.prefix) if whence == 1 else 0
            self.prefix = b""
        pos = self.raw.seek(offset, whence)
        self.seconds += time.perf_counter() - t0
        return pos

    def close(self) -> None:
        self.raw.close()


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 (two's complement) for large values
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    digits = field.replace(b"\0", b" ").strip()
    return int(digits, 8) if digits else 0


def header_sum(block: bytes | bytearray) -> int:
    """The sum of a 512-byte header's bytes (a tar checksum, read and written), from two Adler-32 sums
    (~6x faster than ``sum``): each 256-byte half sums to at most 65,280, below Adler-32's modulus
    65,521, so its low half is exact."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _size_text(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)" if n < 1 << 30 else f"{n} bytes ({n / 2**30:.1f} GiB)"


def _cstr(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes) -> dict[str, str]:
    """Parse pax records ``"<length> <key>=<value>\\n"``; ValueError on malformed ones."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        end = pos + length
        if end <= space + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ValueError(f"malformed pax record at byte {pos}")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise ValueError(f"pax record without '=' at byte {pos}")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


class TarStream:
    """Iterate the regular-file members of one tar (or tar.gz) stream.

    ``offset`` is where ``stream`` starts within the (decompressed) archive; after each
    member, ``self.offset`` is the offset of the next header, a valid resume point.
    ``next_header`` + ``read_data``/``skip_data`` let a caller skip members it does not
    want without reading them (a seek, when the stream can seek).
    ``max_member_size``: members declaring more bytes are a ``CorruptShardError``
    (None: no limit; reads stay chunked, so memory still follows the real data).
    A stream read from the archive's first byte whose first block is no tar header (nor the
    start of one, cut short) is a ``NotTarError``; ``whole=False`` for a slice of an archive.
    ``skipped`` counts the links and sparse files stepped over (by ``SKIPPED_KINDS`` name):
    only regular files are members.
    """

    def __init__(
        self,
        stream: IO[bytes],
        url: str,
        offset: int = 0,
        compressed: bool | None = None,
        max_member_size: int | None = MAX_MEMBER_SIZE,
        whole: bool = True,
    ):
        if max_member_size is not None and max_member_size < 0:
            raise ValueError(f"max_member_size must be >= 0 or None, not {max_member_size}")
        self.url = url
        self.offset = offset
        self.max_member_size = max_member_size
        self.content_type = getattr(stream, "content_type", None)  # a remote shard's, as its server said
        self._whole = whole and offset == 0  # the first header read is the archive's first block
        self.skipped: Counter[str] = Counter()
        raw = _TimedReader(stream)
        if compressed is None:
            head = stream.read(2)
            raw.prefix = head
            compressed = head == b"\x1f\x8b"
        self.compressed = compressed
        self._timed = raw
        self._f: IO[bytes] | _TimedReader = (
            gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[arg-type,assignment]
        )
        self._seekable = not compressed and _seekable(stream)
        self._pending = 0  # data + padding bytes of the current member not yet consumed
        self._name = ""
        self._header_at = 0  # where the current member's header starts
        self._size = 0

    @property
    def read_seconds(self) -> float:
        """Seconds spent waiting for bytes (I/O and, for gzip, decompression)."""
        return self._timed.seconds

    def skip_to(self, offset: int) -> None:
        """Discard decompressed bytes up to ``offset`` (resume inside a gzip stream)."""
        while self.offset < offset:
            chunk = self._read(min(offset - self.offset, 1 << 20), "resume")
            if not chunk:
                raise TruncatedShardError(
                    f"truncated tar: shard {self.url} ends at byte {self.offset} before the resume point {offset}"
                )
            self.offset += len(chunk)

    def _read(self, n: int, what: str) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream), read in bounded chunks."""
        parts: list[bytes] = []
        got = 0
        try:
            while got < n:  # some streams (pipes, sockets) return short reads
                part = self._f.read(min(n - got, _CHUNK))
                if not part:
                    break
                parts.append(part)
                got += len(part)
        except EOFError as e:  # gzip stream ends before its end-of-stream marker
            raise TruncatedShardError(f"truncated gzip in shard {self.url} while reading {what}: {e}") from e
        except (zlib.error, gzip.BadGzipFile) as e:
            raise CorruptShardError(f"bad gzip data in shard {self.url} while reading {what}: {e}") from e
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_exact(self, n: int, what: str, at: int) -> bytes:
        """Exactly ``n`` bytes of the current member, starting at archive byte ``at``."""
        data = self._read(n, what)
        if len(data) < n:
            raise self._ends_inside(at + len(data))
        return data

    def _ends_inside(self, end: int) -> TruncatedShardError:
        """The error for a stream that ends at byte ``end``, inside the current member (or its padding)."""
        inside = "member" if end < self._header_at + BLOCK + self._size else "the padding of member"
        return TruncatedShardError(
            f"truncated tar: shard {self.url} ends inside {inside} {self._name!r} "
            f"(header at byte {self._header_at}) at byte {end}"
        )

    def _cut_while_skipping(self) -> TruncatedShardError | None:
        """After a seek over member data, whether the stream really ends inside that member.

        Seeking past the end of a file succeeds, so the short read comes at the next header's
        position: report the true end of the stream instead, as reading the data would.
        """
        try:
            end = self._timed.seek(0, 2)
        except (OSError, ValueError):
            return None
        data_end = self._header_at + BLOCK + self._size
        if end >= data_end + (-self._size) % BLOCK:
            return None
        return self._ends_inside(end)

    def next_header(self) -> tuple[str, int] | None:
        """Advance to the next regular member: ``(name, size)``, or None at the end of the archive.

        Call ``read_data`` or ``skip_data`` before the next call.
        """
        if self._pending:
            self.skip_data()
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            header_at = self.offset
            block = self._read(BLOCK, "a tar header")
            if self._whole and header_at == 0 and not self._looks_like_header(block):
                raise self._not_tar(block)
            if len(block) < BLOCK:
                cut = self._cut_while_skipping() if self._seekable and header_at > self._header_at else None
                if cut is not None:
                    raise cut
                raise TruncatedShardError(
                    f"truncated tar: shard {self.url} ends at byte {header_at + len(block)} "
                    "without the end-of-archive marker"
                )
            if block == _ZERO_BLOCK:
                if self.compressed:
                    self._finish_gzip()
                return None
            self._check_header(block, header_at)
            kind = block[156:157]
            name = long_name or pax.get("path") or self._header_name(block)
            try:
                size = int(pax["size"]) if "size" in pax else _octal(block[124:136])
            except ValueError as e:
                raise CorruptShardError(f"bad member size in shard {self.url} at byte {header_at}: {e}") from e
            self._check_size(name, kind, size, header_at)
            self.offset = header_at + BLOCK
            self._header_at = header_at
            self._name, self._size, self._pending = name, size, size + (-size) % BLOCK
            if kind in _REGULAR:
                return name, size
            if kind in (b"L", b"x"):  # GNU long name / pax header: applies to the next header
                data = self.read_data()
                try:
                    long_name, pax = (_cstr(data), {}) if kind == b"L" else (None, _parse_pax(data))
                except ValueError as e:
                    raise CorruptShardError(f"bad pax header in shard {self.url} at byte {header_at}: {e}") from e
                continue
            if kind in _SKIPPED or kind.isalpha():
                if kind in SKIPPED_KINDS:
                    self.skipped[SKIPPED_KINDS[kind]] += 1
                self.skip_data()
                long_name, pax = None, {}
                continue
            raise CorruptShardError(f"unknown tar member type {kind!r} in shard {self.url} at byte {header_at}")

    def _looks_like_header(self, block: bytes) -> bool:
        """Whether the archive's first block is a tar header, a damaged one, or the start of one cut
        short (a truncated tar): a valid checksum, the ustar magic, or a name and then a mode of
        octal digits where a header has them, or zeros. Other files (JSON, images, text) have none of these."""
        if len(block) == BLOCK and (block == _ZERO_BLOCK or _checksum_ok(block)):
            return True
        if block and not any(block):  # the start of an end-of-archive block: an empty tar, cut
            return True
        if len(block) >= 262 and block[257:262] == b"ustar":
            return True
        return len(block) >= 108 and block[0] != 0 and _OCTAL_FIELD.fullmatch(block[100:108]) is not None

    def _not_tar(self, block: bytes) -> NotTarError:
        """The error for a stream whose first block is no tar header: the file is some other kind."""
        where = "decompressed, " if self.compressed else ""
        if not block:
            return NotTarError(f"shard {self.url} is not a tar archive: it is empty ({where}0 bytes)")
        why = "a file of another kind caught by a glob?"
        kind = (self.content_type or "").split(";")[0].strip().lower()
        if kind.startswith("text/") or kind.endswith(("json", "xml")):  # a page or document, not an archive
            why = f"the server answered {kind}{': a login or error page?' if 'html' in kind else ''}"
        return NotTarError(
            f"shard {self.url} is not a tar archive: its first {len(block)} bytes ({where}starting "
            f"{block[:16]!r}) are not a tar header ({why})"
        )

    def _check_size(self, name: str, kind: bytes, size: int, at: int) -> None:
        """Refuse sizes no allocation should follow: negative, or above the limit."""
        if size < 0:
            raise CorruptShardError(f"member {name!r} of shard {self.url} at byte {at} declares a negative size {size}")
        if size > _MAX_ANY_SIZE:  # even a member that is skipped unread (a seek that large overflows)
            raise CorruptShardError(
                f"member {name!r} of shard {self.url} at byte {at} declares {size} bytes: more than any shard holds"
            )
        if kind in (b"L", b"x") and size > MAX_META_SIZE:
            raise CorruptShardError(
                f"{'pax' if kind == b'x' else 'GNU long-name'} header of shard {self.url} at byte {at} declares "
                f"{_size_text(size)}, above the {MAX_META_SIZE}-byte limit for such headers"
            )
        limit = self.max_member_size
        if kind in _REGULAR and limit is not None and size > limit:
            parts = split_name(name)
            key = parts[0] if parts is not None else None
            raise CorruptShardError(
                f"member {name!r} (key {key!r}) of shard {self.url} at byte {at} declares {_size_text(size)}, "
                f"above max_member_size={limit}: a damaged header, or pass a larger max_member_size"
            )

    def _finish_gzip(self) -> None:
        """Read the gzip stream to its end, so that every member's trailer (CRC32, length) is checked.

        Writers pad an archive to a record of a few KiB; more than ``MAX_TAIL`` bytes
        after the end-of-archive block is refused rather than inflated (a gzip bomb).
        """
        tail = 0
        while chunk := self._read(1 << 20, "the end of the gzip stream"):
            tail += len(chunk)
            if tail > MAX_TAIL:
                raise CorruptShardError(
                    f"shard {self.url} holds more than {MAX_TAIL} bytes after its end-of-archive block "
                    f"at byte {self.offset}: not a tar written by a tar tool"
                )

    def read_data(self) -> bytes:
        """The current member's bytes (and consume its padding)."""
        what = f"member {self._name!r}"
        data = self._read_exact(self._size, what, self.offset) if self._size else b""
        pad = self._pending - self._size
        if pad:
            self._read_exact(pad, f"the padding of {what}", self.offset + self._size)
        self.offset += self._pending
        self._pending = 0
        return data

    def skip_data(self) -> None:
        """Step over the current member's bytes: a seek when possible, else a read."""
        if self._seekable:
            try:
                self._f.seek(self._pending, 1)  # type: ignore[union-attr]
            except (OSError, ValueError) as e:  # a stream that refuses to seek past its end
                raise self._cut_while_skipping() or TruncatedShardError(
                    f"truncated tar: cannot step over member {self._name!r} of shard {self.url}: {e}"
                ) from e
            self.offset += self._pending
            self._pending = 0
            return
        done = 0
        while done < self._pending:
            what = f"member {self._name!r}"
            done += len(self._read_exact(min(self._pending - done, 1 << 20), what, self.offset + done))
        self.offset += self._pending
        self._pending = 0

    def next_member(self) -> tuple[str, bytes] | None:
        """The next regular member as ``(name, data)``, or ``None`` at the end of the archive."""
        header = self.next_header()
        return None if header is None else (header[0], self.read_data())

    def _header_name(self, block: bytes) -> str:
        name = _cstr(block[0:100])
        if block[257:262] == b"ustar":
            prefix = _cstr(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        return name

    def _check_header(self, block: bytes, at: int) -> None:
        if not _checksum_ok(block):
            raise CorruptShardError(f"not a tar header (bad checksum) in shard {self.url} at byte {at}")

    def close(self) -> None:
        self._timed.close()


def skipped_note(url: str, skipped: Mapping[str, int]) -> str:
    """The warning for a shard whose links or sparse files were skipped: how many of each kind."""
    kinds = [f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(skipped.items())]
    listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
    return f"shard {url}: skipped {listed}: only regular files are read as members of samples (streaming too)"


_OCTAL_FIELD = re.compile(rb"[ ]*[0-7]+[ \0]*")


def _checksum_ok(block: bytes) -> bool:
    """Whether a 512-byte block's stored checksum matches its bytes (the checksum field counts as spaces)."""
    try:
        stored = _octal(block[148:156])
    except ValueError:
        return False
    return stored == header_sum(block) - sum(block[148:156]) + 8 * 32


def _seekable(stream: IO[bytes]) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False
