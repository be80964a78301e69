"""``ShardOpener``: how ``Untar`` opens shards, with the I/O settings bound once.

The pipeline's ``Context`` carries no I/O settings: whoever builds the pipeline gives
``Untar`` an opener. This one goes through :func:`shardpipe.io.files.open_shard` (fsspec,
retries, cache) and opens the next ``prefetch`` remote shards in the background. Any
callable ``opener(shard, offset) -> stream`` works in its place (``inspect`` and
``verify`` pass a hashing one).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any, Protocol

from shardpipe.io.prefetch import Prefetcher


class ShardLike(Protocol):
    """What an opener reads from a shard (``shardpipe.stages.shards.Shard`` has it)."""

    url: str
    size: int | None
    sha256: str | None


class ShardOpener:
    """``opener(shard, offset)`` -> the shard's byte stream from ``offset``.

    ``ahead(shards)`` hints at the shards to come (opened in the background, up to
    ``prefetch`` of them); ``close()`` closes streams opened ahead and never used.
    ``open_kwargs`` go to ``open_shard``: storage_options, cache_dir, cache_size,
    read_options, allow_pipe.
    """

    def __init__(self, prefetch: int = 1, **open_kwargs: Any):
        self.depth = prefetch
        self.open_kwargs = open_kwargs
        self._prefetcher: Prefetcher | None = None

    def _pf(self) -> Prefetcher:
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self.depth, **self.open_kwargs)
        return self._prefetcher

    def ahead(self, shards: Iterable[ShardLike]) -> None:
        """Start opening ``shards`` (the next ones in the plan) in the background."""
        pf = self._pf()
        for s in shards:
            pf.prefetch(s.url, expected_size=s.size, expected_sha256=s.sha256)

    def __call__(self, shard: ShardLike, offset: int) -> IO[bytes]:
        return self._pf().open(shard.url, offset, expected_size=shard.size, expected_sha256=shard.sha256)

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
