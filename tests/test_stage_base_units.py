"""The stage contract (``stages.base``) on a numbered source: reset/next/get_state, states nested under
``"source"``, the context, and the generic stages (Map, Filter, Take, GeneratorStage, Pipeline)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shardpipe.errors import ErrorHandler, StateError
from shardpipe.stages import base
from shardpipe.stages.base import Context, Filter, GeneratorStage, Map, Pipeline, Stage, Take
from shardpipe.state import COUNT, STATE_VERSION, StateCheck


class Numbers(Stage[int]):
    """Yields 0..n-1; state ``{"pos": i}``; logs every reset's state and counts its pulls."""

    state_fields = {"pos": COUNT}

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.pos = 0
        self.resets: list[Any] = []
        self.pulls = 0
        self.closed = 0

    def reset(self, state=None) -> None:
        self.resets.append(state)
        self.pos = state["pos"] if state else 0

    def next(self) -> int:
        self.pulls += 1
        if self.pos >= self.n:
            raise StopIteration
        self.pos += 1
        return self.pos - 1

    def get_state(self) -> dict:
        return {"pos": self.pos}

    def close(self) -> None:
        self.closed += 1


class Passing(Stage[Any]):
    """A stage that only passes its source's items on: the base class's reset and get_state."""

    def next(self) -> Any:
        return self.pull()


class FakeClock:
    """``time.perf_counter`` stepping by ``step`` seconds per call."""

    def __init__(self, step: float):
        self.now, self.step = 100.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


def pairs(it: Iterator[int]) -> Iterator[tuple[int, int]]:
    for a in it:
        b = next(it, None)
        if b is None:
            return
        yield (a, b)


# -- Context -------------------------------------------------------------------------------
def test_a_context_starts_as_one_consumer_of_epoch_0():
    c = Context()
    assert (c.seed, c.epoch, c.rank, c.world_size, c.worker, c.num_workers) == (0, 0, 0, 1, 0, 1)
    assert c.timers == {} and c.counts == {} and c.progress is None
    assert isinstance(c.errors, ErrorHandler) and c.errors.on_error == "raise"
    assert (c.split_index, c.split_count) == (0, 1)
    assert Context().timers is not c.timers and Context().errors is not c.errors


@pytest.mark.parametrize(
    ("rank", "world", "worker", "workers", "index", "count"),
    [(0, 1, 0, 1, 0, 1), (2, 3, 1, 4, 9, 12), (1, 2, 0, 3, 3, 6), (0, 4, 2, 3, 2, 12), (3, 4, 0, 1, 3, 4)],
)
def test_split_index_is_rank_major_then_worker(rank, world, worker, workers, index, count):
    c = Context(rank=rank, world_size=world, worker=worker, num_workers=workers)
    assert (c.split_index, c.split_count) == (index, count)


def test_where_publishes_the_stage_and_shard_only_when_watched():
    Context().where("untar", "a.tar")  # not watched: nothing to call
    seen = []
    c = Context(progress=lambda stage, url: seen.append((stage, url)))
    c.where("untar", "a.tar")
    c.where("decode")
    assert seen == [("untar", "a.tar"), ("decode", None)]


def test_add_time_sums_seconds_and_items_per_stage():
    c = Context()
    c.add_time("read", 0.5)
    assert c.timers == {"read": 0.5} and c.counts == {}  # no items: no count at all
    c.add_time("read", 0.25, 2)
    c.add_time("decode", 1.0, 1)
    c.add_time("read", 0.125, 3)
    assert c.timers == {"read": 0.875, "decode": 1.0}
    assert c.counts == {"read": 5, "decode": 1}


def test_add_time_from_threads_loses_nothing():
    c = Context()

    def work() -> None:
        for _ in range(2000):
            c.add_time("decode", 1.0, 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.timers == {"decode": 8000.0} and c.counts == {"decode": 8000}


def test_the_timer_lock_is_new_in_a_forked_child(monkeypatch):
    held = threading.Lock()
    held.acquire()  # as if a decode thread held it at the fork
    monkeypatch.setattr(base, "_TIMER_LOCK", held)
    base._new_timer_lock()
    fresh = base._TIMER_LOCK
    assert fresh is not held and not fresh.locked()
    c = Context()
    c.add_time("read", 1.0, 1)  # would wait forever on the held lock
    assert c.timers == {"read": 1.0}
    assert not fresh.locked()


# -- Stage -----------------------------------------------------------------------------------
def test_a_new_stage_has_no_source_and_its_own_context():
    s, t = Passing(), Passing()
    assert s.source is None and isinstance(s.ctx, Context) and s.ctx is not t.ctx
    assert s.timer_name is None and s.state_fields == {}
    src, ctx = Numbers(3), Context(seed=4)
    s.bind(src, ctx)
    assert s.source is src and s.ctx is ctx


def test_the_base_reset_passes_the_source_its_part_of_the_state():
    src = Numbers(5)
    s = Passing()
    s.bind(src, Context())
    s.reset()
    s.reset(None)
    s.reset({})
    s.reset({"source": {"pos": 3}})
    s.reset({"source": None})
    assert src.resets == [None, None, None, {"pos": 3}, None]
    assert s.next() == 0
    Passing().reset({"source": {"pos": 1}})  # no source: nothing to reset


def test_the_base_state_nests_the_source_state():
    src = Numbers(5)
    s = Passing()
    s.bind(src, Context())
    s.reset()
    assert [next(s), next(s)] == [0, 1]
    assert s.get_state() == {"source": {"pos": 2}}
    assert Passing().get_state() == {}


def test_the_base_next_is_for_subclasses():
    with pytest.raises(NotImplementedError):
        Stage().next()
    with pytest.raises(NotImplementedError):
        next(Stage())


def test_the_base_check_state_passes_up_what_came_from_below():
    below = object()
    assert Passing().check_state({"source": None}, StateCheck(), below) is below
    assert Passing().check_state({}, StateCheck(), None) is None


def test_a_stage_is_its_own_iterator():
    src = Numbers(3)
    s = Passing()
    s.bind(src, Context())
    s.reset()
    assert iter(s) is s
    assert list(s) == [0, 1, 2]


def test_pull_without_a_source_names_the_stage():
    with pytest.raises(AssertionError) as e:
        Passing().pull()
    assert str(e.value) == "Passing has no source"


# -- Map and Filter -------------------------------------------------------------------------
def test_map_applies_fn_untimed_without_a_name():
    ctx = Context()
    p = Pipeline([Numbers(4), Map(lambda x: x * 10)], ctx)
    assert list(p) == [0, 10, 20, 30]
    assert ctx.timers == {} and ctx.counts == {}
    assert p.stages[1].timer_name is None


def test_a_named_map_times_only_its_own_work(monkeypatch):
    clock = FakeClock(0.25)
    monkeypatch.setattr(base, "time", clock)
    calls = []

    def fn(x: int) -> int:
        calls.append(x)
        return x + 1

    ctx = Context()
    m = Map(fn, name="tag")
    assert m.timer_name == "tag" and m.fn is fn
    p = Pipeline([Numbers(3), m], ctx)
    assert list(p) == [1, 2, 3]
    assert calls == [0, 1, 2]
    assert ctx.timers == {"tag": 0.75} and ctx.counts == {"tag": 3}  # 0.25 s and 1 item per call


def test_map_state_is_its_source_state():
    p = Pipeline([Numbers(5), Map(str)], Context())
    assert [p.next(), p.next()] == ["0", "1"]
    assert p.get_state()["stages"] == {"source": {"pos": 2}}


def test_filter_keeps_the_items_its_predicate_accepts():
    src = Numbers(10)
    p = Pipeline([src, Filter(lambda x: x % 3 == 0)], Context())
    assert p.next() == 0
    assert p.next() == 3
    assert src.pulls == 4
    assert list(p) == [6, 9]
    assert p.get_state()["stages"] == {"source": {"pos": 10}}
    assert list(Pipeline([Numbers(4), Filter(lambda x: False)], Context())) == []


# -- Take -------------------------------------------------------------------------------------
def test_take_ends_the_epoch_after_limit_items_without_pulling_more():
    src = Numbers(10)
    take = Take(3)
    assert take.limit == 3
    p = Pipeline([src, take], Context())
    assert take.get_state() == {"taken": 0, "source": {"pos": 0}}
    assert list(p) == [0, 1, 2]
    assert src.pulls == 3
    assert take.get_state() == {"taken": 3, "source": {"pos": 3}}
    with pytest.raises(StopIteration):
        take.next()
    assert src.pulls == 3


def test_take_of_a_short_source_ends_with_it():
    src = Numbers(2)
    p = Pipeline([src, Take(5)], Context())
    assert list(p) == [0, 1]
    assert p.get_state()["stages"] == {"taken": 2, "source": {"pos": 2}}


def test_take_zero_reads_nothing():
    src = Numbers(4)
    assert list(Pipeline([src, Take(0)], Context())) == []
    assert src.pulls == 0


def test_take_state_resumes_the_count_and_the_source():
    src = Numbers(10)
    p = Pipeline([src, Take(6)], Context())
    assert [p.next(), p.next(), p.next(), p.next()] == [0, 1, 2, 3]
    state = json.loads(json.dumps(p.get_state()))
    assert state == {"version": STATE_VERSION, "epoch": 0, "stages": {"taken": 4, "source": {"pos": 4}}}
    src2 = Numbers(10)
    again = Pipeline([src2, Take(6)], Context())
    again.reset(state)
    assert src2.resets == [{"pos": 4}]
    assert list(again) == [4, 5]
    assert again.get_state()["stages"] == {"taken": 6, "source": {"pos": 6}}
    again.reset()
    assert again.stages[-1].get_state() == {"taken": 0, "source": {"pos": 0}}


def test_take_refuses_a_state_past_its_limit():
    p = Pipeline([Numbers(10), Take(6)], Context())
    p.reset({"version": 1, "epoch": 0, "stages": {"taken": 6, "source": {"pos": 6}}})  # the edge: accepted
    assert list(p) == []
    with pytest.raises(StateError) as e:
        p.reset({"version": 1, "epoch": 0, "stages": {"taken": 7, "source": {"pos": 7}}})
    assert str(e.value) == "state['stages']['taken']: must be <= 6 (this stage takes 6 items), got 7"
    with pytest.raises(StateError) as e:
        p.reset({"version": 1, "epoch": 0, "stages": {"taken": -1, "source": {"pos": 0}}})
    assert str(e.value) == "state['stages']['taken']: must be >= 0, got -1"


def test_take_check_state_passes_up_what_came_from_below():
    below = object()
    assert Take(3).check_state({"taken": 3}, StateCheck(), below) is below
    with pytest.raises(StateError) as e:
        Take(3).check_state({"taken": 4}, StateCheck("here"), below)
    assert str(e.value) == "here['taken']: must be <= 3 (this stage takes 3 items), got 4"


# -- GeneratorStage -----------------------------------------------------------------------------
def test_a_generator_stage_wraps_a_generator_function():
    src = Numbers(7)
    g = GeneratorStage(pairs)
    assert g.fn is pairs
    assert g.get_state() == {"start": None, "yielded": 0}
    p = Pipeline([src, g], Context())
    assert list(p) == [(0, 1), (2, 3), (4, 5)]
    assert g.get_state() == {"start": {"pos": 0}, "yielded": 3}


def test_a_generator_stage_before_reset_refuses_next():
    g = GeneratorStage(pairs)
    g.bind(Numbers(3), Context())
    with pytest.raises(AssertionError) as e:
        g.next()
    assert str(e.value) == "call reset() before next()"


def test_a_generator_stage_needs_a_source():
    with pytest.raises(AssertionError):
        GeneratorStage(pairs).reset()


def test_a_generator_stage_resumes_by_replay_from_its_start():
    src = Numbers(11)
    p = Pipeline([src, Map(lambda x: x), GeneratorStage(pairs)], Context())
    p.reset({"version": 1, "epoch": 0, "stages": {"start": {"source": {"pos": 2}}, "yielded": 0}})
    assert src.resets == [{"pos": 2}]
    assert [p.next(), p.next()] == [(2, 3), (4, 5)]
    state = json.loads(json.dumps(p.get_state()))
    assert state["stages"] == {"start": {"source": {"pos": 2}}, "yielded": 2}
    src2 = Numbers(11)
    again = Pipeline([src2, Map(lambda x: x), GeneratorStage(pairs)], Context())
    again.reset(state)
    assert src2.resets == [{"pos": 2}]
    assert src2.pos == 6  # replayed: the two pairs yielded before, pulled again and dropped
    assert again.stages[-1].get_state() == {"start": {"source": {"pos": 2}}, "yielded": 2}
    assert list(again) == [(6, 7), (8, 9)]
    assert again.stages[-1].get_state() == {"start": {"source": {"pos": 2}}, "yielded": 4}


def test_a_generator_stage_with_no_start_state_starts_its_source_afresh():
    src = Numbers(4)
    p = Pipeline([src, GeneratorStage(pairs)], Context())
    p.reset({"version": 1, "epoch": 0, "stages": {"start": None, "yielded": 1}})
    assert src.resets == [None]
    assert p.stages[-1].get_state() == {"start": {"pos": 0}, "yielded": 1}
    assert list(p) == [(2, 3)]
    p.reset()  # a new epoch: the generator starts over
    assert src.resets == [None, None]
    assert p.stages[-1].get_state() == {"start": {"pos": 0}, "yielded": 0}
    assert list(p) == [(0, 1), (2, 3)]


# -- Pipeline -----------------------------------------------------------------------------------
def test_a_pipeline_needs_a_stage():
    with pytest.raises(ValueError) as e:
        Pipeline([])
    assert str(e.value) == "a pipeline needs at least one stage"


def test_a_pipeline_chains_its_stages_on_one_context():
    src, take = Numbers(5), Take(2)
    ctx = Context(seed=9)
    p = Pipeline([src, str, take], ctx)
    assert p.ctx is ctx
    assert len(p.stages) == 3 and p.stages[0] is src and p.stages[2] is take
    mapped = p.stages[1]
    assert type(mapped) is Map and mapped.fn is str and mapped.timer_name is None
    assert src.source is None and mapped.source is src and take.source is mapped
    assert all(s.ctx is ctx for s in p.stages)
    assert p.source is None
    assert list(p) == ["0", "1"]


def test_a_pipeline_without_a_context_makes_one():
    src = Numbers(2)
    p = Pipeline([src])
    assert isinstance(p.ctx, Context) and src.ctx is p.ctx
    assert p.ctx.epoch == 0 and p.ctx.seed == 0
    assert Pipeline([Numbers(1)]).ctx is not p.ctx


def test_a_pipeline_starts_on_first_use_and_only_then():
    src = Numbers(3)
    p = Pipeline([src])
    assert src.resets == []
    assert p.get_state() == {"version": STATE_VERSION, "epoch": 0, "stages": {"pos": 0}}
    assert p.next() == 0
    assert src.resets == [None]
    assert p.next() == 1
    assert iter(p) is p
    assert src.resets == [None]  # iterating a started pipeline goes on where it is
    assert list(p) == [2]
    src2 = Numbers(3)
    q = Pipeline([src2])
    assert iter(q) is q and src2.resets == [None]
    assert list(q) == [0, 1, 2] and src2.resets == [None]


def test_a_pipeline_reset_starts_the_epoch_over():
    src = Numbers(3)
    p = Pipeline([src])
    assert list(p) == [0, 1, 2]
    p.reset()
    assert src.resets == [None, None]
    assert list(p) == [0, 1, 2]


def test_set_epoch_selects_the_epoch_of_the_next_reset():
    ctx = Context(epoch=1)
    p = Pipeline([Numbers(2)], ctx)
    p.set_epoch(5)
    assert ctx.epoch == 5
    assert p.get_state() == {"version": 1, "epoch": 5, "stages": {"pos": 0}}


def test_a_pipeline_state_is_versioned_and_nests_every_stage():
    ctx = Context(epoch=3)
    p = Pipeline([Numbers(9), Map(str), Take(5)], ctx)
    assert Pipeline.STATE_VERSION == STATE_VERSION == 1
    assert [p.next(), p.next()] == ["0", "1"]
    assert p.get_state() == {"version": 1, "epoch": 3, "stages": {"taken": 2, "source": {"source": {"pos": 2}}}}


def test_a_pipeline_resumes_its_epoch_and_stages_from_a_state():
    ctx = Context(epoch=0)
    src = Numbers(9)
    p = Pipeline([src, Map(str), Take(5)], ctx)
    p.reset({"version": 1, "epoch": 4, "stages": {"taken": 3, "source": {"source": {"pos": 6}}}})
    assert ctx.epoch == 4 and type(ctx.epoch) is int
    assert src.resets == [{"pos": 6}]
    assert list(p) == ["6", "7"]
    p.reset({"version": 1, "epoch": 2, "stages": None})  # no stage state: the epoch from its start
    assert ctx.epoch == 2
    assert src.resets == [{"pos": 6}, None]
    assert list(p) == ["0", "1", "2", "3", "4"]


def test_a_pipeline_checks_a_state_before_using_any_of_it():
    ctx = Context(epoch=1)
    src = Numbers(9)
    p = Pipeline([src, Take(5)], ctx)
    with pytest.raises(StateError) as e:
        p.reset({"version": 1, "epoch": 7, "stages": {"taken": 1, "source": {"pos": -2}}})
    assert str(e.value) == "state['stages']['source']['pos']: must be >= 0, got -2"
    assert ctx.epoch == 1 and src.resets == []
    with pytest.raises(StateError) as e:
        p.reset({"version": 2, "epoch": 7, "stages": None})
    assert str(e.value) == "state['version']: pipeline state has version 2; this shardpipe reads 1"
    with pytest.raises(StateError) as e:
        p.reset({"version": 1, "epoch": 7, "stages": {"taken": 1}})
    assert str(e.value) == "state['stages']: missing key(s) 'source'"
    assert ctx.epoch == 1 and src.resets == []
    # refused: the pipeline has not started, so its first use still starts the epoch
    assert p.next() == 0 and src.resets == [None]


def test_close_closes_every_stage_that_can_be_closed_once():
    a, b = Numbers(3), Numbers(3)
    p = Pipeline([a, Map(str), b])
    p.close()
    assert (a.closed, b.closed) == (1, 1)
    with Pipeline([a, Filter(bool)]) as q:
        assert isinstance(q, Pipeline)
        assert a.closed == 1
    assert a.closed == 2


def test_leaving_a_with_block_on_an_error_closes_the_pipeline():
    a = Numbers(3)
    with pytest.raises(KeyError), Pipeline([a]):
        raise KeyError("x")
    assert a.closed == 1


def test_the_with_block_gives_the_pipeline_itself():
    p = Pipeline([Numbers(1)])
    with p as q:
        assert q is p
