"""The block-shuffle source stage: read this consumer's share of the epoch order by random access."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from shardpipe.errors import ShardpipeError
from shardpipe.format.sample import Sample
from shardpipe.split.block import BlockOrder, consumer_range
from shardpipe.stages.base import Stage, State
from shardpipe.stages.untar import warn_skipped
from shardpipe.state import COUNT, StateCheck

#: samples read together: nearby ones of a shard share a request, the rest go out in parallel
GROUP = 64


class BlockShuffleSamples(Stage[Sample]):
    """Yield the samples at this consumer's positions of the block-shuffled order (see ``split.block``).

    ``shards`` is an ``shardpipe.indexed.IndexedShards``. Samples look like streamed ones
    (``__key__``, ``__url__``, ``__shard__``, fields as bytes; ``__pad__`` under the pad
    policy). State: ``{"pos": n}``, the samples this consumer has passed in the epoch
    (with the context's seed and epoch, an exact resume point). Samples are read
    ``GROUP`` positions at a time (``IndexedShards.samples``). A sample that cannot be
    read goes to the error policy. Links and sparse files among a sample's members are
    stepped over and counted in the context's ``skipped``, as ``Untar`` counts them.
    """

    state_fields = {"pos": COUNT}

    def __init__(self, shards: Any, block_size: int | None = None, policy: str = "drop"):
        super().__init__()
        if policy not in ("drop", "pad"):
            raise ValueError(f"the block shuffle splits epochs by policy 'drop' or 'pad', not {policy!r}")
        self.shards = shards
        self.block_size = block_size
        self.policy = policy
        self._order: BlockOrder | None = None
        self._lo = self._hi = self._pos = 0
        self._ready: deque[Any] = deque()  # read samples (or their errors) from position _pos on

    def reset(self, state: State | None = None) -> None:
        c = self.ctx
        self._order = BlockOrder(self.shards.index.counts(), c.seed, c.epoch, self.block_size)
        self._lo, self._hi = consumer_range(
            len(self._order), rank=c.rank, world_size=c.world_size, worker=c.worker,
            num_workers=c.num_workers, policy=self.policy,
        )  # fmt: skip
        self._pos = int(state["pos"]) if state else 0
        self._ready.clear()

    def check_state(self, state: State, check: StateCheck, below: object) -> object:
        c = self.ctx
        total = int(sum(self.shards.index.counts()))
        lo, hi = consumer_range(
            total, rank=c.rank, world_size=c.world_size, worker=c.worker, num_workers=c.num_workers, policy=self.policy
        )
        check.at("pos").integer(state["pos"], 0, hi - lo, f" (this consumer's share of the epoch is {hi - lo} samples)")
        return below

    def _read_group(self) -> None:
        """Read the samples of the next ``GROUP`` positions."""
        assert self._order is not None
        total = len(self._order)
        first = self._lo + self._pos
        positions = range(first, min(first + GROUP, self._hi))
        skipped: dict[str, Counter[str]] = {}
        self._ready.extend(self.shards.samples([self._order[p % total] for p in positions], skipped))
        for url, counts in skipped.items():
            if counts:
                self.ctx.skipped.update(counts)
                warn_skipped(url, counts, self.ctx.epoch)

    def __len__(self) -> int:
        return self._hi - self._lo

    def next(self) -> Sample:
        assert self._order is not None, "call reset() before next()"
        total = len(self._order)
        while True:
            if self._lo + self._pos >= self._hi or not total:
                raise StopIteration
            p = self._lo + self._pos
            if not self._ready:
                t0 = time.perf_counter()
                try:
                    self._read_group()
                finally:
                    self.ctx.add_time("read", time.perf_counter() - t0)
            sample = self._ready.popleft()
            self._pos += 1
            if isinstance(sample, ShardpipeError):
                self.ctx.errors(sample)
                continue
            del sample["__index__"]
            if self.policy == "pad":
                sample["__pad__"] = p >= total
            return sample

    def get_state(self) -> State:
        return {"pos": self._pos}

    def close(self) -> None:
        self.shards.reader.close()
