"""The stage contract: every stage saves and restores its position mid-epoch exactly."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable

import pytest

from shardpipe.augment import RandomResizedCrop
from shardpipe.errors import CorruptShardError, StateError
from shardpipe.split.plan import ResampledShards, plan_ranges
from shardpipe.stages import (
    Augment,
    Batch,
    Context,
    Decode,
    Filter,
    GeneratorStage,
    GroupSamples,
    Map,
    ParallelMap,
    Pipeline,
    RequireFields,
    Shard,
    ShardList,
    Shuffle,
    SplitSamples,
    SplitShards,
    Stage,
    Take,
    Untar,
    expand_urls,
)
from shardpipe.stages.block import BlockShuffleSamples

from .helpers import make_samples, write_shards


def ident(item):
    """Comparable identity of a pipeline item (sample, batch, shard or member)."""
    if isinstance(item, dict):
        key = item.get("__key__")
        return tuple(key) if isinstance(key, list) else key
    if isinstance(item, tuple):
        return (item[0].url, item[1])
    return getattr(item, "url", item)


def gen_pairs(it):
    """A user generator stage: yields samples two at a time as lists."""
    buf = []
    for s in it:
        buf.append(s["__key__"])
        if len(buf) == 2:
            yield {"__key__": list(buf)}
            buf.clear()


#: an indexed copy of the test shards (written by ShardWriter, so with manifest.index), set by the fixture
INDEXED: list = []

CHAINS: dict[str, Callable[[list], list]] = {
    "block-shuffle": lambda sh: [BlockShuffleSamples(INDEXED[0], block_size=4, policy="pad")],
    "shards": lambda sh: [ShardList(sh, shuffle=True)],
    "split-shards": lambda sh: [ShardList(sh, shuffle=True), SplitShards()],
    "split-shards-worker": lambda sh: [ShardList(sh, shuffle=True), SplitShards("worker"), Untar(), GroupSamples()],
    "split-shards-node": lambda sh: [ShardList(sh), SplitShards("node"), Untar(), GroupSamples()],
    "untar": lambda sh: [ShardList(sh), Untar()],
    "group": lambda sh: [ShardList(sh, shuffle=True), Untar(), GroupSamples()],
    # a source without state_before(): GroupSamples snapshots the state before each member
    "group-after-map": lambda sh: [ShardList(sh, shuffle=True), Untar(), Map(lambda m: m), GroupSamples()],
    "split-samples": lambda sh: [ShardList(sh), Untar(), GroupSamples(), SplitSamples()],
    "require": lambda sh: [ShardList(sh), Untar(), GroupSamples(), RequireFields(["jpg", "cls"])],
    "shuffle": lambda sh: [ShardList(sh, shuffle=True), Untar(), GroupSamples(), Shuffle(7)],
    # its resume states' window numbers checked against the 23 items of the epoch (every stop, both splits)
    "shuffle-planned": lambda sh: [ShardList(sh, shuffle=True), Untar(), GroupSamples(), Shuffle(5, lambda c: 23)],
    "map-filter": lambda sh: [
        ShardList(sh),
        Untar(),
        GroupSamples(),
        Map(lambda s: s),
        Filter(lambda s: s["cls"] != 2),
    ],
    "decode": lambda sh: [ShardList(sh), Untar(), GroupSamples(), Shuffle(5), Decode(transform=RandomResizedCrop(16))],
    "decode-encoded": lambda sh: [ShardList(sh), Untar(), GroupSamples(), Shuffle(4), Decode("encoded")],
    "augment": lambda sh: [
        ShardList(sh),
        Untar(),
        GroupSamples(),
        Decode(),
        Augment(RandomResizedCrop(8), num_threads=2),
        Batch(3, drop_last=True),
    ],
    "parallel-map": lambda sh: [ShardList(sh), Untar(), GroupSamples(), ParallelMap(lambda s: s, num_threads=2)],
    "decode-threads": lambda sh: [
        ShardList(sh, shuffle=True),
        Untar(),
        GroupSamples(),
        Shuffle(6),
        Decode(num_threads=3),
    ],
    "batch": lambda sh: [
        ShardList(sh, shuffle=True),
        Untar(),
        GroupSamples(),
        Shuffle(9),
        Decode(transform=RandomResizedCrop(8), num_threads=2),
        Batch(4),
    ],
    "generator": lambda sh: [ShardList(sh), Untar(), GroupSamples(), GeneratorStage(gen_pairs)],
    "resample-take": lambda sh: [
        ShardList(sh, plan=lambda c: ResampledShards(sh, c.seed, c.epoch, c.split_index)),
        Untar(),
        GroupSamples(),
        Take(30),
    ],
    "ranges": lambda sh: [
        ShardList(
            sh,
            plan=lambda c: plan_ranges(
                [dataclasses.replace(s, samples=n) for s, n in zip(sh, [6, 1, 9, 7])],
                seed=c.seed,
                epoch=c.epoch,
                rank=0,
                world_size=2,
                worker=c.worker,
                num_workers=c.num_workers,
                shuffle=True,
                policy="pad",
            ),
        ),
        Untar(),
        GroupSamples(),
    ],
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    urls = write_shards(root, make_samples(23), [6, 1, 9, 7])
    from shardpipe import ShardWriter
    from shardpipe.indexed import IndexedShards

    with ShardWriter(str(root / "indexed-%02d.tar"), maxcount=6) as w:
        for sample in make_samples(23):
            w.write(sample)
    INDEXED[:] = [IndexedShards(str(root / "manifest.json"))]
    return expand_urls(urls)


def run(chain: str, shards, state=None, epoch=2, split=(0, 1)):
    ctx = Context(seed=11, epoch=epoch, worker=split[0], num_workers=split[1])
    p = Pipeline(CHAINS[chain](shards), ctx)
    p.reset(state)
    return p


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("split", [(0, 1), (1, 2)])
def test_save_and_load_mid_epoch_for_every_stage(chain, split, shards):
    full = [ident(x) for x in run(chain, shards, split=split)]
    assert full, "the chain produced nothing"
    for stop in sorted({0, 1, len(full) // 2, len(full) - 1, len(full)}):
        p = run(chain, shards, split=split)
        head = [ident(next(p)) for _ in range(stop)]
        state = json.loads(json.dumps(p.get_state()))  # must survive JSON
        rest = [ident(x) for x in run(chain, shards, state=state, epoch=0, split=split)]
        assert head + rest == full, f"{chain}: resume after {stop} items diverged"


def stage_classes() -> set[type]:
    """Every Stage subclass shardpipe defines (its modules imported first, so none hides)."""
    import importlib
    import pkgutil

    import shardpipe

    for info in pkgutil.walk_packages(shardpipe.__path__, "shardpipe."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # an optional dependency (DALI, webdataset, ...) is missing
            if (e.name or "").startswith("shardpipe"):
                raise
    found, todo = set(), [Stage]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("shardpipe.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


#: stages that are not themselves a step of a chain (with the reason)
NOT_A_STEP = {Pipeline: "runs the chains: every case above resumes through it"}


def test_every_stage_class_has_a_resume_case(shards):
    """Fails when a new Stage subclass has no chain in CHAINS (so no resume check)."""
    covered = {type(stage) for make in CHAINS.values() for stage in make(shards)}
    missing = stage_classes() - covered - set(NOT_A_STEP)
    assert not missing, f"add a resume case to CHAINS for: {sorted(c.__qualname__ for c in missing)}"
    assert {Untar, Decode, Augment, Batch} <= covered  # the discovery is real


def test_state_is_small(shards):
    p = run("batch", shards)
    next(p)
    assert len(json.dumps(p.get_state())) < 1000


def test_state_version_is_checked(shards):
    p = run("group", shards)
    state = p.get_state()
    state["version"] = 99
    with pytest.raises(ValueError, match="pipeline state has version 99"):
        run("group", shards, state=state)


def test_shuffle_windows_permute_within_window(shards):
    plain = [ident(x) for x in run("group", shards)]
    shuffled = [ident(x) for x in run("shuffle", shards)]
    assert shuffled != plain and sorted(shuffled) == sorted(plain)
    for w in range(0, len(plain), 7):  # each window holds the same samples as the input's
        assert sorted(shuffled[w : w + 7]) == sorted(plain[w : w + 7])


def test_plain_callables_become_map_stages(shards):
    p = Pipeline([ShardList(shards), Untar(), GroupSamples(), lambda s: s["__key__"].upper()], Context())
    assert next(iter(p)) == "SAMPLE00000"


def test_shard_state_keeps_the_manifest_checks():
    shard = Shard("s3://b/x.tar", 3, samples=10, size=1234, sha256="ab" * 32, start=2, stop=7, pad=True)
    assert Shard.from_state(json.loads(json.dumps(shard.to_state()))) == shard


def test_pipeline_close_releases_threads_and_files(shards):
    with Pipeline([ShardList(shards), Untar(), GroupSamples(), Decode(num_threads=2)], Context()) as p:
        next(iter(p))
        untar, decode = p.stages[1], p.stages[3]
        assert untar._tar is not None and decode._pool is not None
    assert untar._tar is None and decode._pool is None


def test_untar_refuses_a_state_whose_shard_the_plan_did_not_give_there(shards):
    """Untar.reset on its own (past the pipeline's checks): the shard named must be the one the plan gave."""
    p = run("untar", shards)
    per_sample = len(make_samples(1)[0]) - 1  # members a sample has (all but __key__)
    for _ in range(6 * per_sample + 2):  # into the second shard (the first holds 6 samples)
        p.next()
    state = p.get_state()["stages"]
    assert state["shard"]["index"] == 1
    untar = p.stages[1]
    moved = {**state, "shard": {**state["shard"], "index": 3}}
    with pytest.raises(StateError, match=r"^resume state names shard 3, which the plan did not give at this point$"):
        untar.reset(moved)
    untar.reset(state)  # the real one still loads
    assert untar.next().shard.index == 1


def test_untar_times_its_reads_apart_from_its_parsing(shards, monkeypatch):
    from shardpipe.format.tar.reader import TarStream

    per_shard: list[float] = []  # each shard's seconds waiting for bytes, as its reader counted them
    close = TarStream.close
    monkeypatch.setattr(TarStream, "close", lambda self: (per_shard.append(self.read_seconds), close(self))[1])
    p = run("untar", shards)
    n = sum(1 for _ in p)
    assert n == sum(len(s) - 1 for s in make_samples(23))  # every member of every sample
    assert set(p.ctx.timers) == {"read", "untar"}
    assert len(per_shard) == len(shards) and min(per_shard) > 0
    assert p.ctx.timers["read"] == pytest.approx(sum(per_shard), rel=1e-9)  # all of it, shard after shard
    assert p.ctx.timers["untar"] > 0


def test_untar_verifies_a_shard_that_has_a_size_but_no_sha256(shards):
    """verify=True with only a size in the manifest: the bytes streamed are counted against it."""
    with open(shards[0].url, "rb") as f:
        data = f.read()
    shard = dataclasses.replace(shards[0], size=len(data), sha256=None)

    def members(stream_bytes: bytes) -> int:
        opener = lambda s, offset: io.BytesIO(stream_bytes[offset:])  # noqa: E731 - (no size check of its own)
        with Pipeline([ShardList([shard]), Untar(opener, verify=True)], Context()) as p:
            return sum(1 for _ in p)

    assert members(data) == sum(len(s) - 1 for s in make_samples(6))
    with pytest.raises(
        CorruptShardError, match=rf"holds at least {len(data) + 512} bytes but its manifest entry says {len(data)}$"
    ):
        members(data + bytes(512))  # one block more than the manifest says, after the end of the archive


def test_untar_tells_its_opener_which_shards_come_next(shards):
    told: list[list[int]] = []

    class Ahead:
        depth = 2

        def ahead(self, upcoming):
            told.append([s.index for s in upcoming])

        def __call__(self, shard, offset):
            return open(shard.url, "rb")

    with Pipeline([ShardList(shards), Untar(Ahead())], Context()) as p:
        assert sum(1 for _ in p) == sum(len(s) - 1 for s in make_samples(23))
    assert told == [[1, 2], [2, 3], [3], []]  # at each shard's opening, the next two of the plan


def test_untar_refuses_a_shard_state_over_a_source_that_cannot_say_what_it_gave(shards):
    p = Pipeline([ShardList(shards), Map(lambda shard: shard), Untar()], Context())
    p.reset(None)
    p.next()
    state = p.get_state()["stages"]
    untar = p.stages[2]
    with pytest.raises(StateError, match=r"^resume state names shard 0, which the plan did not give at this point$"):
        untar.reset(state)
