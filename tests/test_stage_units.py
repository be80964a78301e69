"""Shard lists, shard and sample splitting, and the shuffle window, each on a plain list of items."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from shardpipe.errors import DuplicateMemberError, ErrorHandler, StateError
from shardpipe.stages import (
    Context,
    GroupSamples,
    Pipeline,
    Shard,
    ShardList,
    Shuffle,
    SplitSamples,
    SplitShards,
    Stage,
    expand_urls,
)
from shardpipe.stages.shards import Given, epoch_order


def items(n: int) -> list[Shard]:
    return [Shard(f"s{i}.tar", i) for i in range(n)]


def indices(stages, ctx: Context | None = None) -> list[int]:
    return [s.index for s in Pipeline(stages, ctx or Context())]


# -- shuffle -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -1])
def test_shuffle_buffer_must_hold_a_sample(size: int):
    with pytest.raises(ValueError, match=rf"^shuffle buffer_size must be >= 1, not {size}$"):
        Shuffle(size)


def test_a_buffer_of_one_keeps_the_order():
    assert indices([ShardList(items(7)), Shuffle(1)]) == list(range(7))


def test_shuffle_permutes_within_each_window_only():
    got = indices([ShardList(items(10)), Shuffle(4)], Context(seed=5))
    assert len(got) == 10
    assert sorted(got[0:4]) == [0, 1, 2, 3] and sorted(got[4:8]) == [4, 5, 6, 7] and sorted(got[8:]) == [8, 9]
    assert got != list(range(10))


def test_shuffle_order_is_a_function_of_seed_epoch_and_consumer():
    def order(**ctx) -> list[int]:
        return indices([ShardList(items(64)), Shuffle(64)], Context(**ctx))

    base = order(seed=1, epoch=0, rank=0, world_size=2)
    assert order(seed=1, epoch=0, rank=0, world_size=2) == base
    assert order(seed=2, epoch=0, rank=0, world_size=2) != base
    assert order(seed=1, epoch=1, rank=0, world_size=2) != base
    assert order(seed=1, epoch=0, rank=1, world_size=2) != base
    expected = np.random.default_rng([1, 0, 0, 0, 0x5F]).permutation(64).tolist()
    assert base == expected  # the documented draw: (seed, epoch, consumer, window number)


def test_shuffle_state_resumes_mid_window_and_releases_what_it_emitted():
    ctx = Context(seed=3)
    pipe = Pipeline([ShardList(items(11)), Shuffle(4)], ctx)
    full = [s.index for s in pipe]
    pipe = Pipeline([ShardList(items(11)), Shuffle(4)], ctx)
    pipe.reset()
    shuffle = pipe.stages[-1]
    assert shuffle.get_state() == {"source": {"pos": 0}, "window": 0, "emitted": 0}  # nothing read yet
    head = [pipe.next().index for _ in range(6)]
    assert head == full[:6]
    state = json.loads(json.dumps(pipe.get_state()))
    assert state["stages"] == {"source": {"pos": 4}, "window": 1, "emitted": 2}
    assert sum(x is None for x in shuffle._window) == 2  # emitted samples are not held
    again = Pipeline([ShardList(items(11)), Shuffle(4)], ctx)
    again.reset(state)
    assert [s.index for s in again] == full[6:]


# -- shard lists -----------------------------------------------------------------------------
def test_expand_urls_patterns_lists_and_manifests(tmp_path: Path):
    shards = expand_urls("a.tar::b-{0..2}.tar")
    assert [(s.url, s.index) for s in shards] == [("a.tar", 0), ("b-0.tar", 1), ("b-1.tar", 2), ("b-2.tar", 3)]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"shards": [{"name": "x.tar", "samples": 3, "bytes": 1024, "sha256": "ab" * 32}]}))
    shards = expand_urls(["c.tar", str(manifest)])
    assert shards == [Shard("c.tar", 0), Shard(str(tmp_path / "x.tar"), 1, 3, 1024, "ab" * 32)]
    with pytest.raises(ValueError, match=r"^no shards in \[\]$"):
        expand_urls([])


def test_epoch_order():
    assert epoch_order(5, 1, 0, False).tolist() == [0, 1, 2, 3, 4]
    a = epoch_order(50, 1, 0, True).tolist()
    assert sorted(a) == list(range(50)) and a != list(range(50))
    assert epoch_order(50, 1, 0, True).tolist() == a
    assert epoch_order(50, 1, 1, True).tolist() != a and epoch_order(50, 2, 0, True).tolist() != a
    assert a == np.random.default_rng([1, 0, 0x5A4D]).permutation(50).tolist()


def test_shard_state_round_trips_every_field():
    shard = Shard("s.tar", 4, samples=9, size=1234, sha256="cd" * 32, start=2, stop=7, pad=True)
    assert Shard.from_state(json.loads(json.dumps(shard.to_state()))) == shard


def test_shard_list_peek_and_state():
    stage = ShardList(items(5))
    Pipeline([stage]).reset()
    assert [s.index for s in stage.peek(3)] == [0, 1, 2]
    assert stage.next().index == 0 and stage.get_state() == {"pos": 1}
    assert [s.index for s in stage.peek(10)] == [1, 2, 3, 4]  # no further than the end
    stage.reset({"pos": 4})
    assert [s.index for s in stage.peek(2)] == [4] and stage.next().index == 4
    with pytest.raises(StopIteration):
        stage.next()


@pytest.mark.parametrize(
    "by, ctx, expected",
    [
        ("all", dict(rank=1, world_size=2, worker=0, num_workers=2), [2, 6, 10]),  # consumer 2 of 4
        ("node", dict(rank=1, world_size=2, worker=0, num_workers=2), [1, 3, 5, 7, 9, 11]),
        ("worker", dict(rank=1, world_size=2, worker=1, num_workers=3), [1, 4, 7, 10]),
    ],
)
def test_split_shards_and_what_it_prefetches(by: str, ctx: dict, expected: list[int]):
    split = SplitShards(by)
    pipe = Pipeline([ShardList(items(12)), split], Context(**ctx))
    pipe.reset()
    assert [s.index for s in split.peek(2)] == expected[:2]  # the shards the opener is told to open ahead
    assert pipe.next().index == expected[0]
    assert [s.index for s in split.peek(5)] == expected[1:6]
    state = json.loads(json.dumps(pipe.get_state()))
    rest = Pipeline([ShardList(items(12)), SplitShards(by)], Context(**ctx))
    rest.reset(state)
    assert [s.index for s in rest] == expected[1:]


def test_split_shards_by_must_be_known():
    with pytest.raises(ValueError, match=r"^split by must be 'all', 'node' or 'worker', not 'rank'$"):
        SplitShards("rank")


def test_split_samples_keeps_every_count_th_and_resumes():
    ctx = Context(rank=0, world_size=1, worker=1, num_workers=3)
    assert indices([ShardList(items(10)), SplitSamples()], ctx) == [1, 4, 7]
    pipe = Pipeline([ShardList(items(10)), SplitSamples()], ctx)
    pipe.reset()
    assert pipe.next().index == 1
    state = json.loads(json.dumps(pipe.get_state()))
    assert state["stages"] == {"seen": 2, "source": {"pos": 2}}
    rest = Pipeline([ShardList(items(10)), SplitSamples()], ctx)
    rest.reset(state)
    assert [s.index for s in rest] == [4, 7]


# -- grouping members into samples -------------------------------------------------------------
class Members(Stage):
    """A source of untar members from a list; state: the position (no state_before)."""

    def __init__(self, members: list):
        super().__init__()
        self.members, self.pos = members, 0

    def reset(self, state=None) -> None:
        self.pos = int(state["pos"]) if state else 0

    def next(self):
        if self.pos >= len(self.members):
            raise StopIteration
        self.pos += 1
        return self.members[self.pos - 1]

    def get_state(self):
        return {"pos": self.pos}


def member(shard: Shard, name: str, data: bytes = b"d"):
    from shardpipe.format.sample import split_name
    from shardpipe.stages.untar import Member

    parts = split_name(name)
    key, ext = parts if parts is not None else (None, None)
    return Member(shard, name, data, key, ext, ())


A, B = Shard("a.tar", 0), Shard("b.tar", 1, pad=True)


def group(members: list, ctx: Context | None = None) -> list[dict]:
    return list(Pipeline([Members(members), GroupSamples()], ctx or Context()))


def test_members_group_by_key_and_shard():
    got = group([
        member(A, "__meta__.json"), member(A, "k1.jpg", b"J1"), member(A, "README"), member(A, "k1.cls", b"1"),
        member(A, "k2.jpg", b"J2"), member(B, "k2.jpg", b"J3"),
    ])  # fmt: skip
    assert got == [
        {"__key__": "k1", "__url__": "a.tar", "__shard__": 0, "jpg": b"J1", "cls": b"1"},
        {"__key__": "k2", "__url__": "a.tar", "__shard__": 0, "jpg": b"J2"},
        {"__key__": "k2", "__url__": "b.tar", "__shard__": 1, "__pad__": True, "jpg": b"J3"},  # same key, next shard
    ]


def test_a_sample_cut_by_a_broken_shard_is_dropped_whole():
    from shardpipe.stages.untar import BROKEN, Member

    broken = Member(A, BROKEN, b"", None, None, ())
    got = group([member(A, "k1.jpg"), member(A, "k1.cls"), broken, member(B, "k2.jpg")])
    assert [s["__key__"] for s in got] == ["k2"]
    got = group([member(A, "k1.jpg"), member(A, "__x__"), broken, member(B, "k2.jpg")])  # after metadata too
    assert [s["__key__"] for s in got] == ["k2"]


def test_duplicate_members_are_an_error_or_a_counted_skip():
    members = [member(A, "k1.jpg"), member(A, "k1.jpg"), member(A, "k1.jpg"), member(A, "k2.jpg")]
    ctx = Context(errors=ErrorHandler("skip"))
    assert [s["__key__"] for s in group(members, ctx)] == ["k2"]
    assert ctx.errors.counts == {"DuplicateMemberError": 1}  # one sample, counted once
    with pytest.raises(DuplicateMemberError, match=r"^sample 'k1' in shard a.tar has two 'jpg' members$"):
        group(members)


def test_a_dotted_extension_is_logged_once(caplog, monkeypatch):
    import shardpipe.format.sample as sample_module

    monkeypatch.setattr(sample_module, "_warned_dotted", False)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        got = group([member(A, "img.v2.jpg"), member(A, "img.v2.cls"), member(A, "b.x.y")])
    assert [sorted(s) for s in got] == [
        ["__key__", "__shard__", "__url__", "v2.cls", "v2.jpg"],
        sorted(["__key__", "__shard__", "__url__", "x.y"]),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "tar member 'img.v2.jpg' reads as key 'img' with extension 'v2.jpg': keys end at the first dot of the "
        "file name; rename files with dots in their names if this is not meant"
    ]


def test_grouping_resumes_at_the_sample_boundary():
    members = [member(A, "k1.jpg"), member(A, "k1.cls"), member(A, "k2.jpg"), member(A, "k2.cls"), member(A, "k3.jpg")]
    pipe = Pipeline([Members(members), GroupSamples()], Context())
    pipe.reset()
    assert pipe.next()["__key__"] == "k1"
    state = json.loads(json.dumps(pipe.get_state()))
    assert state["stages"] == {"source": {"pos": 2}}  # before k2.jpg, which was read to end k1
    again = Pipeline([Members(members), GroupSamples()], Context())
    grouping = again.stages[-1]
    grouping.reset(state["stages"])  # the stage itself: the pipeline validates only its own stage types
    assert [(s["__key__"], sorted(s)) for s in iter(grouping.next, None) if s] == [
        ("k2", ["__key__", "__shard__", "__url__", "cls", "jpg"]),
        ("k3", ["__key__", "__shard__", "__url__", "jpg"]),
    ]
    pipe.reset()
    assert pipe.get_state()["stages"] == {"source": {"pos": 0}}


def test_shuffle_state_before_the_first_reset_is_the_start():
    ctx = Context(seed=3)
    fresh = Pipeline([ShardList(items(9)), Shuffle(4)], ctx)
    state = json.loads(json.dumps(fresh.get_state()))  # e.g. a checkpoint taken before the first batch
    assert state["stages"] == {"source": {"pos": 0}, "window": 0, "emitted": 0}
    resumed = Pipeline([ShardList(items(9)), Shuffle(4)], ctx)
    resumed.reset(state)
    assert [s.index for s in resumed] == [s.index for s in Pipeline([ShardList(items(9)), Shuffle(4)], ctx)]


def test_shard_list_shuffles_by_the_epoch_order():
    ctx = Context(seed=4, epoch=1)
    assert indices([ShardList(items(20), shuffle=True)], ctx) == epoch_order(20, 4, 1, True).tolist()
    assert indices([ShardList(items(20))], ctx) == list(range(20))


def test_split_shards_peek_behind_a_source_that_cannot_peek_is_empty():
    from shardpipe.stages import Map

    split = SplitShards("all")
    pipe = Pipeline([ShardList(items(6)), Map(lambda s: s), split], Context(worker=1, num_workers=2))
    pipe.reset()
    assert split.peek(2) == [] and [s.index for s in pipe] == [1, 3, 5]


@pytest.mark.servers
def test_expand_urls_reads_a_remote_manifest_with_the_storage_options(s3_store):
    doc = {"shards": [{"name": "a.tar", "samples": 2, "bytes": 10}]}
    s3_store.put("exp/manifest.json", json.dumps(doc).encode())
    shards = expand_urls(s3_store.url("exp/manifest.json"), s3_store.options())
    assert [(s.url, s.samples, s.size) for s in shards] == [(s3_store.url("exp/a.tar"), 2, 10)]


def test_split_samples_state_before_the_first_reset_is_the_start():
    ctx = Context(worker=1, num_workers=2)
    state = json.loads(json.dumps(Pipeline([ShardList(items(6)), SplitSamples()], ctx).get_state()))
    assert state["stages"] == {"seen": 0, "source": {"pos": 0}}
    resumed = Pipeline([ShardList(items(6)), SplitSamples()], ctx)
    resumed.reset(state)
    assert [s.index for s in resumed] == [1, 3, 5]


def test_grouping_state_before_the_first_reset_is_the_source_start():
    members = [member(A, "k1.jpg"), member(A, "k2.jpg")]
    state = json.loads(json.dumps(Pipeline([Members(members), GroupSamples()], Context()).get_state()))
    assert state["stages"] == {"source": {"pos": 0}}


@pytest.mark.servers
def test_expand_urls_globs_a_remote_store_with_the_storage_options(s3_store):
    for name in ("glob/a-0.tar", "glob/a-1.tar", "glob/b-0.tar"):
        s3_store.put(name, b"x")
    shards = expand_urls(s3_store.url("glob/a-*.tar"), s3_store.options())
    assert [(s.url, s.index) for s in shards] == [(s3_store.url("glob/a-0.tar"), 0), (s3_store.url("glob/a-1.tar"), 1)]


def test_manifest_shards_are_numbered_from_zero_by_default():
    from shardpipe.stages.shards import manifest_shards

    doc = {"shards": [{"url": "a.tar", "samples": 3, "bytes": 30, "sha256": "ab"}, {"url": "b.tar"}]}
    assert manifest_shards(doc) == [Shard("a.tar", 0, 3, 30, "ab"), Shard("b.tar", 1, None, None, None)]
    assert [s.index for s in manifest_shards(doc, first=5)] == [5, 6]


def test_an_endless_plans_position_is_bounded_by_message():
    from shardpipe.split.plan import ResampledShards
    from shardpipe.stages.shards import MAX_ENDLESS_POS
    from shardpipe.state import StateCheck

    shards = items(4)
    listing = ShardList(shards, plan=lambda ctx: ResampledShards(shards, ctx.seed, ctx.epoch, 0))
    Pipeline([listing], Context(seed=2))
    given = listing.check_state({"pos": MAX_ENDLESS_POS}, StateCheck(), None)
    assert given.count == MAX_ENDLESS_POS and given.last == ResampledShards(shards, 2, 0, 0)[MAX_ENDLESS_POS - 1]
    with pytest.raises(StateError) as e:
        listing.check_state({"pos": MAX_ENDLESS_POS + 1}, StateCheck(), None)
    assert str(e.value) == (
        f"state['pos']: must be <= {MAX_ENDLESS_POS} (draws of an endless plan), got {MAX_ENDLESS_POS + 1}"
    )


@pytest.mark.parametrize("worker", [0, 1, 2])
def test_split_shards_check_state_names_the_last_shard_only_when_it_came_here(worker: int):
    """For every state of a real run, what check_state passes up agrees with last_given()."""
    from shardpipe.state import StateCheck

    listing, split = ShardList(items(10)), SplitShards("worker")
    pipe = Pipeline([listing, split], Context(worker=worker, num_workers=3))
    pipe.reset()
    seen = []
    while True:
        try:
            seen.append(split.next())
        except StopIteration:
            break
        below = listing.check_state(listing.get_state(), StateCheck(), None)
        got = split.check_state(split.get_state(), StateCheck(), below)
        assert got == Given(below.count, split.last_given()) and got.last is seen[-1]
    assert [s.index for s in seen] == list(range(worker, 10, 3))
    # a count whose last shard went to another worker passes up no shard
    other = Given(worker + 2, items(10)[worker + 1])
    assert split.check_state({"seen": worker + 2}, StateCheck(), other) == Given(worker + 2, None)


def test_a_shuffle_state_cannot_have_emitted_more_than_the_buffer_holds():
    from shardpipe.state import StateCheck

    shuffle = Shuffle(4)
    assert shuffle.check_state({"emitted": 4}, StateCheck("s"), "below") == "below"
    with pytest.raises(StateError) as e:
        shuffle.check_state({"emitted": 5}, StateCheck("s"), "below")
    assert str(e.value) == "s['emitted']: must be <= 4 (the shuffle buffer's size), got 5"
