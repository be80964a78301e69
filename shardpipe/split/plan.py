"""Epoch plans: which samples of which shards each consumer (rank x worker) reads.

An epoch's global order is the shard list in a (seed, epoch)-seeded permutation. With
sample counts per shard (from the manifest), that order is a sequence of N samples, and
every consumer gets a contiguous range of it, cut at sample boundaries, even inside a
shard. Ranks therefore get equal shares, whatever the shard sizes:

* ``drop`` (default): every rank reads ``floor(N / world_size)`` samples; fewer than
  ``world_size`` samples an epoch are left out (the tail of the epoch's order: different
  samples each epoch when shards are shuffled);
* ``pad``: every rank reads ``ceil(N / world_size)``; the short ranks wrap around to the
  start of the order and those repeats are marked ``__pad__ = True`` so they can be masked;
* ``resample``: every consumer draws shards with replacement and reads a fixed
  ``samples_per_epoch / (world_size * num_workers)`` samples;
* ``uneven``: shards dealt round-robin, no equalisation (can leave DDP ranks waiting:
  only for single-process jobs or loops that tolerate it).

A rank's range is split among its DataLoader workers the same way, so every rank has the
same per-worker sample counts and hence the same number of batches.

Everything here is arithmetic over integers (sample counts, seed, epoch, rank, worker):
:func:`plan_segments` says which (shard position, start, stop) pieces a consumer reads.
The policies (which stages each one runs) are plain functions registered by name in
``shardpipe.stages.epochs``; they read from here, and nothing here imports a stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from shardpipe.split.order import epoch_order

T = TypeVar("T")


def _ranges(total: int, parts: int) -> list[tuple[int, int]]:
    return [(p * total // parts, (p + 1) * total // parts) for p in range(parts)]


class Segment(NamedTuple):
    """Samples ``[start, stop)`` of the shard at position ``shard`` of the shard list."""

    shard: int
    start: int
    stop: int
    pad: bool = False


def _segments(
    order: np.ndarray, counts: np.ndarray, starts: np.ndarray, lo: int, hi: int, pad: bool = False
) -> list[Segment]:
    """The pieces of shards covering global sample positions [lo, hi) of the order."""
    out: list[Segment] = []
    first = int(np.searchsorted(starts, lo, side="right")) - 1
    for i in range(max(first, 0), len(order)):
        s0 = int(starts[i])
        if s0 >= hi:
            break
        a, b = max(lo, s0) - s0, min(hi, s0 + int(counts[i])) - s0
        if a < b:
            out.append(Segment(int(order[i]), a, b, pad))
    return out


def rank_share(total: int, world_size: int, policy: str) -> int:
    """Samples each rank reads in one epoch under ``policy`` (drop/pad)."""
    return total // world_size if policy == "drop" else -(-total // world_size)


def plan_segments(
    counts: Sequence[int] | np.ndarray,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    shuffle: bool,
    policy: str = "drop",
) -> list[Segment]:
    """This consumer's pieces of shards for the epoch (policies ``drop`` and ``pad``), given
    each shard's sample count in shard-list order."""
    counts_in_list = np.asarray(counts, dtype=np.int64)
    order = epoch_order(len(counts_in_list), seed, epoch, shuffle)
    ordered = counts_in_list[order]
    starts = np.concatenate([[0], np.cumsum(ordered)[:-1]])
    total = int(ordered.sum())
    share = rank_share(total, world_size, policy)
    # rank r reads positions [r * share, (r + 1) * share): drop leaves the tail out, pad wraps
    r_lo = rank * share
    w_lo, w_hi = _ranges(share, num_workers)[worker]
    lo, hi = r_lo + w_lo, r_lo + w_hi
    out = _segments(order, ordered, starts, lo, min(hi, total)) if lo < total else []
    # pad: positions past the end wrap around the order, as many times as needed
    pos = max(lo, total)
    while pos < hi and total:
        a = pos % total
        b = min(total, a + hi - pos)
        out += _segments(order, ordered, starts, a, b, pad=True)
        pos += b - a
    return out


def plan_ranges(shards: Sequence[Any], **plan: Any) -> list[Any]:
    """:func:`plan_segments` over shard records (dataclasses with ``samples``, ``start``,
    ``stop`` and ``pad``, such as ``stages.shards.Shard``): the records of this consumer's pieces."""
    if any(s.samples is None for s in shards):
        raise ValueError("equal splits need sample counts per shard: read the shards through their manifest.json")
    return [
        dataclasses.replace(shards[seg.shard], start=seg.start, stop=seg.stop, pad=seg.pad)
        for seg in plan_segments([s.samples for s in shards], **plan)
    ]


class ResampledShards(Sequence[T]):
    """An endless, seeded sequence of shards drawn with replacement for one consumer."""

    CHUNK = 1024

    def __init__(self, shards: Sequence[T], seed: int, epoch: int, consumer: int):
        self.shards = list(shards)
        self._rng = np.random.default_rng([seed, epoch, consumer, 0x5E5A])
        self._drawn: list[int] = []

    def __getitem__(self, i: int) -> T:  # type: ignore[override]
        while i >= len(self._drawn):
            self._drawn.extend(self._rng.integers(0, len(self.shards), self.CHUNK).tolist())
        return self.shards[self._drawn[i]]

    def __len__(self) -> int:
        return 1 << 62  # endless: the epoch ends on the sample budget
