"""Block shuffle: an epoch order that mixes samples across many shards, read by random access.

Each epoch (seeded by seed and epoch) the shards are permuted, their samples laid end to
end, cut into blocks of ``block_size`` samples, and each block permuted on its own. With
one block (``block_size=None``, the default) that is a uniform permutation of the
whole dataset; smaller blocks bound how many shards a stretch of the order touches
(each rank's share of the order then needs fewer shards in its cache) at the cost of
mixing on class-ordered shards.

Every consumer (rank x DataLoader worker) gets an equal contiguous range of the order,
as ``plan_ranges`` gives sample ranges (policies ``drop`` and ``pad``), so ranks run
equal epochs and every sample comes once. A consumer's position is one integer: with
(seed, epoch) it resumes exactly. Block permutations are computed one block at a time,
so memory is one block of int64 per consumer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shardpipe.split.order import epoch_order
from shardpipe.split.plan import _ranges, rank_share


def consumer_range(
    total: int, *, rank: int, world_size: int, worker: int, num_workers: int, policy: str
) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of the epoch order this consumer reads (``hi`` may pass ``total`` under pad)."""
    share = rank_share(total, world_size, policy)
    w_lo, w_hi = _ranges(share, num_workers)[worker]
    return rank * share + w_lo, rank * share + w_hi


class BlockOrder:
    """The epoch order of sample numbers (manifest order) under the block shuffle."""

    def __init__(self, counts: Sequence[int], seed: int, epoch: int, block_size: int | None = None):
        counts = np.asarray(counts, dtype=np.int64)
        self.total = int(counts.sum())
        if block_size is not None and block_size < 1:
            raise ValueError(f"shuffle_block_size must be >= 1 or None (the whole epoch), not {block_size}")
        self.block = min(block_size or self.total, self.total) or 1
        self.seed, self.epoch = seed, epoch
        self._shard_order = epoch_order(len(counts), seed, epoch, True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # manifest number of each shard's first sample
        ordered = counts[self._shard_order]
        self._ordered_starts = np.concatenate([[0], np.cumsum(ordered)[:-1]])
        self._first = first[self._shard_order]
        self._cached: tuple[int, np.ndarray] = (-1, np.arange(0))

    def __len__(self) -> int:
        return self.total

    def _block_perm(self, b: int) -> np.ndarray:
        if self._cached[0] != b:
            n = min(self.block, self.total - b * self.block)
            rng = np.random.default_rng([self.seed, self.epoch, b, 0xB10C])
            self._cached = (b, rng.permutation(n))
        return self._cached[1]

    def __getitem__(self, p: int) -> int:
        """The sample number at position ``p`` of the order (0 <= p < total)."""
        b, r = divmod(p, self.block)
        q = b * self.block + int(self._block_perm(b)[r])  # position in the shard-permuted concatenation
        k = int(np.searchsorted(self._ordered_starts, q, side="right")) - 1
        return int(self._first[k]) + q - int(self._ordered_starts[k])

    def take(self, lo: int, hi: int) -> np.ndarray:
        """Sample numbers at positions ``[lo, hi)``, vectorised (positions wrap past ``total``)."""
        pos = np.arange(lo, hi, dtype=np.int64) % max(self.total, 1)
        out = np.empty(len(pos), dtype=np.int64)
        blocks = pos // self.block
        for b in np.unique(blocks):
            sel = blocks == b
            q = b * self.block + self._block_perm(int(b))[pos[sel] - b * self.block]
            k = np.searchsorted(self._ordered_starts, q, side="right") - 1
            out[sel] = self._first[k] + q - self._ordered_starts[k]
        return out
