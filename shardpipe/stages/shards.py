"""Shard lists: expand URL patterns or a manifest, shuffle per epoch, split across consumers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardpipe.format.manifest import load_manifest
from shardpipe.io.urls import expand_pattern, is_manifest, split_patterns
from shardpipe.split.order import epoch_order
from shardpipe.stages.base import Context, Stage, State
from shardpipe.state import COUNT, StateCheck

if TYPE_CHECKING:
    from shardpipe.io.remote import ReadOptions

log = logging.getLogger("shardpipe")


@dataclass(frozen=True)
class Shard:
    """One shard to read: its URL, its position in the full list, and what the manifest knows.

    ``start``/``stop`` select a range of its samples (by position in the shard) when an
    epoch plan cuts a shard between consumers; ``pad`` marks samples read only to pad
    a rank's share (see ``shardpipe.split.plan``).
    """

    url: str
    index: int
    samples: int | None = None
    size: int | None = None
    sha256: str | None = None
    start: int = 0
    stop: int | None = None
    pad: bool = False

    def to_state(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "index": self.index,
            "samples": self.samples,
            "size": self.size,
            "sha256": self.sha256,
            "start": self.start,
            "stop": self.stop,
            "pad": self.pad,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Shard:
        return cls(
            d["url"],
            int(d["index"]),
            d.get("samples"),
            d.get("size"),
            d.get("sha256"),
            start=int(d["start"]),
            stop=d["stop"],
            pad=bool(d["pad"]),
        )


def manifest_shards(manifest: dict[str, Any], first: int = 0) -> list[Shard]:
    """The shards a loaded manifest lists, numbered from ``first``."""
    return [
        Shard(e["url"], first + i, e.get("samples"), e.get("bytes"), e.get("sha256"))
        for i, e in enumerate(manifest["shards"])
    ]


def expand_urls(
    urls: str | Sequence[str],
    storage_options: dict[str, Any] | None = None,
    manifest_paths: str = "inside",
    read_options: ReadOptions | None = None,
) -> list[Shard]:
    """Turn a brace pattern, a glob, a list of patterns, or a manifest URL into a shard list.

    ``"train-{000000..000099}.tar"`` expands with braceexpand, ``"train-*.tar"`` to the
    matching files in natural order (local or object store); ``"a.tar::b.tar"`` and lists
    concatenate; a pattern ending in ``.json`` names manifests (with sample counts). See
    ``shardpipe.io.urls``: a mistyped URL (``s3:/bucket``) or a glob matching nothing is an error.
    A remote glob's listing follows ``read_options``' retries and timeout.
    """
    shards: list[Shard] = []
    for pattern in split_patterns(urls):
        for url in expand_pattern(pattern, storage_options, read_options):
            if is_manifest(pattern):
                manifest = load_manifest(url, storage_options, manifest_paths, read_options)
                shards += manifest_shards(manifest, len(shards))
            else:
                shards.append(Shard(url, len(shards)))
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    return shards


Plan = Callable[[Context], Sequence[Shard]]
#: a resume position in an endless plan (resampling) past this many draws is refused: no real
#: pass draws that many shards, and reaching it would compute every draw before it
MAX_ENDLESS_POS = 1 << 20


@dataclass(frozen=True)
class Given:
    """What a shard stage's state says it handed on: how many shards, and the last one (when
    it went to this consumer); a resume state's open shard must be that one."""

    count: int
    last: Shard | None


class ShardList(Stage[Shard]):
    """Yield the epoch's shards, shuffled per (seed, epoch) when ``shuffle`` is true.

    ``plan(ctx)``, when given, decides instead which shards (or shard ranges) this
    consumer reads in ``ctx.epoch`` (see ``shardpipe.split.plan``). State: the position of
    the next shard in this epoch's list.
    """

    state_fields = {"pos": COUNT}

    def __init__(self, shards: Sequence[Shard], shuffle: bool = False, plan: Plan | None = None):
        super().__init__()
        self.shards = list(shards)
        self.shuffle = shuffle
        self.plan = plan
        self._order: Sequence[Shard] = []
        self._pos = 0

    def _epoch_plan(self) -> Sequence[Shard]:
        if self.plan is not None:
            return self.plan(self.ctx)
        order = epoch_order(len(self.shards), self.ctx.seed, self.ctx.epoch, self.shuffle)
        return [self.shards[int(i)] for i in order]

    def reset(self, state: State | None = None) -> None:
        self._order = self._epoch_plan()
        self._pos = int(state["pos"]) if state else 0

    def check_state(self, state: State, check: StateCheck, below: object) -> Given:
        order = self._epoch_plan()
        n = len(order)
        if n > MAX_ENDLESS_POS:  # an endless plan
            pos = check.at("pos").integer(state["pos"], 0, MAX_ENDLESS_POS, " (draws of an endless plan)")
        else:
            pos = check.at("pos").integer(state["pos"], 0, n, f" (this epoch's plan has {n} shards here)")
        return Given(pos, order[pos - 1] if pos else None)

    def last_given(self) -> Shard | None:
        """The shard ``next()`` returned last (None before the first)."""
        return self._order[self._pos - 1] if self._pos else None

    def next(self) -> Shard:
        if self._pos >= len(self._order):
            raise StopIteration
        shard = self._order[self._pos]
        self._pos += 1
        return shard

    def peek(self, k: int) -> list[Shard]:
        """The next ``k`` shards, without consuming them (for prefetching)."""
        return [self._order[i] for i in range(self._pos, min(self._pos + k, len(self._order)))]

    def get_state(self) -> State:
        return {"pos": self._pos}


class SplitShards(Stage[Shard]):
    """Keep every ``count``-th shard starting at ``index`` (round robin over consumers).

    ``by="all"`` splits over ranks x DataLoader workers, ``"node"`` over ranks only,
    ``"worker"`` over the workers of this rank only. State: how many shards it has seen.
    """

    def __init__(self, by: str = "all"):
        super().__init__()
        if by not in ("all", "node", "worker"):
            raise ValueError(f"split by must be 'all', 'node' or 'worker', not {by!r}")
        self.by = by
        self._seen = 0

    state_fields = {"seen": COUNT}

    def check_state(self, state: State, check: StateCheck, below: object) -> Given | None:
        if not isinstance(below, Given):
            return None
        check.at("seen").equal(state["seen"], below.count, "the shards its source gave")
        index, count = self._slot()
        return Given(below.count, below.last if (below.count - 1) % count == index else None)

    def last_given(self) -> Shard | None:
        """The shard ``next()`` returned last (None if the last shard pulled went to another consumer)."""
        index, count = self._slot()
        last = getattr(self.source, "last_given", lambda: None)()
        return last if self._seen and (self._seen - 1) % count == index else None

    def _slot(self) -> tuple[int, int]:
        c = self.ctx
        if self.by == "node":
            return c.rank, c.world_size
        if self.by == "worker":
            return c.worker, c.num_workers
        return c.split_index, c.split_count

    def reset(self, state: State | None = None) -> None:
        super().reset(state)
        self._seen = int(state["seen"]) if state else 0

    def next(self) -> Shard:
        index, count = self._slot()
        while True:
            shard = self.pull()
            self._seen += 1
            if (self._seen - 1) % count == index:
                return shard

    def peek(self, k: int) -> list[Shard]:
        """The next ``k`` shards of this consumer, without consuming them."""
        index, count = self._slot()
        ahead = getattr(self.source, "peek", lambda n: [])(k * count)
        return [s for j, s in enumerate(ahead) if (self._seen + j) % count == index][:k]

    def get_state(self) -> State:
        return {"seen": self._seen, **super().get_state()}
