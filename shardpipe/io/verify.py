"""Check a shard's bytes against its manifest entry (size, sha256) while it is streamed.

The bytes are hashed as the reader consumes them, so verification costs one sha256 pass
and no second read; ``finish()`` reads what the reader left (the padding after the tar's
end-of-archive blocks, or the samples after a consumer's range) and compares.
"""

from __future__ import annotations

import hashlib
from typing import IO

from shardpipe.errors import CorruptShardError, ShardpipeError

_CHUNK = 1 << 20


class HashingReader:
    """A read-only stream over ``raw`` that hashes (sha256) and counts every byte read through it.

    It does not seek (the hash needs every byte), so a tar reader over it reads the
    members it skips instead of seeking past them. ``drain_on_close``: ``close()`` first
    reads what is left (the padding after a tar's end-of-archive blocks belongs to the
    file too); a read error there is kept as ``drain_error`` (the consumer may not have
    seen it: it can come after the archive's last member). Closing twice is a no-op.
    """

    def __init__(self, raw: IO[bytes], *, drain_on_close: bool = False):
        self.raw = raw
        self.read_bytes = 0
        self.drain_on_close = drain_on_close
        self.drain_error: Exception | None = None
        self.closed = False
        self.content_type = getattr(raw, "content_type", None)  # the server's, for a tar reader's errors
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self._hash.update(data)
        self.read_bytes += len(data)
        return data

    def seekable(self) -> bool:
        return False

    def drain(self, limit: int | None = None) -> None:
        """Read to the end, or until more than ``limit`` bytes were read in all."""
        while self.read(_CHUNK):
            if limit is not None and self.read_bytes > limit:
                break

    def hexdigest(self) -> str:
        """The sha256 of the bytes read so far."""
        return self._hash.hexdigest()

    def close(self) -> None:
        if self.closed:
            return  # (a second drain would read from the closed stream)
        self.closed = True
        try:
            if self.drain_on_close:
                self.drain()
        except (OSError, ShardpipeError) as e:  # a remote stream's errors are ShardpipeErrors
            self.drain_error = e
        finally:
            self.raw.close()


class VerifyingReader(HashingReader):
    """A :class:`HashingReader` that checks the bytes against a manifest entry's size and sha256."""

    def __init__(self, raw: IO[bytes], url: str, size: int | None, sha256: str | None):
        super().__init__(raw)
        self.url = url
        self.size = size
        self.sha256 = sha256.lower() if sha256 else None

    def finish(self) -> None:
        """Read to the end, then raise :class:`CorruptShardError` if size or sha256 differ from the manifest."""
        self.drain(limit=self.size)  # past the expected size: no need to read the rest
        if self.size is not None and self.read_bytes != self.size:
            more = "at least " if self.read_bytes > self.size else ""
            raise CorruptShardError(
                f"shard {self.url} holds {more}{self.read_bytes} bytes but its manifest entry says {self.size}"
            )
        digest = self.hexdigest()
        if self.sha256 is not None and digest != self.sha256:
            raise CorruptShardError(f"shard {self.url} has sha256 {digest} but its manifest entry says {self.sha256}")
