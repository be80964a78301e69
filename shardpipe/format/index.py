"""The index sidecar: where every sample of every shard starts, in a compact binary file.

Beside ``manifest.json`` (named in its ``"index"`` field), little-endian, memory-mappable::

    header   64 bytes: magic b"SHPIDX01", uint64 shards, uint64 samples, 40 reserved bytes
    starts   uint64[shards + 1]    global number of each shard's first sample (cumulative counts)
    sizes    uint64[shards]        each shard's file size when indexed
    flags    uint64[shards]        bit 0: gzip-compressed (offsets are in the decompressed
                                   stream; no random access: sequential-only)
    offsets  uint64[samples + shards]  per shard, the byte offset where each sample's first
                                   header starts, then where its last sample ends
    keys     uint32[samples]       crc32 of each sample's key: a random read checks it

1.28 M samples take ~15 MB and load in well under a millisecond (``np.memmap``: pages are read on use).
A sample's bytes are ``offsets[base + j] .. offsets[base + j + 1]`` with ``base = starts[s] + s``.
"""

from __future__ import annotations

import bisect
import os
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardpipe.errors import CorruptShardError, ShardNotFoundError, ShardReadError
from shardpipe.io.access import AccessDeniedError
from shardpipe.io.files import atomic_write, is_local, local_path, read_bytes
from shardpipe.io.remote import ReadOptions, StoreUnreachableError

MAGIC = b"SHPIDX01"
HEADER = 64
GZIP = 1
BLOCK = 512  #: tar block: every sample starts on one, and every sample takes at least one
#: no shard size or offset in an index is this large (it would not fit the readers' int64 offsets)
MAX_OFFSET = 1 << 62


class DamagedIndexError(CorruptShardError, ValueError):
    """An index sidecar whose numbers no shard written as indexed can have."""


def index_name(manifest_name: str) -> str:
    """The sidecar's file name for a manifest: ``manifest.json`` -> ``manifest.index``."""
    base = manifest_name.rstrip("/").rsplit("/", 1)[-1]
    return (base[: -len(".json")] if base.endswith(".json") else base) + ".index"


def rebuild_hint(manifest: str | None, url: str | None = None, make: str = "rebuild it") -> str:
    """What rebuilds (``make="create one"``: creates) the index at ``url``: ``shardpipe index`` over its manifest (or the
    shards). A web server's files are read-only over http(s): it is made where they are written, then uploaded."""
    if (manifest or url or "").lower().startswith(("http://", "https://")):
        base = (manifest or "").rsplit("/", 1)[-1] or "manifest.json"
        return (
            f"{make} where the files are written, not over http(s), which is read-only: "
            f"`shardpipe index {base} -o {base}` in the folder the server publishes (or a local copy of it), "
            f"then upload the new {base} and {index_name(base)} beside the shards"
        )
    return f"{make} with `shardpipe index {manifest or 'SHARDS'} -o {manifest or 'MANIFEST'}`"


def key_crc(key: str) -> int:
    """The 32-bit checksum of a sample key stored in the index."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape"))


@dataclass
class ShardIndex:
    """One shard's entry: sample start offsets (plus the end), key checksums, file size, gzip flag."""

    offsets: list[int] = field(default_factory=list)  #: len = samples + 1 once ``end`` is set
    keys: list[int] = field(default_factory=list)
    size: int = 0
    compressed: bool = False

    @property
    def samples(self) -> int:
        return len(self.keys)

    def add(self, offset: int, key: str) -> None:
        """Record a sample that starts at ``offset`` (in the uncompressed tar stream)."""
        self.offsets.append(offset)
        self.keys.append(key_crc(key))

    def end(self, offset: int) -> None:
        """Record where the last sample ends (the end-of-archive marker)."""
        self.offsets.append(offset)


def encode_index(shards: Sequence[ShardIndex]) -> bytes:
    """The sidecar bytes for ``shards`` (in manifest order)."""
    for i, s in enumerate(shards):
        if len(s.offsets) != s.samples + 1:
            raise ValueError(f"shard {i} of the index has {s.samples} samples but {len(s.offsets)} offsets")
    counts = np.array([s.samples for s in shards], dtype="<u8")
    starts = np.concatenate([[0], np.cumsum(counts)]).astype("<u8")
    sizes = np.array([s.size for s in shards], dtype="<u8")
    flags = np.array([GZIP if s.compressed else 0 for s in shards], dtype="<u8")
    offsets = np.array([o for s in shards for o in s.offsets], dtype="<u8")
    keys = np.array([k for s in shards for k in s.keys], dtype="<u4")
    head = MAGIC + np.array([len(shards), int(counts.sum())], dtype="<u8").tobytes()
    head += bytes(HEADER - len(head))
    return b"".join(
        a.tobytes() if isinstance(a, np.ndarray) else a for a in (head, starts, sizes, flags, offsets, keys)
    )


def write_index(url: str, shards: Sequence[ShardIndex], storage_options: dict[str, Any] | None = None) -> str:
    """Write the sidecar atomically; returns ``url``."""
    with atomic_write(url, storage_options=storage_options) as f:
        f.write(encode_index(shards))
    return url


class SampleIndex:
    """A loaded index: map a global sample number to (shard, byte range, key checksum)."""

    def __init__(self, buffer: Any, url: str = "<index>"):
        self.url = url
        #: which file this is (``load``: size and mtime locally, length and crc32 of the bytes remotely,
        #: and a crc32 of the per-shard arrays): another process loading ``url`` compares, to read the
        #: index that was checked here
        self.identity: tuple[Any, ...] | None = None
        # a plain ndarray view of the memory map: indexing a np.memmap is several times slower
        raw = np.asarray(buffer) if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, dtype=np.uint8)
        if len(raw) < HEADER or bytes(raw[:8]) != MAGIC:
            raise DamagedIndexError(f"{url} is not a shardpipe index (bad magic)")
        n_shards, n_samples = (int(x) for x in raw[8:24].view("<u8"))
        need = HEADER + 8 * (n_shards + 1) + 8 * 2 * n_shards + 8 * (n_samples + n_shards) + 4 * n_samples
        if len(raw) != need:  # never trust counts from a file for more than this check
            raise DamagedIndexError(f"{url} is truncated or damaged: {len(raw)} bytes, its header implies {need}")
        pos = HEADER

        def take(n: int, dtype: str) -> np.ndarray:
            nonlocal pos
            width = np.dtype(dtype).itemsize
            arr = raw[pos : pos + n * width].view(dtype)
            pos += n * width
            return arr

        self.shards, self.samples = n_shards, n_samples
        self.starts = take(n_shards + 1, "<u8")
        self.sizes = take(n_shards, "<u8")
        self.flags = take(n_shards, "<u8")
        self.offsets = take(n_samples + n_shards, "<u8")
        self.keys = take(n_samples, "<u4")
        self._starts = self.starts.tolist()  # small (one per shard): bisect on a list is fastest
        if self._starts[-1] != n_samples or any(a > b for a, b in zip(self._starts, self._starts[1:])):
            raise DamagedIndexError(f"{url} is damaged: its per-shard sample counts do not add up to {n_samples}")
        self._check_offsets()

    def _check_offsets(self) -> None:
        """Refuse offsets that no shard written as indexed can have: past the shard's size (plain
        tar), off a tar block, or not increasing (each sample ends where the next one starts)."""
        url = self.url
        if self.shards and int(self.sizes.max()) >= MAX_OFFSET:
            raise DamagedIndexError(f"{url} is damaged: a shard size of {int(self.sizes.max())} bytes")
        if len(self.offsets) and int(self.offsets.max()) >= MAX_OFFSET:
            raise DamagedIndexError(f"{url} is damaged: a sample offset of {int(self.offsets.max())}")
        offsets = self.offsets.astype(np.int64)
        if np.any(offsets % BLOCK):
            raise DamagedIndexError(f"{url} is damaged: a sample offset is not on a {BLOCK}-byte tar block")
        for s in range(self.shards):
            lo, hi = self._starts[s] + s, self._starts[s + 1] + s + 1  # this shard's offsets and its end
            mine = offsets[lo:hi]
            if len(mine) > 1 and np.any(np.diff(mine) < BLOCK):
                raise DamagedIndexError(
                    f"{url} is damaged: the sample offsets of shard {s} do not increase (each sample starts "
                    "where the one before it ends)"
                )
            if not self.compressed(s) and len(mine) and int(mine[-1]) > int(self.sizes[s]):
                raise DamagedIndexError(
                    f"{url} is damaged: shard {s}'s samples end at byte {int(mine[-1])}, past its size "
                    f"{int(self.sizes[s])}"
                )

    @classmethod
    def load(
        cls,
        url: str,
        storage_options: dict[str, Any] | None = None,
        manifest: str | None = None,
        read_options: ReadOptions | None = None,
    ) -> SampleIndex:
        """Memory-map a local sidecar; read a remote one whole (under ``read_options``).

        A missing sidecar is a ``ShardNotFoundError``, an empty or damaged one a ``DamagedIndexError``
        (an unreadable one a ``ShardReadError``): each names the file and how to rebuild it from
        ``manifest`` (the manifest that names it, when known).
        """
        fix = rebuild_hint(manifest, url)
        try:
            if is_local(url):
                with open(local_path(url), "rb") as f:
                    st = os.fstat(f.fileno())  # the file mapped, even if it is replaced meanwhile
                    # np.memmap cannot map an empty file: say so below
                    buffer: Any = np.memmap(f, dtype=np.uint8, mode="r") if st.st_size else b""
                identity: tuple[Any, ...] = ("file", st.st_size, st.st_mtime_ns)  # the same on every host
            else:
                buffer = read_bytes(url, storage_options=storage_options, read_options=read_options)
                identity = ("bytes", len(buffer), zlib.crc32(buffer))
        except (FileNotFoundError, ShardNotFoundError) as e:
            raise ShardNotFoundError(f"index {url} does not exist ({fix})") from e
        except (AccessDeniedError, StoreUnreachableError):  # the store's problem (credentials, reach), not the index's
            raise
        except OSError as e:  # a folder, no permission, an I/O error
            raise ShardReadError(f"cannot read index {url}: {e} ({fix})") from e
        if not len(buffer):
            raise DamagedIndexError(f"index {url} is empty (0 bytes): {fix}")
        try:
            index = cls(buffer, url)
        except DamagedIndexError as e:
            raise DamagedIndexError(f"{e} ({fix})") from None
        layout = zlib.crc32(b"".join(a.tobytes() for a in (index.starts, index.sizes, index.flags)))
        index.identity = (*identity, layout)  # (the per-shard arrays: small, read anyway)
        return index

    def __len__(self) -> int:
        return self.samples

    def counts(self) -> np.ndarray:
        """Samples per shard."""
        return np.diff(self.starts.astype(np.int64))

    def compressed(self, shard: int) -> bool:
        return bool(int(self.flags[shard]) & GZIP)

    def locate(self, i: int) -> tuple[int, int, int, int]:
        """Sample ``i`` -> ``(shard, start byte, end byte, key crc)``."""
        if not 0 <= i < self.samples:
            raise IndexError(f"sample {i} out of range: the index holds {self.samples}")
        shard = bisect.bisect_right(self._starts, i) - 1
        first = self._starts[shard]
        at = first + shard + i - first
        start, end = self.offsets[at : at + 2].tolist()
        return shard, start, end, int(self.keys[i])

    def check_matches(self, counts: Sequence[int]) -> None:
        """ValueError unless the index lists the manifest's shards with the same sample counts."""
        mine = self.counts().tolist()
        if mine != [int(c) for c in counts]:
            raise DamagedIndexError(
                f"index {self.url} does not match its manifest: per-shard sample counts differ "
                "(rebuild it with `shardpipe index`)"
            )


def sample_from_bytes(
    data: bytes,
    url: str,
    expected_crc: int | None = None,
    length: int | None = None,
    skipped: Counter[str] | None = None,
) -> dict[str, Any]:
    """Parse one sample's members from its byte range; check that they are the sample the index meant.

    Raises ``CorruptShardError`` when the bytes are not a tar header, hold another
    sample, or the key's checksum differs: the index no longer matches the shard.
    With ``length`` (the sample's size in the index), ``data`` may hold up to one tar block
    more: what follows the sample, which must not be a member of the same sample (an end
    offset cut before a sample's last member would drop that member silently). ``skipped``
    gets the links and sparse files stepped over among the sample's members, by kind.
    """
    import io

    from shardpipe.errors import ShardpipeError
    from shardpipe.format.sample import split_name
    from shardpipe.format.tar.reader import TarStream

    end = len(data) if length is None else length
    tar = TarStream(io.BytesIO(data[:end]), url, compressed=False, whole=False)
    sample: dict[str, Any] = {}
    key: str | None = None
    try:
        while tar.offset < end:
            header = tar.next_header()
            if header is None:
                break
            parts = split_name(header[0])
            if parts is None:
                tar.skip_data()
                continue
            if key is None:
                key = parts[0]
                sample["__key__"] = key
            elif parts[0] != key:
                raise CorruptShardError(f"member {header[0]!r} of another sample inside {key!r}")
            sample[parts[1]] = tar.read_data()
    except ShardpipeError as e:
        raise CorruptShardError(
            f"the index does not match shard {url} (changed since indexed? rebuild with `shardpipe index`): {e}"
        ) from e
    if key is None or (expected_crc is not None and key_crc(key) != expected_crc):
        raise CorruptShardError(
            f"the index does not match shard {url}: the sample read is not the one indexed "
            "(changed since indexed? rebuild with `shardpipe index`)"
        )
    if tar.offset != end:
        raise CorruptShardError(f"the index does not match shard {url}: sample {key!r} ends inside a member")
    if skipped is not None:
        skipped.update(tar.skipped)
    follower = data[end : end + BLOCK]
    if len(follower) == BLOCK and any(follower):
        name = _member_name(follower)
        parts = split_name(name) if name is not None else None
        if parts is not None and parts[0] == key:
            raise CorruptShardError(
                f"the index does not match shard {url}: sample {key!r} goes on past its indexed end "
                f"(member {name!r}); rebuild the index with `shardpipe index`"
            )
    return sample


def _member_name(block: bytes) -> str | None:
    """The name in a ustar header block (prefix and name), or None when it is not one."""
    name = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
    full = (prefix + b"/" + name) if prefix else name
    try:
        return full.decode("utf-8", "surrogateescape")
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape decodes any bytes
        return None
