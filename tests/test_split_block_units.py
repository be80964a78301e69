"""``split.block``: the block-shuffled epoch order, value for value against a plain transcription of its recipe,
and each consumer's range of it."""

from __future__ import annotations

import numpy as np
import pytest

from shardpipe.split.block import BlockOrder, consumer_range

COUNTS = [9, 2, 14, 5, 1, 11, 7]  # 49 samples in 7 uneven shards


def reference(counts: list[int], seed: int, epoch: int, block_size: int | None) -> list[int]:
    """The documented recipe, one step at a time: permute the shards (seeded by seed and epoch), lay their
    samples end to end, cut into blocks of ``block_size`` and permute each block on its own."""
    shard_order = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(counts)).tolist()
    firsts = [sum(counts[:i]) for i in range(len(counts))]
    laid = [firsts[s] + i for s in shard_order for i in range(counts[s])]
    block = min(block_size or len(laid), len(laid)) or 1
    out: list[int] = []
    for b, start in enumerate(range(0, len(laid), block)):
        chunk = laid[start : start + block]
        perm = np.random.default_rng([seed, epoch, b, 0xB10C]).permutation(len(chunk))
        out += [chunk[i] for i in perm]
    return out


@pytest.mark.parametrize(
    ("counts", "seed", "epoch", "block_size"),
    [
        (COUNTS, 3, 1, None),
        (COUNTS, 3, 1, 4),
        (COUNTS, 0, 0, 13),
        (COUNTS, 7, 2, 1),
        (COUNTS, 5, 0, 49),
        (COUNTS, 5, 0, 48),  # one block of 48 and one of 1
        (COUNTS, 2, 3, 500),  # larger than the epoch: one block
        ([0, 4, 0, 0, 3, 0], 1, 0, 2),  # empty shards anywhere in the order
        ([6], 4, 4, 4),
    ],
)
def test_the_order_is_the_documented_recipe(counts, seed, epoch, block_size):
    order = BlockOrder(counts, seed, epoch, block_size)
    expected = reference(counts, seed, epoch, block_size)
    total = sum(counts)
    assert len(order) == order.total == total
    assert sorted(expected) == list(range(total))
    got = order.take(0, total)
    assert got.dtype == np.int64 and got.tolist() == expected
    scalar = [order[p] for p in range(total)]
    assert scalar == expected and all(type(x) is int for x in scalar)
    # positions out of order (the cached block changes back and forth)
    assert [order[p] for p in reversed(range(total))] == expected[::-1]
    assert [order[p] for p in range(0, total, 3)] == expected[::3]


def test_the_seed_constants_give_these_orders():
    # pinned values: the draws are (seed, epoch, 0x5A4D) for the shards and (seed, epoch, block, 0xB10C) per block
    assert BlockOrder([3, 2], 0, 0, None).take(0, 5).tolist() == reference([3, 2], 0, 0, None)
    assert BlockOrder(COUNTS, 1, 2, 8).take(0, 12).tolist() == reference(COUNTS, 1, 2, 8)[:12]
    assert BlockOrder(COUNTS, 1, 2, 8).take(0, 49).tolist() != BlockOrder(COUNTS, 1, 3, 8).take(0, 49).tolist()
    assert BlockOrder(COUNTS, 1, 2, 8).take(0, 49).tolist() != BlockOrder(COUNTS, 2, 2, 8).take(0, 49).tolist()


def test_the_shards_are_permuted_by_the_epoch_order_and_blocks_of_one_keep_it():
    order = BlockOrder(COUNTS, 6, 1, 1)
    shard_order = np.random.default_rng([6, 1, 0x5A4D]).permutation(len(COUNTS)).tolist()
    firsts = np.concatenate([[0], np.cumsum(COUNTS)[:-1]]).tolist()
    assert order.take(0, 49).tolist() == [firsts[s] + i for s in shard_order for i in range(COUNTS[s])]
    assert order.block == 1


def test_take_wraps_past_the_end_of_the_epoch():
    order = BlockOrder(COUNTS, 3, 1, 4)
    full = reference(COUNTS, 3, 1, 4)
    assert order.take(45, 53).tolist() == full[45:] + full[:4]
    assert order.take(49, 49 + 49 + 2).tolist() == full + full[:2]
    assert order.take(10, 10).tolist() == []
    assert order.take(10, 10).dtype == np.int64


def test_an_epoch_of_one_sample_wraps_to_it():
    assert BlockOrder([1], 4, 2, None).take(0, 4).tolist() == [0, 0, 0, 0]
    assert BlockOrder([0, 1, 0], 4, 2, 3).take(2, 5).tolist() == [0, 0, 0]  # the one sample is number 0


BIG = 2**60  # a shard past 2**53 samples: float64 arithmetic would lose the last digits


def test_sample_numbers_are_exact_int64_for_counts_of_any_integer_type():
    # seed 0, epoch 0 orders the two shards [1, 0]: positions 0-4 are shard 1's samples BIG..BIG+4
    expected = [BIG + 3, BIG + 4, 0, 1, 2]
    for counts in ([BIG, 5], np.array([BIG, 5], dtype=np.uint64), np.array([BIG, 5], dtype=np.int64)):
        order = BlockOrder(counts, 0, 0, 1)
        assert order.total == BIG + 5
        assert order.take(3, 8).tolist() == expected
        assert [order[p] for p in range(3, 8)] == expected
        assert order.take(BIG + 3, BIG + 5).tolist() == [BIG - 2, BIG - 1]


def test_take_is_exact_for_positions_of_any_integer_type():
    order = BlockOrder([BIG, 5], 0, 0, 1)
    want = [BIG - 3, BIG - 2, BIG - 1]
    for lo, hi in ((BIG + 2, BIG + 5), (np.uint64(BIG + 2), np.uint64(BIG + 5)), (np.int64(BIG + 2), BIG + 5)):
        got = order.take(lo, hi)
        assert got.dtype == np.int64 and got.tolist() == want


@pytest.mark.parametrize(("block_size", "block"), [(None, 49), (49, 49), (50, 49), (10**9, 49), (1, 1), (7, 7)])
def test_the_block_is_the_size_asked_at_most_the_epoch(block_size, block):
    order = BlockOrder(COUNTS, 0, 0, block_size)
    assert order.block == block
    assert (order.seed, order.epoch) == (0, 0)


@pytest.mark.parametrize("block_size", [0, -1, -50])
def test_a_block_must_hold_a_sample(block_size):
    with pytest.raises(ValueError) as e:
        BlockOrder(COUNTS, 0, 0, block_size)
    assert str(e.value) == f"shuffle_block_size must be >= 1 or None (the whole epoch), not {block_size}"


@pytest.mark.parametrize("counts", [[], [0], [0, 0, 0]])
def test_an_empty_epoch_has_no_positions(counts):
    for block_size in (None, 1, 5):
        order = BlockOrder(counts, 1, 1, block_size)
        assert len(order) == 0 and order.total == 0
        assert order.block == 1
        empty = order.take(0, 0)
        assert empty.tolist() == [] and empty.dtype == np.int64


def test_the_attributes_keep_seed_and_epoch():
    order = BlockOrder(np.array([2, 3]), seed=11, epoch=4, block_size=2)
    assert (order.seed, order.epoch, order.total, order.block) == (11, 4, 5, 2)
    assert type(order.total) is int


def test_the_order_of_one_block_is_computed_once_and_kept():
    order = BlockOrder(COUNTS, 3, 1, 8)
    first = order._block_perm(2)
    assert order._block_perm(2) is first  # the same block again: no new draw
    assert order._block_perm(2).tolist() == np.random.default_rng([3, 1, 2, 0xB10C]).permutation(8).tolist()
    last = order._block_perm(6)  # the last block holds the 1 sample left
    assert last.tolist() == [0]
    assert order._block_perm(2) is not first and order._block_perm(2).tolist() == first.tolist()


@pytest.mark.parametrize(
    ("total", "world", "workers", "policy", "expected"),
    [
        # drop: each rank reads total // world; the tail is left out
        (10, 3, 1, "drop", [[(0, 3)], [(3, 6)], [(6, 9)]]),
        # pad: each rank reads ceil(total / world); the last rank's range passes the end
        (10, 3, 1, "pad", [[(0, 4)], [(4, 8)], [(8, 12)]]),
        # workers split their rank's share as plan_ranges does: p * share // workers
        (10, 2, 3, "drop", [[(0, 1), (1, 3), (3, 5)], [(5, 6), (6, 8), (8, 10)]]),
        (11, 2, 3, "pad", [[(0, 2), (2, 4), (4, 6)], [(6, 8), (8, 10), (10, 12)]]),
        (7, 1, 2, "drop", [[(0, 3), (3, 7)]]),
        (7, 1, 2, "pad", [[(0, 3), (3, 7)]]),
        (2, 3, 1, "drop", [[(0, 0)], [(0, 0)], [(0, 0)]]),
        (2, 3, 1, "pad", [[(0, 1)], [(1, 2)], [(2, 3)]]),
        (0, 2, 2, "pad", [[(0, 0), (0, 0)], [(0, 0), (0, 0)]]),
    ],
)
def test_consumer_ranges(total, world, workers, policy, expected):
    got = [
        [
            consumer_range(total, rank=r, world_size=world, worker=w, num_workers=workers, policy=policy)
            for w in range(workers)
        ]
        for r in range(world)
    ]
    assert got == expected
    assert all(type(v) is int for rank in got for rng in rank for v in rng)
