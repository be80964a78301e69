"""``ShardOpener``: how ``Untar`` opens shards, with the I/O settings bound once.

The pipeline's ``Context`` carries no I/O settings: whoever builds the pipeline gives
``Untar`` an opener. This one goes through :func:`shardpipe.io.files.open_shard` (fsspec,
retries, cache) and opens the next ``prefetch`` remote shards in the background. Any
callable ``opener(shard, offset) -> stream`` works in its place (``inspect`` and
``verify`` pass a hashing one).
"""

from __future__ import annotations

from collections import deque
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
    The hints are applied again once the shard being opened has left the ahead-set, so
    ``prefetch=k`` keeps k shards opened ahead of the one being read. ``events`` logs
    the prefetcher's events (``shardpipe.io.prefetch``) and ``("reading", url, ahead)``
    each time a shard is handed to the reader, with the shards then opened ahead.
    ``open_kwargs`` go to ``open_shard``: storage_options, cache_dir, cache_size,
    read_options, allow_pipe.
    """

    def __init__(self, prefetch: int = 2, **open_kwargs: Any):
        self.depth = prefetch
        self.open_kwargs = open_kwargs
        self._prefetcher: Prefetcher | None = None
        self._upcoming: list[ShardLike] = []
        self.events: deque[tuple[Any, ...]] = deque(maxlen=10_000)

    def _pf(self) -> Prefetcher:
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self.depth, self.events, **self.open_kwargs)
        return self._prefetcher

    def ahead(self, shards: Iterable[ShardLike]) -> None:
        """Start opening ``shards`` (the next ones in the plan) in the background."""
        self._upcoming = list(shards)
        self._prefetch_upcoming()

    def _prefetch_upcoming(self) -> None:
        pf = self._pf()
        for s in self._upcoming:
            pf.prefetch(s.url, expected_size=s.size, expected_sha256=s.sha256)

    def __call__(self, shard: ShardLike, offset: int) -> IO[bytes]:
        pf = self._pf()
        stream = pf.open(shard.url, offset, expected_size=shard.size, expected_sha256=shard.sha256)
        self._upcoming = [s for s in self._upcoming if s.url != shard.url]
        self._prefetch_upcoming()  # the shard just opened freed its place in the ahead-set
        self.events.append(("reading", shard.url, pf.ahead_urls()))
        return stream

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
