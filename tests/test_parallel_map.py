"""ParallelMap on its own: where fn runs, how far it reads ahead, what its state says, how it stops."""

from __future__ import annotations

import threading
import time

import pytest

from shardpipe.errors import DecodeError, ErrorHandler
from shardpipe.stages import Context, ParallelMap, Pipeline, Stage
from shardpipe.state import COUNT


class Numbers(Stage[int]):
    """0, 1, ..., n - 1 with its position as state; pulling again after its end is an error."""

    state_fields = {"pos": COUNT}

    def __init__(self, n: int):
        super().__init__()
        self.n, self.pos, self.pulls, self.ended = n, 0, 0, False

    def reset(self, state=None) -> None:
        self.pos, self.ended = (int(state["pos"]) if state else 0), False

    def next(self) -> int:
        if self.ended:
            raise AssertionError("pulled again after the end")
        if self.pos >= self.n:
            self.ended = True
            raise StopIteration
        self.pos += 1
        self.pulls += 1
        return self.pos - 1

    def get_state(self):
        return {"pos": self.pos}


def pipeline(fn, n: int = 10, **kw) -> tuple[Pipeline, Numbers, ParallelMap]:
    source, stage = Numbers(n), ParallelMap(fn, **kw)
    return Pipeline([source, stage], Context()), source, stage


def test_by_default_fn_runs_inline_on_the_callers_thread():
    threads: list[str] = []
    p, _, stage = pipeline(lambda x: threads.append(threading.current_thread().name) or x * 2)
    assert stage.num_threads == 0
    assert list(p) == [2 * i for i in range(10)]
    assert set(threads) == {threading.current_thread().name}


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_named_for_shardpipe_at_most_num_threads_of_them_order_kept(threads):
    names: list[str] = []

    def slow(x: int) -> int:
        names.append(threading.current_thread().name)
        time.sleep(0.01)  # several items in flight at once: a larger pool would start more threads
        return x * 3

    p, _, stage = pipeline(slow, n=12, num_threads=threads)
    with p:
        assert list(p) == [3 * i for i in range(12)]
    assert all(n.startswith("shardpipe-map_") for n in names), names
    assert 1 <= len(set(names)) <= threads


@pytest.mark.parametrize(("threads", "depth"), [(1, 2), (2, 2), (3, 1)])
def test_it_reads_ahead_num_threads_times_depth_items(threads, depth):
    kw = {"depth": depth} if depth != 2 else {}  # 2 is the default
    p, source, _ = pipeline(lambda x: x, n=20, num_threads=threads, **kw)
    with p:
        assert p.next() == 0
        assert source.pulls == threads * depth  # what was submitted before the first result came back
        assert p.next() == 1
        assert source.pulls == threads * depth + 1  # one more for each one returned


def test_an_exhausted_source_is_not_pulled_again():
    p, source, _ = pipeline(lambda x: x, n=5, num_threads=2)
    with p:
        assert list(p) == list(range(5))
        with pytest.raises(StopIteration):
            p.next()  # (Numbers raises AssertionError if pulled after its end)
    assert source.pulls == 5


@pytest.mark.parametrize("threads", [1, 2])
def test_the_state_is_the_sources_after_the_last_item_returned_not_the_read_ahead(threads):
    p, source, _ = pipeline(lambda x: x, n=20, num_threads=threads)
    with p:
        assert p.get_state()["stages"] == {"source": {"pos": 0}}  # before anything is read
        assert [p.next() for _ in range(3)] == [0, 1, 2]
        assert source.pos > 3  # read ahead
        state = p.get_state()
        assert state["stages"] == {"source": {"pos": 3}}
    q, _, _ = pipeline(lambda x: x, n=20, num_threads=threads)
    q.reset(state)
    with q:
        assert list(q) == list(range(3, 20))


def test_a_state_asked_before_any_reset_is_the_sources():
    p, _, _ = pipeline(lambda x: x, n=4, num_threads=2)
    assert p.get_state()["stages"] == {"source": {"pos": 0}}


@pytest.mark.parametrize("threads", [0, 2])
def test_shardpipe_errors_go_to_on_error_and_the_item_is_skipped(threads):
    def odd_fails(x: int) -> int:
        if x % 2:
            raise DecodeError(f"item {x} is broken")
        return x

    source, stage = Numbers(8), ParallelMap(odd_fails, num_threads=threads)
    ctx = Context(errors=ErrorHandler("skip"))
    with Pipeline([source, stage], ctx) as p:
        assert list(p) == [0, 2, 4, 6]
    assert ctx.errors.counts == {"DecodeError": 4}


def test_other_errors_propagate():
    p, _, _ = pipeline(lambda x: 1 / (x - 2), n=5, num_threads=2)
    with p, pytest.raises(ZeroDivisionError):
        list(p)


def test_close_does_not_wait_for_a_running_item_and_drops_the_queued_ones():
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def blocked(x: int) -> int:
        calls.append(x)
        started.set()
        release.wait(3)
        return x

    p, _, stage = pipeline(blocked, n=10, num_threads=1)  # depth 2: item 1 waits in the pool's queue
    p.reset(None)
    got: list[int] = []
    consumer = threading.Thread(target=lambda: got.append(p.next()))
    consumer.start()
    assert started.wait(5)
    deadline = time.monotonic() + 5
    while len(stage._inflight) != 1 and time.monotonic() < deadline:  # the consumer took item 0 and waits on it
        time.sleep(0.001)
    t0 = time.monotonic()
    p.close()
    assert time.monotonic() - t0 < 1  # it did not wait for item 0, still running
    assert stage._pool is None
    release.set()
    consumer.join(5)
    assert got == [0]  # the running item still reached the consumer waiting for it
    time.sleep(0.05)
    assert calls == [0]  # the queued one never ran
