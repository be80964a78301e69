"""The block-shuffle stage's grouped reads: which samples it asks the reader for, and when.

A real ``IndexedShards`` over local shards; the log records each ``samples()`` call (the
sample indices of one grouped read) and how many samples the stage had yielded by then.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import shardpipe
from shardpipe.errors import CorruptShardError, ErrorHandler
from shardpipe.format.index import SampleIndex
from shardpipe.indexed import IndexedShards
from shardpipe.split.block import BlockOrder, consumer_range
from shardpipe.stages import Context
from shardpipe.stages.block import GROUP, BlockShuffleSamples

from .helpers import write_with_shard_writer

TOTAL = 150  # more than two groups of 64: reads of 64, 64 and 22 samples
FIELDS = {"__key__", "__url__", "__shard__", "jpg", "cls", "json"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_with_shard_writer(tmp_path_factory.mktemp("block-reads"), TOTAL, maxcount=40)


class Logged:
    """The real indexed shards, with each grouped read logged as (samples yielded so far, indices)."""

    def __init__(self, manifest: str):
        self.shards = IndexedShards(manifest)
        self.calls: list[tuple[int, list[int]]] = []
        self.yielded = 0
        real = self.shards.samples

        def samples(indices, skipped=None):
            self.calls.append((self.yielded, [int(i) for i in indices]))
            return real(indices, skipped)

        self.shards.samples = samples

    def run(self, stage: BlockShuffleSamples) -> list[dict]:
        out = []
        while True:
            try:
                out.append(stage.next())
            except StopIteration:
                return out
            self.yielded += 1


def stage_for(manifest: str, ctx: Context, policy: str = "drop", state=None) -> tuple[BlockShuffleSamples, Logged]:
    log = Logged(manifest)
    stage = BlockShuffleSamples(log.shards, block_size=8, policy=policy)
    stage.bind(None, ctx)
    stage.reset(state)
    return stage, log


def positions_read(order: BlockOrder, lo: int, hi: int, start: int) -> list[tuple[int, list[int]]]:
    """The grouped reads expected from position ``lo + start``: GROUP positions each, the last cut at hi."""
    calls, yielded = [], 0
    for first in range(lo + start, hi, GROUP):
        calls.append((yielded, [order[p % len(order)] for p in range(first, min(first + GROUP, hi))]))
        yielded += min(GROUP, hi - first)
    return calls


def test_one_consumer_reads_the_epoch_order_in_groups_of_64_as_it_goes(manifest):
    ctx = Context(seed=4, epoch=2)
    stage, log = stage_for(manifest, ctx)
    t0 = time.perf_counter()
    got = log.run(stage)
    elapsed = time.perf_counter() - t0
    order = BlockOrder(log.shards.index.counts(), 4, 2, 8)
    assert [len(ix) for _, ix in log.calls] == [64, 64, 22]
    assert log.calls == positions_read(order, 0, TOTAL, 0)
    keys = [s["__key__"] for s in got]
    assert keys == [f"sample{order[p]:05d}" for p in range(TOTAL)]
    assert sorted(keys) == [f"sample{i:05d}" for i in range(TOTAL)]
    assert len(stage) == TOTAL and stage.get_state() == {"pos": TOTAL}
    assert 0 < ctx.timers["read"] < elapsed  # the time spent in the grouped reads


def test_samples_carry_their_shard_and_url_but_not_the_index(manifest):
    stage, log = stage_for(manifest, Context(seed=1))
    urls = log.shards.urls
    first = stage.next()
    assert set(first) == FIELDS
    idx = log.calls[0][1][0]
    shard = int(SampleIndex.load(log.shards.index_url).locate(idx)[0])
    assert (first["__shard__"], first["__url__"]) == (shard, urls[shard])
    assert first["json"] == b'{"index": %d}' % idx
    assert first["cls"] == str(idx % 5).encode()


@pytest.mark.parametrize("worker", [0, 1, 2])
def test_a_worker_reads_only_its_own_range(manifest, worker: int):
    ctx = Context(seed=9, epoch=0, rank=1, world_size=2, worker=worker, num_workers=3)
    stage, log = stage_for(manifest, ctx)
    got = log.run(stage)
    order = BlockOrder(log.shards.index.counts(), 9, 0, 8)
    lo, hi = consumer_range(TOTAL, rank=1, world_size=2, worker=worker, num_workers=3, policy="drop")
    assert 0 < hi - lo < GROUP and lo > 0
    assert log.calls == positions_read(order, lo, hi, 0)
    assert [s["__key__"] for s in got] == [f"sample{order[p]:05d}" for p in range(lo, hi)]
    assert len(stage) == hi - lo


def test_a_resumed_stage_reads_from_its_position_on(manifest):
    ctx = Context(seed=4, epoch=2)
    full, _ = stage_for(manifest, ctx)
    keys = [s["__key__"] for s in Logged(manifest).run(full)]
    for pos in (1, 63, 64, 70, 149):
        stage, log = stage_for(manifest, Context(seed=4, epoch=2), state={"pos": pos})
        got = log.run(stage)
        order = BlockOrder(log.shards.index.counts(), 4, 2, 8)
        assert log.calls == positions_read(order, 0, TOTAL, pos), pos
        assert [s["__key__"] for s in got] == keys[pos:]
        assert stage.get_state() == {"pos": TOTAL}
    stage, log = stage_for(manifest, Context(seed=4, epoch=2), state={"pos": TOTAL})
    assert log.run(stage) == [] and log.calls == []


def test_pad_wraps_past_the_end_and_marks_the_repeats(manifest):
    world = 4  # 150 = 4 * 37 + 2: the last rank pads with 2 samples from the start of the order
    ctx = Context(seed=6, epoch=1, rank=3, world_size=world)
    stage, log = stage_for(manifest, ctx, policy="pad")
    got = log.run(stage)
    order = BlockOrder(log.shards.index.counts(), 6, 1, 8)
    lo, hi = consumer_range(TOTAL, rank=3, world_size=world, worker=0, num_workers=1, policy="pad")
    assert hi > TOTAL
    assert log.calls == positions_read(order, lo, hi, 0)
    assert [s["__key__"] for s in got] == [f"sample{order[p % TOTAL]:05d}" for p in range(lo, hi)]
    assert [s["__pad__"] for s in got] == [p >= TOTAL for p in range(lo, hi)]
    assert set(got[0]) == FIELDS | {"__pad__"}


def test_drop_is_the_default_and_never_adds_a_pad_field(manifest):
    shards = IndexedShards(manifest)
    stage = BlockShuffleSamples(shards, block_size=8)
    assert stage.policy == "drop"
    stage.bind(None, Context(seed=6, rank=3, world_size=4))
    stage.reset()
    got = Logged(manifest).run(stage)
    assert len(got) == TOTAL // 4 and all(set(s) == FIELDS for s in got)


def test_before_reset_the_stage_is_empty_at_position_zero_and_cannot_be_read(manifest):
    stage = BlockShuffleSamples(IndexedShards(manifest))
    assert len(stage) == 0 and stage.get_state() == {"pos": 0}
    with pytest.raises(AssertionError, match=r"^call reset\(\) before next\(\)$"):
        stage.next()


def test_an_unreadable_sample_goes_to_the_error_policy_and_the_rest_follow(manifest, tmp_path: Path):
    import shutil

    root = Path(manifest).parent
    for f in root.iterdir():
        shutil.copy(f, tmp_path / f.name)
    index = SampleIndex.load(str(tmp_path / Path(IndexedShards(manifest).index_url).name))
    shard, start, end, _ = index.locate(5)
    tar = tmp_path / Path(IndexedShards(manifest).urls[shard]).name
    data = bytearray(tar.read_bytes())
    data[end - 520] ^= 0xFF  # inside sample 5's last member's data
    tar.write_bytes(bytes(data))
    copy = str(tmp_path / "manifest.json")

    ctx = Context(seed=4, epoch=2, errors=ErrorHandler("skip"))
    stage, log = stage_for(copy, ctx)
    got = [s["__key__"] for s in log.run(stage)]
    order = BlockOrder(log.shards.index.counts(), 4, 2, 8)
    assert got == [f"sample{order[p]:05d}" for p in range(TOTAL) if order[p] != 5]
    assert dict(ctx.errors.counts) == {"CorruptShardError": 1}
    assert stage.get_state() == {"pos": TOTAL}

    stage, _ = stage_for(copy, Context(seed=4, epoch=2))
    with pytest.raises(CorruptShardError):
        Logged(copy).run(stage)


def test_state_positions_beyond_the_consumers_share_are_refused(manifest):
    from shardpipe.state import StateCheck

    ctx = Context(rank=0, world_size=2)
    stage, _ = stage_for(manifest, ctx)
    assert stage.check_state({"pos": 75}, StateCheck("s"), "below") == "below"
    with pytest.raises(shardpipe.errors.StateError) as e:
        stage.check_state({"pos": 76}, StateCheck("s"), None)
    assert str(e.value) == "s['pos']: must be <= 75 (this consumer's share of the epoch is 75 samples), got 76"
    lo, hi = consumer_range(TOTAL, rank=1, world_size=2, worker=2, num_workers=3, policy="pad")
    stage, _ = stage_for(manifest, Context(rank=1, world_size=2, worker=2, num_workers=3), policy="pad")
    assert stage.check_state({"pos": hi - lo}, StateCheck("s"), 1) == 1
    with pytest.raises(
        shardpipe.errors.StateError, match=rf"share of the epoch is {hi - lo} samples\), got {hi - lo + 1}$"
    ):
        stage.check_state({"pos": hi - lo + 1}, StateCheck("s"), None)


def test_only_drop_or_pad(manifest):
    with pytest.raises(
        ValueError, match=r"^the block shuffle splits epochs by policy 'drop' or 'pad', not 'resample'$"
    ):
        BlockShuffleSamples(IndexedShards(manifest), policy="resample")


def test_close_closes_the_readers_files(manifest):
    stage, log = stage_for(manifest, Context())
    stage.next()
    assert log.shards.reader._open
    stage.close()
    assert not log.shards.reader._open
