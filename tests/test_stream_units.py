"""``ResumableReader`` (io/stream.py) over fsspec's in-memory store: which ranges it requests and
when, seeks, retries and their messages, short bodies, the memory budget. Each request is logged.

The source is the real thread-pool source (``ThreadBlockSource``) on a real synchronous
filesystem; ``Faults`` wraps it to answer chosen requests with a failure or a short body.
The network tests (tests/test_remote*.py) run the same reader against real servers.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future

import fsspec
import pytest

from shardpipe.errors import CorruptShardError, ShardReadError, TruncatedShardError
from shardpipe.io import stream as stream_module
from shardpipe.io.budget import LinkStats, MemoryBudget
from shardpipe.io.remote import ReadOptions, ThreadBlockSource
from shardpipe.io.stream import MAX_DEMAND, ResumableReader

from .helpers import Sleeps, own_records, payload

KiB = 1 << 10
URL = "memory://shardpipe-stream/obj.bin"


@pytest.fixture(scope="module")
def data() -> bytes:
    blob = payload(100 * KiB + 7, 11)
    fs, path = fsspec.core.url_to_fs(URL)
    fs.pipe_file(path, blob)
    yield blob
    fs.rm(path)


class Faults:
    """The thread-pool source over the memory store; logs each request as (start, end) and
    answers those listed in ``faults`` (keyed by start; popped in order) with the given
    exception, ``"short:N"`` (the first N bytes only), ``"long"`` (one byte too many) or
    ``"empty"``."""

    def __init__(self, faults: dict[int, list] | None = None, changed: bool = False):
        fs, path = fsspec.core.url_to_fs(URL)
        self.real = ThreadBlockSource(fs, path, timeout=10, threads=4)
        self.pin = "etag-1"
        self.faults = faults or {}
        self.log: list[tuple[int, int]] = []
        self._changed = changed
        self.closed = False

    def submit(self, start: int, end: int) -> Future:
        self.log.append((start, end))
        todo = self.faults.get(start)
        if todo:
            fault = todo.pop(0)
            fut: Future = Future()
            if isinstance(fault, BaseException):
                fut.set_exception(fault)
            else:
                body = self.real.result(self.real.submit(start, end))
                if fault == "long":
                    body += b"!"
                elif fault == "empty":
                    body = b""
                else:
                    body = body[: int(fault.split(":")[1])]
                fut.set_result(body)
            return fut
        return self.real.submit(start, end)

    def result(self, fut: Future) -> bytes:
        return self.real.result(fut)

    def changed(self, exc: BaseException) -> bool:
        return self._changed

    def close(self) -> None:
        self.closed = True
        self.real.close()


def reader(source: Faults, size: int, offset: int = 0, budget: MemoryBudget | None = None, **opts) -> ResumableReader:
    options = ReadOptions(**{"backoff": 0.0, "max_backoff": 0.0, **opts})
    return ResumableReader(URL, source, size, offset, options, budget or MemoryBudget(1 << 30), LinkStats())


FIXED = {"block_size": 16 * KiB, "readahead": 2}


# -- opening and the fixed window ------------------------------------------------------------
def test_an_offset_outside_the_object_is_refused(data):
    with pytest.raises(ValueError, match=rf"^offset {len(data) + 1} outside {URL} \({len(data)} bytes\)$"):
        reader(Faults(), len(data), len(data) + 1)
    with pytest.raises(ValueError, match=rf"^offset -1 outside {URL} "):
        reader(Faults(), len(data), -1)
    with reader(Faults(), len(data), len(data)) as f:  # exactly at the end: empty
        assert f.read() == b"" and f.tell() == len(data)


def test_a_fixed_window_requests_block_size_ranges_readahead_ahead(data):
    src = Faults()
    with reader(src, len(data), **FIXED) as f:
        B = 16 * KiB
        assert src.log == [(0, B), (B, 2 * B)]  # on open: readahead requests
        assert f.read(10) == data[:10]
        assert src.log == [(0, B), (B, 2 * B), (2 * B, 3 * B)]  # block 0 current, 2 beyond it
        assert f.read(B) == data[10 : B + 10]
        assert src.log[-1] == (3 * B, 4 * B) and f.requests == 4
        assert f.read() == data[B + 10 :]
    starts = [s for s, _ in src.log]
    assert starts == list(range(0, len(data), B)) and src.log[-1][1] == len(data)  # the last one ends at the end
    assert src.closed and f.closed


def test_readahead_zero_still_requests_the_first_block_then_one_at_a_time(data):
    src = Faults()
    with reader(src, len(data), block_size=32 * KiB, readahead=0) as f:
        assert src.log == [(0, 32 * KiB)]
        assert f.read(5) == data[:5] and src.log == [(0, 32 * KiB)]
        f.read(32 * KiB)
        assert src.log == [(0, 32 * KiB), (32 * KiB, 64 * KiB)]


def test_an_adaptive_window_starts_at_min_block_and_doubles(data):
    src = Faults()
    budget = MemoryBudget(1 << 30)
    with reader(src, len(data), budget=budget, block_size=64 * KiB, min_block=4 * KiB) as f:
        sizes = [e - s for s, e in src.log]
        assert sizes[:4] == [4 * KiB, 8 * KiB, 16 * KiB, 25 * KiB + 1]  # doubling, capped at a quarter of the object
        assert f.read() == data
    assert all(e - s <= 64 * KiB for s, e in src.log)


def test_the_adaptive_cap_is_block_size(data):
    src = Faults()
    with reader(src, len(data), block_size=8 * KiB, min_block=4 * KiB) as f:
        assert [e - s for s, e in src.log][:3] == [4 * KiB, 8 * KiB, 8 * KiB]
        assert f.read() == data


# -- reads --------------------------------------------------------------------------------
def test_read_sizes_read1_and_readinto(data):
    with reader(Faults(), len(data), **FIXED) as f:
        assert f.readable() and f.seekable()
        assert f.read(0) == b"" and f.tell() == 0
        assert f.read1(100) == data[:100]
        assert f.read1() == data[100 : 16 * KiB]  # the rest of the block, no further
        assert f.read1(-1) == data[16 * KiB : 32 * KiB]
        buf = bytearray(20)
        assert f.readinto(buf) == 20 and bytes(buf) == data[32 * KiB : 32 * KiB + 20]
        assert f.read(None) == data[32 * KiB + 20 :]
        assert f.read1(5) == b"" and f.read(5) == b""
        short = bytearray(b"x" * 10)
        assert f.readinto(short) == 0 and short == b"x" * 10


def test_a_whole_block_read_is_returned_without_a_copy(data):
    src = Faults()
    with reader(src, len(data), **FIXED) as f:
        first = f.read(16 * KiB)
        assert first == data[: 16 * KiB] and f._block is first


# -- seeks --------------------------------------------------------------------------------
def test_seeks_inside_the_window_send_nothing_new(data):
    src = Faults()
    B = 16 * KiB
    with reader(src, len(data), **FIXED) as f:
        f.read(100)
        sent = list(src.log)
        assert f.seek(5) == 5 and f.read(10) == data[5:15]  # back inside the current block
        assert f.seek(B) == B and f.read(10) == data[B : B + 10]  # the end of the block: still inside
        assert f.seek(2 * B + 3) == 2 * B + 3 and f.read(10) == data[2 * B + 3 : 2 * B + 13]  # a block in flight
        assert src.log[: len(sent)] == sent and all(s >= 3 * B for s, _ in src.log[len(sent) :])


def test_a_seek_past_the_window_restarts_it_at_the_target(data):
    src = Faults()
    B = 16 * KiB
    with reader(src, len(data), **FIXED) as f:
        f.read(10)
        n = len(src.log)
        target = 5 * B + 77
        assert f.seek(target) == target and f.tell() == target
        assert src.log[n] == (target, target + B)  # from the target, not from a block boundary
        assert f.read(100) == data[target : target + 100]
        assert f.seek(3) == 3 and f.read(4) == data[3:7]  # behind the window: restarted there
        assert (3, 3 + B) in src.log


def test_seek_whence_and_bounds(data):
    size = len(data)
    with reader(Faults(), size, **FIXED) as f:
        assert f.seek(-7, 2) == size - 7 and f.read() == data[-7:]
        assert f.seek(-10, 1) == size - 10 and f.read(3) == data[-10:-7]
        assert f.seek(size) == size and f.read(1) == b""
        with pytest.raises(ValueError, match=rf"^seek to {size + 1} outside {URL} \({size} bytes\)$"):
            f.seek(1, 2)
        with pytest.raises(ValueError, match=rf"^seek to -1 outside {URL} "):
            f.seek(-1)
        assert f.seek(0) == 0 and f.read() == data


# -- close and the budget -----------------------------------------------------------------------
def test_close_cancels_and_returns_every_reserved_byte(data):
    budget = MemoryBudget(1 << 30)
    src = Faults()
    f = reader(src, len(data), budget=budget, **FIXED)
    f.read(10)
    assert budget.used == f.reserved == 3 * 16 * KiB and budget.streams == 1
    assert f.max_reserved == 3 * 16 * KiB
    f.close()
    assert budget.used == 0 and budget.streams == 0 and f.reserved == 0 and src.closed
    f.close()  # twice is fine
    with pytest.raises(ValueError, match=rf"^read from closed stream {URL}$"):
        f.read(1)
    with pytest.raises(ValueError, match=rf"^read from closed stream {URL}$"):
        f.seek(0)


def test_reads_free_the_budget_as_they_go(data):
    budget = MemoryBudget(1 << 30)
    with reader(Faults(), len(data), budget=budget, **FIXED) as f:
        f.read()
        assert budget.used == f.reserved == len(data) - 6 * 16 * KiB  # only the last block is held
    assert budget.used == 0


def test_a_small_budget_bounds_the_window_and_the_reads_still_complete(data):
    budget = MemoryBudget(20 * KiB)
    src = Faults()
    with reader(src, len(data), budget=budget, block_size=8 * KiB, min_block=4 * KiB) as f:
        assert f.read() == data
        assert f.max_reserved <= 20 * KiB and budget.peak <= 20 * KiB
    assert budget.used == 0


def test_no_memory_for_a_read_is_an_error_naming_where(data):
    budget = MemoryBudget(16 * KiB)
    assert budget.try_acquire(16 * KiB)  # held by another stream
    f = reader(Faults(), len(data), budget=budget, timeout=0.05, **FIXED)
    assert f.requests == 0
    t0 = time.monotonic()
    with pytest.raises(ShardReadError) as e:
        f.read(1)
    assert str(e.value) == (
        f"{URL}: no memory for the read at byte 0: the {16 * KiB}-byte memory_limit stayed in use "
        "by other streams for 0.05 s"
    )
    assert time.monotonic() - t0 < 5
    budget.release(16 * KiB)
    f.close()


def test_a_read_with_nothing_in_flight_waits_for_the_budget(data):
    budget = MemoryBudget(16 * KiB)
    assert budget.try_acquire(16 * KiB)
    f = reader(Faults(), len(data), budget=budget, timeout=5, **FIXED)
    import threading

    threading.Timer(0.1, budget.release, (16 * KiB,)).start()
    assert f.read(100) == data[:100]
    f.close()
    assert budget.used == 0


# -- failures -----------------------------------------------------------------------------------
def test_a_transient_failure_is_requested_again_from_its_first_byte(data, caplog):
    B = 16 * KiB
    src = Faults({B: [ConnectionResetError(104, "reset"), EOFError("cut")]})
    with caplog.at_level(logging.INFO, logger="shardpipe"):
        with reader(src, len(data), retries=2, **FIXED) as f:
            assert f.read() == data
            assert f.retries_used == 2
    assert src.log.count((B, 2 * B)) == 3
    assert [r.getMessage() for r in own_records(caplog)] == [
        f"{URL}: ConnectionResetError at byte {B} ([Errno 104] reset); retry 1/2 in 0.00 s",
        f"{URL}: EOFError at byte {B} (cut); retry 2/2 in 0.00 s",
    ]


def test_retries_wait_their_backoff(data, monkeypatch):
    sleeps = Sleeps()
    monkeypatch.setattr(stream_module, "time", sleeps)
    src = Faults({0: [EOFError("a"), EOFError("b"), EOFError("c")]})
    f = ResumableReader(
        URL, src, len(data), 0, ReadOptions(backoff=0.5, max_backoff=0.75, **FIXED), MemoryBudget(1 << 30), LinkStats()
    )
    with f:
        assert f.read(10) == data[:10]
    assert sleeps.waits == [0.5, 0.75, 0.75]


def test_retries_run_out_at_the_configured_count_and_the_error_sticks(data):
    B = 16 * KiB
    src = Faults({B: [EOFError("cut")] * 3})
    with reader(src, len(data), retries=2, **FIXED) as f:
        assert f.read(B) == data[:B]
        with pytest.raises(TruncatedShardError) as e:
            f.read(1)
        assert str(e.value) == f"{URL}: read failed at byte {B} of {len(data)} after 3 attempts: EOFError: cut"
        assert f.retries_used == 3
        with pytest.raises(TruncatedShardError) as again:
            f.read(1)
        assert again.value is e.value
    assert src.log.count((B, 2 * B)) == 3


def test_a_read_without_retries_says_one_attempt(data):
    src = Faults({0: [EOFError("cut")]})
    with reader(src, len(data), retries=0, **FIXED) as f:
        with pytest.raises(TruncatedShardError) as e:
            f.read(1)
    assert str(e.value) == f"{URL}: read failed at byte 0 of {len(data)} after 1 attempt: EOFError: cut"


def test_an_error_no_retry_can_fix_is_raised_at_once(data):
    src = Faults({0: [ValueError("bad request")]})
    with reader(src, len(data), retries=5, **FIXED) as f:
        with pytest.raises(TruncatedShardError) as e:
            f.read(1)
    assert str(e.value) == f"{URL}: read failed at byte 0 of {len(data)}: ValueError: bad request"
    assert f.retries_used == 0 and src.log.count((0, 16 * KiB)) == 1


def test_a_replaced_object_is_corrupt_not_retried(data):
    src = Faults({0: [OSError("precondition failed")]}, changed=True)
    with reader(src, len(data), **FIXED) as f:
        with pytest.raises(CorruptShardError) as e:
            f.read(1)
    assert str(e.value) == (
        f"{URL} changed while being read: the request for bytes 0-16383 no longer matches etag-1, seen when it "
        "was opened (the object was replaced or deleted): OSError: precondition failed"
    )


def test_a_body_longer_than_asked_means_ranges_are_ignored(data):
    src = Faults({0: ["long"]})
    with reader(src, len(data), **FIXED) as f:
        with pytest.raises(CorruptShardError) as e:
            f.read(1)
    assert str(e.value) == (
        f"{URL}: asked for bytes 0-16383, got {16 * KiB + 1} bytes: the server ignores Range requests"
    )


def test_an_empty_body_is_retried(data, caplog):
    src = Faults({0: ["empty"]})
    with caplog.at_level(logging.INFO, logger="shardpipe"):
        with reader(src, len(data), **FIXED) as f:
            assert f.read() == data and f.retries_used == 1
    assert "EOFError at byte 0 (empty response for bytes 0-16383); retry 1/8" in caplog.records[0].getMessage()


def test_a_short_body_is_kept_and_the_rest_asked_for_first(data):
    B = 16 * KiB
    src = Faults({B: ["short:1000"]})
    with reader(src, len(data), **FIXED) as f:
        assert f.read(B + 1000) == data[: B + 1000]
        assert (B + 1000, 2 * B) in src.log  # asked for as soon as the short body arrived
        assert f.read() == data[B + 1000 :] and f.retries_used == 0
    assert src.log.count((B + 1000, 2 * B)) == 1


def test_stalls_widen_the_demand_up_to_its_ceiling(data):
    stats = LinkStats()
    stats.demand = MAX_DEMAND / 1.2

    class Lazy(Faults):
        """Each body arrives only once the reader waits for it: every block after the first is a stall."""

        def submit(self, start, end):
            fut: Future = Future()
            fut.range = (start, end)
            self.log.append((start, end))
            return fut

        def result(self, fut):
            if not fut.done():
                fut.set_result(self.real.result(self.real.submit(*fut.range)))
            return fut.result()

    src = Lazy()
    f = ResumableReader(
        URL, src, len(data), 0, ReadOptions(block_size=16 * KiB, min_block=16 * KiB), MemoryBudget(1 << 30), stats
    )
    with f:
        f.read(1)
        assert f.stalls == 0  # the first wait is not a stall
        f.read(16 * KiB)
        assert f.stalls == 1 and stats.demand == MAX_DEMAND
        assert f.wait_seconds > 0


def test_readahead_zero_asks_for_nothing_until_a_read_even_after_a_seek(data):
    src = Faults()
    B = 32 * KiB
    with reader(src, len(data), block_size=B, readahead=0) as f:
        f.read(10)
        assert src.log == [(0, B)]
        f.seek(2 * B + 5)
        assert src.log == [(0, B)]  # no read-ahead: the seek sends nothing
        assert f.read(10) == data[2 * B + 5 : 2 * B + 15]
        assert src.log == [(0, B), (2 * B + 5, 3 * B + 5)]


def test_the_last_request_fills_the_window_to_its_byte(data):
    """Requests of 4, 8 then 16 KiB would pass a 16 KiB budget: the third is cut to the 4 KiB left."""
    src = Faults()
    budget = MemoryBudget(16 * KiB)
    with reader(src, len(data), budget=budget, block_size=64 * KiB, min_block=4 * KiB) as f:
        assert src.log == [(0, 4 * KiB), (4 * KiB, 12 * KiB), (12 * KiB, 16 * KiB)]
        assert f.reserved == budget.used == 16 * KiB
        assert f.read() == data


def test_a_budget_smaller_than_a_block_reads_in_budget_sized_requests(data):
    src = Faults()
    budget = MemoryBudget(8 * KiB)
    with reader(src, len(data), budget=budget, timeout=5, **FIXED) as f:
        assert src.log == []  # a whole block does not fit: nothing is sent ahead
        assert f.read() == data
    assert src.log[0] == (0, 8 * KiB) and all(e - s <= 8 * KiB for s, e in src.log)
    assert budget.used == 0
