"""Open the next shards in the background while the current one is being read.

A remote shard opened ahead starts its first ranged requests at once (and, with a
cache, downloads into the cache), so its first bytes are ready when the pipeline
reaches it, and keeps filling its window while the current shard is read. Memory
stays bounded: at most ``depth`` shards are opened ahead, and all remote streams of a
process share one bound (``ReadOptions.memory_limit``, see ``shardpipe.io.budget``).

``events`` records what the prefetcher did, in order: ``("ahead", url)`` when a
background open starts, ``("open", url, prefetched, ahead)`` when a stream is handed
out (``ahead``: the URLs still opened ahead after it), ``("drop", url)`` when a stream
opened ahead is closed unused.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from shardpipe.io.files import is_local, open_shard

log = logging.getLogger("shardpipe")


class Prefetcher:
    """``prefetch(url)`` hints at a shard to come; ``open(url, offset)`` returns its stream.

    ``open_kwargs`` are passed to :func:`shardpipe.io.files.open_shard` (storage_options,
    cache_dir, read_options, ...). Errors from opening a prefetched shard are raised by
    ``open`` for that shard, so on_error sees them in order. Local shards are
    not prefetched (the page cache does that job).
    """

    def __init__(self, depth: int = 1, events: deque[tuple[Any, ...]] | None = None, **open_kwargs: Any):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, not {depth}")
        self.depth = depth
        self.open_kwargs = open_kwargs
        self._ahead: OrderedDict[str, Future[IO[bytes]]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self.hits = 0  # opens served by a prefetched stream
        self.events: deque[tuple[Any, ...]] = events if events is not None else deque(maxlen=10_000)

    def prefetch(self, url: str, **per_shard: Any) -> None:
        """Start opening ``url`` in the background (ignored beyond ``depth`` shards).

        ``per_shard`` adds open_shard keywords for this shard, such as
        ``expected_size`` and ``expected_sha256`` from the manifest.
        """
        if self.depth == 0 or url in self._ahead or is_local(url):
            return
        if len(self._ahead) >= self.depth:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix="shardpipe-prefetch")
        kwargs = {**self.open_kwargs, **per_shard}
        self._ahead[url] = self._pool.submit(_open_ahead, url, kwargs)
        self.events.append(("ahead", url))
        log.debug("prefetch: opening %s ahead", url)

    def open(self, url: str, offset: int = 0, **per_shard: Any) -> IO[bytes]:
        """The stream of ``url`` from ``offset``: the prefetched one when there is one."""
        fut = self._ahead.pop(url, None)
        if fut is not None:
            if offset == 0:
                self.hits += 1
                self.events.append(("open", url, True, tuple(self._ahead)))
                return fut.result()
            _close_when_done(fut)  # resuming mid-shard: reopen at the offset instead
        self.events.append(("open", url, False, tuple(self._ahead)))
        return open_shard(url, offset, **{**self.open_kwargs, **per_shard})

    def ahead_urls(self) -> tuple[str, ...]:
        """The shards opened (or being opened) ahead, oldest first."""
        return tuple(self._ahead)

    def close(self) -> None:
        """Close streams opened ahead and never used."""
        for url, fut in self._ahead.items():
            _close_when_done(fut)
            self.events.append(("drop", url))
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_ahead(url: str, kwargs: dict[str, Any]) -> IO[bytes]:
    """Open ``url`` and let its stream fill while the one before it is read."""
    stream = open_shard(url, 0, **kwargs)
    fill = getattr(stream, "fill_ahead", None)
    if fill is not None:
        fill()
    return stream


def _close_when_done(fut: Future[IO[bytes]]) -> None:
    def close(f: Future[IO[bytes]]) -> None:
        if not f.cancelled() and f.exception() is None:
            f.result().close()

    if not fut.cancel():
        fut.add_done_callback(close)
