"""Check a shard's bytes against its manifest entry (size, sha256) while it is streamed.

The bytes are hashed as the reader consumes them, so verification costs one sha256 pass
and no second read; ``finish()`` reads what the reader left (the padding after the tar's
end-of-archive blocks, or the samples after a consumer's range) and compares.
"""

from __future__ import annotations

import hashlib
from typing import IO

from shardpipe.errors import CorruptShardError

_CHUNK = 1 << 20


class VerifyingReader:
    """A read-only stream over ``raw`` that hashes and counts every byte read through it.

    It does not seek (the hash needs every byte), so a tar reader over it reads the
    members it skips instead of seeking past them.
    """

    def __init__(self, raw: IO[bytes], url: str, size: int | None, sha256: str | None):
        self.raw = raw
        self.url = url
        self.size = size
        self.sha256 = sha256.lower() if sha256 else None
        self.read_bytes = 0
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self._hash.update(data)
        self.read_bytes += len(data)
        return data

    def finish(self) -> None:
        """Read to the end, then raise :class:`CorruptShardError` if size or sha256 differ from the manifest."""
        while self.read(_CHUNK):
            if self.size is not None and self.read_bytes > self.size:
                break  # already too long: no need to read the rest
        if self.size is not None and self.read_bytes != self.size:
            more = "at least " if self.read_bytes > self.size else ""
            raise CorruptShardError(
                f"shard {self.url} holds {more}{self.read_bytes} bytes but its manifest entry says {self.size}"
            )
        digest = self._hash.hexdigest()
        if self.sha256 is not None and digest != self.sha256:
            raise CorruptShardError(f"shard {self.url} has sha256 {digest} but its manifest entry says {self.sha256}")

    def close(self) -> None:
        self.raw.close()
