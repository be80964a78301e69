"""The shard order of an epoch: a permutation of shard positions seeded by (seed, epoch)."""

from __future__ import annotations

import numpy as np


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The shard order of one epoch: a seeded permutation, the same on every consumer."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n)
