"""Epoch policies by what each consumer READS (shards opened, samples read), not only what it yields."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shardpipe.errors import ErrorHandler, ShardNotFoundError, ShardReadError
from shardpipe.stages import Context, Pipeline, Shard, Untar
from shardpipe.stages.epochs import EpochRequest, epoch_stages, split_mode

from .helpers import make_samples, write_shards


class LoggingOpener:
    """Opens shards from disk and logs which shard each consumer opened (the reads a policy causes)."""

    def __init__(self, fail: bool = False):
        self.opened: list[str] = []
        self.fail = fail

    def __call__(self, shard: Shard, offset: int):
        self.opened.append(Path(shard.url).name)
        if self.fail:
            raise ShardNotFoundError(f"shard not found: {shard.url}")
        f = open(shard.url, "rb")
        f.seek(offset)
        return f


def run_consumer(policy: str, shards: list[Shard], world: int, workers: int, rank: int, worker: int, **req):
    """(keys yielded, shards opened, samples read) by one consumer of one epoch."""
    opener = LoggingOpener()
    ctx = Context(seed=3, rank=rank, world_size=world, worker=worker, num_workers=workers)
    read: list[str] = []

    def untar(**kw):
        return Untar(opener, **kw)

    request = EpochRequest(shards, ctx, shuffle=False, untar=untar, **req)
    stages = epoch_stages(policy, request)
    # count the samples that come out of GroupSamples: those were read, whatever is dropped later
    group = next(i for i, s in enumerate(stages) if type(s).__name__ == "GroupSamples")

    def count(sample):
        read.append(sample["__key__"])
        return sample

    stages.insert(group + 1, count)
    keys = [s["__key__"] for s in Pipeline(stages, ctx)]
    return keys, opener.opened, read


@pytest.fixture
def dataset(tmp_path: Path):
    def make(counts: list[int]) -> list[Shard]:
        urls = write_shards(tmp_path, make_samples(sum(counts)), counts)
        return [Shard(url, i, samples=c) for i, (url, c) in enumerate(zip(urls, counts))]

    return make


@pytest.mark.parametrize("world, workers", [(1, 2), (2, 1)])
def test_one_shard_two_consumers_split_by_sample(dataset, world, workers):
    shards = dataset([6])
    consumers = [divmod(i, workers) for i in range(world * workers)]
    results = [run_consumer("uneven", shards, world, workers, r, w) for r, w in consumers]
    keys = [k for ks, _, _ in results for k in ks]
    assert sorted(keys) == [f"sample{i:05d}" for i in range(6)] and len(keys) == 6  # disjoint, complete
    for ks, opened, read in results:
        assert opened == ["shard-0000.tar"] and len(read) == 6  # each reads the shard: the price of one shard
        assert len(ks) == 3


def test_as_many_shards_as_consumers_split_by_shard_each_reading_one(dataset):
    shards = dataset([4, 5])
    results = [run_consumer("uneven", shards, 1, 2, 0, w) for w in range(2)]
    assert [opened for _, opened, _ in results] == [["shard-0000.tar"], ["shard-0001.tar"]]
    assert [len(read) for _, _, read in results] == [4, 5]  # nobody reads the other's shard
    assert [len(keys) for keys, _, _ in results] == [4, 5]


def test_a_single_consumer_reads_everything_once(dataset):
    shards = dataset([3, 2])
    keys, opened, read = run_consumer("uneven", shards, 1, 1, 0, 0, split="samples")
    assert opened == ["shard-0000.tar", "shard-0001.tar"] and len(read) == len(keys) == 5
    keys, opened, read = run_consumer("uneven", shards, 1, 1, 0, 0, split="shards")
    assert opened == ["shard-0000.tar", "shard-0001.tar"] and len(read) == len(keys) == 5


def test_more_shards_than_consumers_split_by_shard(dataset):
    shards = dataset([2, 2, 2])
    results = [run_consumer("uneven", shards, 1, 2, 0, w) for w in range(2)]
    assert [opened for _, opened, _ in results] == [["shard-0000.tar", "shard-0002.tar"], ["shard-0001.tar"]]


def request(n_shards: int, world: int, workers: int, index: int, split: str = "auto") -> EpochRequest:
    shards = [Shard(f"s{i}.tar", i) for i in range(n_shards)]
    rank, worker = divmod(index, workers)
    return EpochRequest(shards, Context(rank=rank, world_size=world, worker=worker, num_workers=workers), False, split)


def test_auto_split_mode_boundaries(caplog):
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        assert split_mode(request(4, 2, 2, 0)) == "shards"  # n == consumers
        assert split_mode(request(5, 2, 2, 0)) == "shards"
        assert split_mode(request(1, 1, 1, 0)) == "shards"
        assert caplog.records == []
        assert split_mode(request(3, 2, 2, 1)) == "samples"  # only consumer 0 warns
        assert caplog.records == []
        assert split_mode(request(3, 2, 2, 0)) == "samples"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "3 shards for 4 consumers (ranks x workers): splitting by sample instead, so every consumer reads "
        "all shards; write at least 4 shards for best throughput"
    )


def test_forced_shard_split_with_too_few_shards_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        assert split_mode(request(3, 1, 3, 0, "shards")) == "shards"  # enough: silent
        assert split_mode(request(2, 1, 3, 1, "shards")) == "shards"  # too few, but not consumer 0
        assert split_mode(request(5, 1, 3, 0, "samples")) == "samples"
        assert caplog.records == []
        assert split_mode(request(2, 2, 3, 0, "shards")) == "shards"
    [record] = caplog.records
    assert record.getMessage() == (
        "2 shards for 6 consumers (ranks x workers): 4 will get no data; use split='samples' or write more shards"
    )


def test_unknown_policy_is_named():
    with pytest.raises(
        ValueError, match=r"^epoch_policy must be one of \('drop', 'pad', 'resample', 'uneven'\), not 'x'$"
    ):
        epoch_stages("x", request(1, 1, 1, 0))


# -- resample ----------------------------------------------------------------------------
def test_resample_reads_its_share_of_the_budget(dataset):
    shards = dataset([3, 4])
    results = [run_consumer("resample", shards, 2, 1, r, 0, samples_per_epoch=11) for r in range(2)]
    assert [len(keys) for keys, _, _ in results] == [5, 5]  # 11 // 2 consumers
    with pytest.raises(ValueError, match=r"^epoch_policy='resample' needs samples_per_epoch"):
        run_consumer("resample", shards, 1, 1, 0, 0)


@pytest.mark.parametrize("n_shards, limit", [(3, 64), (32, 64), (33, 66), (40, 80)])
def test_resample_gives_up_after_max_64_or_twice_the_shards_failures_in_a_row(n_shards, limit):
    shards = [Shard(f"/nonexistent/s{i}.tar", i) for i in range(n_shards)]
    opener = LoggingOpener(fail=True)
    ctx = Context(errors=ErrorHandler("skip"))
    stages = epoch_stages(
        "resample", EpochRequest(shards, ctx, False, samples_per_epoch=10, untar=lambda **kw: Untar(opener, **kw))
    )
    with pytest.raises(
        ShardReadError, match=rf"^{limit} shards in a row could not be read \(the last: shard not found"
    ):
        list(Pipeline(stages, ctx))
    assert len(opener.opened) == limit
    assert ctx.errors.counts == {"ShardNotFoundError": limit - 1}  # skipped until the last, which raised


# -- plan arithmetic -------------------------------------------------------------------------
def segs(plan: list[Shard]) -> list[tuple[int, int, int, bool]]:
    return [(s.index, s.start, s.stop, s.pad) for s in plan]


def plan(counts: list[int], policy: str, rank: int, world: int, worker: int = 0, workers: int = 1, **kw):
    from shardpipe.split.plan import plan_ranges

    shards = [Shard(f"s{i}.tar", i, samples=c) for i, c in enumerate(counts)]
    return segs(plan_ranges(shards, seed=0, epoch=0, rank=rank, world_size=world, worker=worker,
                            num_workers=workers, shuffle=False, policy=policy, **kw))  # fmt: skip


def test_plan_segments_cut_shards_at_exact_positions():
    # 3 + 0 + 5 + 2 = 10 samples; drop over 3 ranks: 3 each, sample 9 left out
    assert plan([3, 0, 5, 2], "drop", 0, 3) == [(0, 0, 3, False)]
    assert plan([3, 0, 5, 2], "drop", 1, 3) == [(2, 0, 3, False)]
    assert plan([3, 0, 5, 2], "drop", 2, 3) == [(2, 3, 5, False), (3, 0, 1, False)]
    # pad: 4 each; rank 2 reads positions 8, 9 then wraps to 0, 1
    assert plan([3, 0, 5, 2], "pad", 2, 3) == [(3, 0, 2, False), (0, 0, 2, True)]
    # workers split a rank's share: rank 1 of 2 has positions 5..9, worker 1 of 2 gets 7..9
    assert plan([3, 0, 5, 2], "drop", 1, 2, 1, 2) == [(2, 4, 5, False), (3, 0, 2, False)]


def test_pad_wraps_around_the_order_as_often_as_needed():
    # 2 samples, 8 ranks under pad: each reads one; ranks 2.. read repeats
    assert [plan([1, 1], "pad", r, 8) for r in (0, 1, 2, 5)] == [
        [(0, 0, 1, False)],
        [(1, 0, 1, False)],
        [(0, 0, 1, True)],
        [(1, 0, 1, True)],
    ]
    assert plan([1, 1], "pad", 0, 1, 0, 1) == [(0, 0, 1, False), (1, 0, 1, False)]
    assert plan([1, 2], "pad", 0, 1, 1, 3) == [(1, 0, 1, False)]  # one sample per worker
    assert plan([0, 0], "pad", 0, 2) == [] and plan([0, 0], "drop", 1, 2) == []


def test_plan_needs_sample_counts():
    from shardpipe.split.plan import plan_ranges

    with pytest.raises(ValueError, match=r"^equal splits need sample counts per shard: read the shards through"):
        plan_ranges([Shard("a.tar", 0, samples=3), Shard("b.tar", 1)], seed=0, epoch=0, rank=0, world_size=1,
                    worker=0, num_workers=1, shuffle=False)  # fmt: skip


def test_rank_share():
    from shardpipe.split.plan import rank_share

    assert [rank_share(10, 3, "drop"), rank_share(10, 3, "pad"), rank_share(9, 3, "pad")] == [3, 4, 3]


def test_resampled_shards_are_endless_seeded_and_cover_every_shard():
    import numpy as np

    from shardpipe.split.plan import ResampledShards

    shards = [Shard(f"s{i}.tar", i) for i in range(5)]
    a = ResampledShards(shards, seed=1, epoch=2, consumer=3)
    drawn = [a[i].index for i in range(2500)]  # past two chunks of 1024
    assert len(a) == 1 << 62 and set(drawn) == set(range(5))
    expected = np.random.default_rng([1, 2, 3, 0x5E5A]).integers(0, 5, 3072).tolist()[:2500]
    assert drawn == expected
    assert a[2499].index == drawn[2499] and a[7].index == drawn[7]  # random access, stable
    b = ResampledShards(shards, seed=1, epoch=2, consumer=4)
    assert [b[i].index for i in range(50)] != drawn[:50]


# -- drop and pad: equal ranges per consumer ------------------------------------------------------
def test_drop_gives_equal_contiguous_ranges_and_reads_only_them(dataset):
    shards = dataset([3, 4])  # 7 samples, 2 ranks: 3 each, sample 6 left out
    results = [run_consumer("drop", shards, 2, 1, r, 0) for r in range(2)]
    assert [keys for keys, _, _ in results] == [
        ["sample00000", "sample00001", "sample00002"],
        ["sample00003", "sample00004", "sample00005"],
    ]
    assert [opened for _, opened, _ in results] == [["shard-0000.tar"], ["shard-0001.tar"]]
    assert [read for _, _, read in results] == [keys for keys, _, _ in results]  # nothing read and dropped


def test_pad_wraps_and_marks_only_the_repeats(dataset):
    shards = dataset([3, 4])  # 7 samples, 2 ranks: 4 each; rank 1 repeats sample 0
    opener_results = [run_consumer("pad", shards, 2, 1, r, 0) for r in range(2)]
    assert [keys for keys, _, _ in opener_results] == [
        ["sample00000", "sample00001", "sample00002", "sample00003"],
        ["sample00004", "sample00005", "sample00006", "sample00000"],
    ]
    ctx = Context(seed=3, rank=1, world_size=2)
    request = EpochRequest(shards, ctx, shuffle=False)
    pads = [(s["__key__"], s["__pad__"]) for s in Pipeline(epoch_stages("pad", request), ctx)]
    assert pads == [("sample00004", False), ("sample00005", False), ("sample00006", False), ("sample00000", True)]


def test_ranges_follow_the_workers_and_the_shuffled_epoch_order(dataset):
    from shardpipe.stages.shards import epoch_order

    shards = dataset([2, 2, 2, 2])
    ctx = Context(seed=5, epoch=3, rank=0, world_size=1, worker=1, num_workers=2)
    keys = [s["__key__"] for s in Pipeline(epoch_stages("drop", EpochRequest(shards, ctx, shuffle=True)), ctx)]
    order = epoch_order(4, 5, 3, True).tolist()
    # worker 1 of 2 reads the second half of the epoch's order: the last two shards in it
    assert keys == [f"sample{2 * s + i:05d}" for s in order[2:] for i in range(2)]
    assert order != sorted(order)
    unshuffled = [s["__key__"] for s in Pipeline(epoch_stages("drop", EpochRequest(shards, ctx, shuffle=False)), ctx)]
    assert unshuffled == [f"sample{i:05d}" for i in range(4, 8)]


def test_plan_ranges_defaults_to_drop():
    from shardpipe.split.plan import plan_ranges

    shards = [Shard("a.tar", 0, samples=3), Shard("b.tar", 1, samples=4)]
    kw = dict(seed=0, epoch=0, rank=1, world_size=2, worker=0, num_workers=1, shuffle=False)
    assert segs(plan_ranges(shards, **kw)) == segs(plan_ranges(shards, policy="drop", **kw)) == [(1, 0, 3, False)]
