"""shardpipe.io.ranged.RangeReader one piece at a time, without a server: the ranges each request
asks for (merged by gap and block size), the memory budget of remote reads, errors by type and
message, per-request results of a batch, open files (reused, evicted, closed) and the cache."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import sys
import threading
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from shardpipe.errors import CorruptShardError, ShardNotFoundError, ShardReadError, TruncatedShardError
from shardpipe.io import ranged
from shardpipe.io.budget import process_budget
from shardpipe.io.ranged import MERGE_GAP, PARALLEL_REQUESTS, RangeReader
from shardpipe.io.remote import ReadOptions

from .helpers import own_records

DATA = bytes(range(256)) * 4096  # 1 MiB: every byte tells its offset (mod 256)
REBUILD = "it changed; rebuild the index with `shardpipe index`"


class LoggedFS(MemoryFileSystem):
    """An in-memory store that logs each ranged read: (path, start, end, the reading thread's name,
    the bytes the process's budget for ``LIMIT`` holds during the read); ``fail`` maps a path to
    the errors its next reads raise, one each."""

    protocol = "rangedunits"
    store: dict = {}
    pseudo_dirs = [""]
    log: list = []
    fail: dict = {}
    limit = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        used = process_budget(LoggedFS.limit).used if LoggedFS.limit else None
        LoggedFS.log.append((path, start, end, threading.current_thread().name, used))
        errors = LoggedFS.fail.get(path)
        if errors:
            raise errors.pop(0)
        return super().cat_file(path, start=start, end=end, **kwargs)


fsspec.register_implementation("rangedunits", LoggedFS, clobber=True)
URL = "rangedunits://units/a.tar"
OTHER = "rangedunits://units/b.tar"


@pytest.fixture
def store():
    fs = fsspec.filesystem("rangedunits")
    fs.pipe(URL, DATA)
    fs.pipe(OTHER, DATA[:1000])
    LoggedFS.log.clear()
    LoggedFS.fail.clear()
    LoggedFS.limit = 0
    yield fs
    LoggedFS.log.clear()
    LoggedFS.fail.clear()
    LoggedFS.limit = 0
    fs.rm("rangedunits://units", recursive=True)


def ranges() -> list[tuple[int, int]]:
    """The (start, end) of each ranged read so far, sorted (reads of a batch run in parallel)."""
    return sorted((start, end) for _, start, end, _, _ in LoggedFS.log)


@pytest.fixture
def local(tmp_path: Path) -> list[str]:
    paths = []
    for name in ("a.tar", "b.tar", "c.tar"):
        p = tmp_path / name
        p.write_bytes(DATA[:5000])
        paths.append(str(p))
    return paths


def open_on(path: str) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            pass
    return n


# -- single reads ---------------------------------------------------------------------------------


def test_a_local_read_gives_the_range_and_names_where_a_short_shard_ends(local):
    reader = RangeReader()
    assert reader.read(local[0], 10, 20) == DATA[10:20]
    assert reader.read(local[0], 4990, 5000) == DATA[4990:5000]  # up to the last byte
    assert reader.read(local[0], 7, 7) == b""
    with pytest.raises(TruncatedShardError) as e:
        reader.read(local[0], 4990, 5001)
    assert str(e.value) == f"truncated shard {local[0]}: asked for bytes 4990-5000, it ends at byte 5000"
    with pytest.raises(TruncatedShardError) as e:
        reader.read(local[0], 6000, 6010)
    assert str(e.value) == f"truncated shard {local[0]}: asked for bytes 6000-6009, it ends at byte 6000"
    assert reader.requests == 5
    reader.close()


def test_a_remote_read_asks_for_the_range_only(store):
    reader = RangeReader()
    assert reader.read(URL, 100, 300, size=len(DATA)) == DATA[100:300]
    assert reader.read(URL, 5, 6) == DATA[5:6]
    assert [(p, s, e) for p, s, e, _, _ in LoggedFS.log] == [(URL, 100, 300), (URL, 5, 6)]
    assert reader.requests == 2
    with pytest.raises(TruncatedShardError) as e:
        reader.read(OTHER, 990, 1010)
    assert str(e.value) == f"truncated shard {OTHER}: asked for bytes 990-1009, it ends at byte 1000"


def test_a_remote_read_is_retried_and_each_retry_logged_with_its_range(store, caplog):
    LoggedFS.fail[URL] = [ConnectionResetError(104, "reset"), ConnectionResetError(104, "reset")]
    reader = RangeReader(read_options=ReadOptions(retries=2, backoff=0.0))
    with caplog.at_level(logging.INFO, logger="shardpipe"):
        assert reader.read(URL, 10, 20) == DATA[10:20]
    assert [r.getMessage() for r in own_records(caplog)] == [
        f"retrying read {URL} [10, 20) after ConnectionResetError: [Errno 104] reset"
    ] * 2
    assert ranges() == [(10, 20)] * 3
    assert reader.requests == 1  # one read, three attempts
    LoggedFS.fail[URL] = [ConnectionResetError(104, "reset")] * 3
    with pytest.raises(TruncatedShardError) as e:
        reader.read(URL, 10, 20)  # retries=2: the third failure is raised, naming the shard and the bytes
    assert (
        str(e.value) == f"{URL}: read of bytes 10-19 failed after 3 attempts: ConnectionResetError: [Errno 104] reset"
    )
    assert isinstance(e.value.__cause__, ConnectionResetError)
    LoggedFS.fail[URL] = [ConnectionResetError(104, "reset")]
    with pytest.raises(TruncatedShardError) as e:
        RangeReader(read_options=ReadOptions(retries=0)).read(URL, 10, 20)
    assert str(e.value) == f"{URL}: read of bytes 10-19 failed after 1 attempt: ConnectionResetError: [Errno 104] reset"


def test_a_batch_read_is_retried_and_logged_with_its_range(store, caplog):
    LoggedFS.fail[URL] = [ConnectionResetError(104, "reset")]
    reader = RangeReader(read_options=ReadOptions(retries=1, backoff=0.0))
    with caplog.at_level(logging.INFO, logger="shardpipe"):
        assert reader.read_many([(URL, 10, 20, None, None), (URL, 25, 30, None, None)]) == [DATA[10:20], DATA[25:30]]
    retries = [r.getMessage() for r in caplog.records if r.threadName.startswith("shardpipe-ranges")]
    assert retries == [f"retrying read {URL} [10, 30) after ConnectionResetError: [Errno 104] reset"]
    assert ranges() == [(10, 30)] * 2
    reader.close()


def test_errors_opening_a_shard_by_type_and_message(local, store):
    reader = RangeReader()
    missing = local[0] + ".gone"
    with pytest.raises(ShardNotFoundError) as e:
        reader.read(missing, 0, 1)
    assert str(e.value) == f"shard not found: {missing}" and isinstance(e.value.__cause__, FileNotFoundError)
    under_a_file = local[0] + "/x.tar"
    with pytest.raises(ShardReadError) as e:
        reader.read(under_a_file, 0, 1)
    assert str(e.value) == f"cannot read shard {under_a_file}: [Errno 20] Not a directory: '{under_a_file}'"
    assert isinstance(e.value.__cause__, NotADirectoryError)
    with pytest.raises(ShardNotFoundError) as e:
        reader.read("rangedunits://units/gone.tar", 0, 1)
    assert str(e.value) == "shard not found: rangedunits://units/gone.tar"
    reader.close()


def test_a_shard_whose_size_changed_since_it_was_indexed_is_refused(local, store):
    reader = RangeReader()
    with pytest.raises(CorruptShardError) as e:
        reader.read(local[0], 0, 10, size=5001)
    assert str(e.value) == f"shard {local[0]} is 5000 bytes but was 5001 when indexed: {REBUILD}"
    assert open_on(local[0]) == 0  # the file was closed again
    with pytest.raises(CorruptShardError) as e:
        reader.read(URL, 0, 10, size=123)
    assert str(e.value) == f"shard {URL} is {len(DATA)} bytes but was 123 when indexed: {REBUILD}"
    assert LoggedFS.log == []  # refused before any range was read
    assert reader.read(local[0], 0, 10, size=5000) == DATA[:10]
    reader.close()


# -- open files ----------------------------------------------------------------------------------


def test_a_local_shard_is_opened_once_and_closed_by_close(local):
    reader = RangeReader()
    for start in (0, 100, 200):
        assert reader.read(local[0], start, start + 10) == DATA[start : start + 10]
    reader.read(local[1], 0, 10)
    assert (open_on(local[0]), open_on(local[1])) == (1, 1)
    reader.close()
    assert (open_on(local[0]), open_on(local[1])) == (0, 0)
    assert reader.read(local[0], 0, 10) == DATA[:10]  # opened again after close
    assert reader.read_many([(local[0], 20, 30, None, None)]) == [DATA[20:30]]  # with a new thread pool
    assert open_on(local[0]) == 1
    reader.close()
    assert open_on(local[0]) == 0
    assert reader.read_many([(local[1], 0, 4, None, None)]) == [DATA[:4]]
    reader.close()


def test_at_most_max_open_shards_stay_open_the_least_recently_used_closed_first(local):
    reader = RangeReader(max_open=2)
    a, b, c = local
    reader.read(a, 0, 1)
    reader.read(b, 0, 1)
    assert [open_on(p) for p in local] == [1, 1, 0]  # max_open files may stay open
    reader.read(a, 0, 1)  # a is now the most recently used
    reader.read(c, 0, 1)
    assert [open_on(p) for p in local] == [1, 0, 1]
    assert reader.read(b, 1, 3) == DATA[1:3]  # b again: a goes
    assert [open_on(p) for p in local] == [0, 1, 1]
    reader.close()


def test_a_file_evicted_while_a_read_holds_it_stays_open_for_that_read(tmp_path):
    """Another thread's open may evict (``max_open``) or ``close`` may drop a file a read is using: it
    stays open until that read ends (before: closed under it, and a newer open could get its number,
    so the read returned another shard's bytes)."""
    shards = []
    for i in range(3):
        shards.append(tmp_path / f"s{i}.tar")
        shards[-1].write_bytes(bytes([i]) * 4096)
    a, b, c = (str(p) for p in shards)
    reader = RangeReader(max_open=1)
    held = reader._handle(a, None, None)  # as a read on another thread holds it
    assert reader.read(b, 0, 4) == b"\x01" * 4  # evicts a
    assert reader.read(c, 0, 4) == b"\x02" * 4  # evicts b: its number is free for the next open
    assert open_on(a) == 1 and open_on(b) == 0
    assert reader._read(held, a, 10, 20) == b"\x00" * 10  # a's bytes, from a
    reader.close()
    assert open_on(c) == 0 and open_on(a) == 1  # c closed; a waits for its read
    del held
    assert open_on(a) == 0


def test_a_file_let_go_at_interpreter_exit_closes_quietly(tmp_path, monkeypatch):
    """At interpreter exit a module's globals (``os`` among them) can be None before the last holder of an
    open shard lets go of it (seen at the end of pytest runs). Before: ``os.close`` raised AttributeError
    there, not the TypeError caught, and Python printed "Exception ignored in: LocalFile.__del__"."""
    path = tmp_path / "s.tar"
    path.write_bytes(b"x" * 16)
    fd = os.open(path, os.O_RDONLY)
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    held = ranged.LocalFile(fd)
    monkeypatch.setattr(ranged, "os", None)
    del held
    monkeypatch.setattr(ranged, "os", os)
    assert [u.exc_value for u in unraisable] == []
    with pytest.raises(OSError) as e:
        os.fstat(fd)  # closed all the same
    assert e.value.errno == errno.EBADF
    ranged.LocalFile(fd).__del__()  # a file closed already: nothing raised
    assert unraisable == []


def test_evicting_a_remote_handle_closes_no_file(local, store):
    reader = RangeReader(max_open=1)
    reader.read(local[0], 0, 1)
    reader.read(URL, 0, 1)  # evicts the local file
    assert open_on(local[0]) == 0
    reader.read(local[1], 0, 1)  # evicts the remote handle: nothing to close
    assert reader.read(local[1], 5, 9) == DATA[5:9]
    assert open_on(local[1]) == 1
    reader.close()
    assert open_on(local[1]) == 0


def test_a_reader_in_another_process_leaves_the_parents_files_alone(local):
    reader = RangeReader()
    reader.read(local[0], 0, 1)
    reader._pid = -1  # as in a forked DataLoader worker: the handles belong to the parent
    reader.close()  # drops them without closing the parent's files
    assert open_on(local[0]) == 1
    assert reader.read(local[0], 3, 6) == DATA[3:6]  # this process opens its own
    assert open_on(local[0]) == 2
    reader._pid = -1
    assert reader.read_many([(local[0], 0, 4, None, None)]) == [DATA[:4]]
    assert open_on(local[0]) == 3
    reader.close()
    assert open_on(local[0]) == 2  # only this process's own (the last one) closed
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == local[0]:
                os.close(int(fd))
        except OSError:
            pass


def test_a_pickled_reader_keeps_its_options_and_opens_its_own_files(local):
    opts = ReadOptions(block_size=1234)
    reader = RangeReader({"k": 1}, "/tmp/cache-dir", 99, opts, max_open=3)
    reader.read(local[0], 0, 1)
    state = reader.__getstate__()
    assert state == {
        "storage_options": {"k": 1},
        "cache_dir": "/tmp/cache-dir",
        "cache_size": 99,
        "read_options": opts,
        "max_open": 3,
        "requests": 1,
    }
    restored = pickle.loads(pickle.dumps(reader))
    assert (restored.storage_options, restored.cache_dir, restored.cache_size) == ({"k": 1}, "/tmp/cache-dir", 99)
    assert (restored.read_options, restored.max_open, restored.requests) == (opts, 3, 0)
    assert restored.read(local[0], 2, 4) == DATA[2:4]
    assert open_on(local[0]) == 2
    restored.close()
    reader.close()
    assert RangeReader().read_options == ReadOptions() and RangeReader().max_open == 64


def test_advise_hints_local_shards_only(local, store, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: calls.append((offset, length, advice)))
    reader = RangeReader()
    assert reader.advise(local[0], 100, 350) is None
    assert calls == [(100, 250, os.POSIX_FADV_WILLNEED)]
    assert reader.advise(URL, 100, 350) is None  # remote: nothing to hint
    assert calls == [(100, 250, os.POSIX_FADV_WILLNEED)]
    assert LoggedFS.log == []
    reader.close()


# -- batches: runs of nearby ranges ---------------------------------------------------------------


def test_ranges_closer_than_the_merge_gap_are_one_request(store):
    reader = RangeReader()
    gap = MERGE_GAP
    got = reader.read_many([(URL, 0, 10, None, None), (URL, 10 + gap, 20 + gap, None, None)])
    assert got == [DATA[0:10], DATA[10 + gap : 20 + gap]]
    assert ranges() == [(0, 20 + gap)]  # a gap of exactly MERGE_GAP is read through
    LoggedFS.log.clear()
    got = reader.read_many([(URL, 0, 10, None, None), (URL, 11 + gap, 20 + gap, None, None)])
    assert got == [DATA[0:10], DATA[11 + gap : 20 + gap]]
    assert ranges() == [(0, 10), (11 + gap, 20 + gap)]
    assert reader.requests == 3
    reader.close()


def test_a_run_is_at_most_block_size_bytes(store):
    block = 100_000
    reader = RangeReader(read_options=ReadOptions(block_size=block))
    first = (URL, 1000, 1010, None, None)
    got = reader.read_many([first, (URL, 1000 + block - 10, 1000 + block, None, None)])
    assert got == [DATA[1000:1010], DATA[1000 + block - 10 : 1000 + block]]
    assert ranges() == [(1000, 1000 + block)]  # exactly block_size from the run's start
    LoggedFS.log.clear()
    reader.read_many([first, (URL, 1000 + block - 10, 1001 + block, None, None)])
    assert ranges() == [(1000, 1010), (1000 + block - 10, 1001 + block)]
    LoggedFS.log.clear()
    # a range inside the run does not end it; the next one is measured from the run's start
    got = reader.read_many(
        [(URL, 500, 900, None, None), (URL, 600, 700, None, None), (URL, 950, 500 + block, None, None)]
    )
    assert got == [DATA[500:900], DATA[600:700], DATA[950 : 500 + block]]
    assert ranges() == [(500, 500 + block)]
    LoggedFS.log.clear()
    # runs follow the starts: a short range inside a long one does not move the run's start, so a range
    # ending past block_size from the long one's start begins a new run
    got = reader.read_many(
        [(URL, 0, block - 5, None, None), (URL, 10, 20, None, None), (URL, block - 10, block + 5, None, None)]
    )
    assert got == [DATA[: block - 5], DATA[10:20], DATA[block - 10 : block + 5]]
    assert ranges() == [(0, block - 5), (block - 10, block + 5)]
    reader.close()


def test_runs_are_formed_in_offset_order_whatever_the_request_order(store):
    reader = RangeReader(read_options=ReadOptions(block_size=10_000))
    far = 50_000
    requests = [
        (URL, far, far + 10, None, None),
        (URL, 20, 30, None, None),
        (URL, far + 20, far + 40, None, None),
        (URL, 0, 10, None, None),
    ]
    got = reader.read_many(requests)
    assert got == [DATA[far : far + 10], DATA[20:30], DATA[far + 20 : far + 40], DATA[0:10]]
    assert ranges() == [(0, 30), (far, far + 40)]
    reader.close()


def test_a_batch_over_several_shards_answers_in_request_order_from_parallel_threads(store, local):
    reader = RangeReader()
    requests = [
        (OTHER, 900, 950, None, None),
        (local[0], 40, 50, None, None),
        (URL, 200_000, 200_010, len(DATA), None),
        (OTHER, 10, 20, None, None),
        (URL, 7, 9, len(DATA), None),
        (local[0], 4000, 4010, 5000, None),
    ]
    got = reader.read_many(requests)
    assert got == [DATA[900:950], DATA[40:50], DATA[200_000:200_010], DATA[10:20], DATA[7:9], DATA[4000:4010]]
    assert sorted((p, s, e) for p, s, e, _, _ in LoggedFS.log) == [
        (URL, 7, 200_010),
        (OTHER, 10, 950),
    ]
    names = {name for *_, name, _ in LoggedFS.log}
    assert all(n.startswith("shardpipe-ranges_") for n in names), names
    assert reader.requests == 3  # one run per shard
    assert reader.read_many([]) == []
    reader.close()


def test_batch_reads_go_out_in_parallel(store):
    # PARALLEL_REQUESTS shards read at once, each read waiting for all the others: they must all be in flight
    barrier = threading.Barrier(PARALLEL_REQUESTS, timeout=10)
    real = LoggedFS.cat_file

    def together(self, path, start=None, end=None, **kwargs):
        barrier.wait()
        return real(self, path, start=start, end=end, **kwargs)

    requests = []
    for i in range(PARALLEL_REQUESTS):
        store.pipe(f"rangedunits://units/many/{i}.tar", DATA[i : i + 10])
        requests.append((f"rangedunits://units/many/{i}.tar", 2, 6, 10, None))
    LoggedFS.cat_file = together
    try:
        reader = RangeReader()
        got = reader.read_many(requests)
    finally:
        LoggedFS.cat_file = real
    assert got == [DATA[i + 2 : i + 6] for i in range(PARALLEL_REQUESTS)]
    assert PARALLEL_REQUESTS == 32
    reader.close()


def test_each_request_of_a_batch_gets_its_own_result_or_error(store, local):
    reader = RangeReader()
    requests = [
        (OTHER, 100, 200, None, None),
        (OTHER, 980, 1010, None, None),  # past the end of the 1000-byte shard, in the same run
        (local[0], 4990, 5010, None, None),
        (local[1] + ".gone", 0, 5, None, None),
        (local[1] + ".gone", 10, 15, None, None),
        (local[2], 0, 5, 4999, None),  # its index's size is wrong
    ]
    got = reader.read_many(requests)
    assert got[0] == DATA[100:200]
    assert isinstance(got[1], TruncatedShardError)
    assert str(got[1]) == f"truncated shard {OTHER}: asked for bytes 980-1009, it ends at byte 1000"
    assert isinstance(got[2], TruncatedShardError)
    assert str(got[2]) == f"truncated shard {local[0]}: asked for bytes 4990-5009, it ends at byte 5000"
    assert isinstance(got[3], ShardNotFoundError) and got[3] is got[4]  # one open failed for the run
    assert str(got[3]) == f"shard not found: {local[1]}.gone"
    assert isinstance(got[5], CorruptShardError)
    assert str(got[5]) == f"shard {local[2]} is 5000 bytes but was 4999 when indexed: {REBUILD}"
    # a read that fails (not retried: a permission error) fails every request of its run, no other
    LoggedFS.fail[URL] = [PermissionError("no")]
    got = reader.read_many([(URL, 0, 4, None, None), (URL, 8, 12, None, None), (OTHER, 0, 4, None, None)])
    assert isinstance(got[0], PermissionError) and got[1] is got[0]
    assert got[2] == DATA[:4]
    reader.close()


def test_the_shards_size_is_checked_against_the_first_request_of_each_shard(store):
    reader = RangeReader()
    got = reader.read_many([(URL, 0, 4, 77, None), (URL, 10, 14, len(DATA), None), (OTHER, 0, 4, 1000, None)])
    assert isinstance(got[0], CorruptShardError) and got[1] is got[0]
    assert str(got[0]) == f"shard {URL} is {len(DATA)} bytes but was 77 when indexed: {REBUILD}"
    assert got[2] == DATA[:4]
    reader.close()


# -- the memory budget of remote batch reads ------------------------------------------------------


def test_a_remote_run_reserves_its_bytes_from_the_budget_while_it_reads(store):
    limit = 1_000_003  # a budget no other test uses
    LoggedFS.limit = limit
    reader = RangeReader(read_options=ReadOptions(memory_limit=limit))
    assert reader.read_many([(URL, 10, 30, None, None)]) == [DATA[10:30]]
    assert [used for *_, used in LoggedFS.log] == [20]
    assert process_budget(limit).used == 0  # released after the read
    reader.close()


def test_a_run_larger_than_the_budget_reserves_all_of_it(store):
    limit = 1_000_007
    LoggedFS.limit = limit
    reader = RangeReader(read_options=ReadOptions(memory_limit=limit))
    size = len(DATA)
    assert limit < size
    assert reader.read_many([(URL, 0, 10, None, None), (URL, 10, size, None, None)]) == [DATA[:10], DATA[10:]]
    assert ranges() == [(0, size)]
    assert [used for *_, used in LoggedFS.log] == [limit]
    assert process_budget(limit).used == 0
    reader.close()


def test_a_remote_run_that_finds_no_memory_fails_saying_so(store, local):
    limit = 1_000_033
    budget = process_budget(limit)
    assert budget.acquire(limit, 0)
    try:
        reader = RangeReader(read_options=ReadOptions(memory_limit=limit, timeout=0.05))
        got = reader.read_many([(URL, 10, 30, None, None), (URL, 40, 50, None, None), (local[0], 0, 5, None, None)])
        assert isinstance(got[0], ShardReadError) and got[1] is got[0]
        assert str(got[0]) == (
            f"{URL}: no memory for the read of bytes 10-49: the {limit}-byte memory_limit stayed in use for 0.05 s"
        )
        assert got[2] == DATA[:5]  # local reads take no memory from the budget
        assert LoggedFS.log == []
        assert budget.used == limit
    finally:
        budget.release(limit)
    reader.close()


def test_a_failed_remote_read_gives_its_memory_back(store):
    limit = 1_000_037
    LoggedFS.fail[URL] = [PermissionError("no")]
    reader = RangeReader(read_options=ReadOptions(memory_limit=limit))
    got = reader.read_many([(URL, 10, 30, None, None)])
    assert isinstance(got[0], PermissionError)
    assert process_budget(limit).used == 0
    reader.close()


# -- remote shards through the shard cache --------------------------------------------------------


def test_a_cached_remote_shard_is_read_from_its_local_copy(store, tmp_path):
    cache = tmp_path / "cache"
    reader = RangeReader(cache_dir=str(cache))
    assert reader.read(OTHER, 10, 20, size=1000) == DATA[10:20]
    assert reader.read_many([(OTHER, 30, 40, 1000, None), (OTHER, 500, 520, 1000, None)]) == [
        DATA[30:40],
        DATA[500:520],
    ]
    copies = [p for p in cache.iterdir() if p.name.endswith("b.tar")]
    assert len(copies) == 1 and copies[0].read_bytes() == DATA[:1000]
    assert ranges() == [(0, 1000)]  # the download: no ranged read after it
    assert open_on(str(copies[0])) == 1
    reader.close()
    assert open_on(str(copies[0])) == 0
    with pytest.raises(CorruptShardError) as e:
        RangeReader(cache_dir=str(cache)).read(OTHER, 0, 1, size=999)
    assert str(e.value) == f"shard {OTHER} is 1000 bytes but was 999 when indexed: {REBUILD}"
    assert open_on(str(copies[0])) == 0


def test_a_shard_larger_than_the_cache_is_read_by_ranged_requests(store, tmp_path, caplog):
    cache = tmp_path / "cache"
    reader = RangeReader(cache_dir=str(cache), cache_size=999)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        assert reader.read(OTHER, 10, 20, size=1000) == DATA[10:20]
    assert [r.getMessage() for r in own_records(caplog)] == [
        f"{OTHER} (1000 bytes) is larger than cache_size=999: streaming it uncached"
    ]
    assert not [p for p in cache.iterdir() if p.name.endswith("b.tar")]
    LoggedFS.log.clear()
    assert reader.read(OTHER, 30, 40) == DATA[30:40]
    assert ranges() == [(30, 40)]  # the handle is kept: ranged reads, no new download
    with pytest.raises(CorruptShardError) as e:
        RangeReader(cache_dir=str(cache), cache_size=999).read(OTHER, 0, 1, size=5)
    assert str(e.value) == f"shard {OTHER} is 1000 bytes but was 5 when indexed: {REBUILD}"
    reader.close()


def test_the_download_into_the_cache_uses_the_readers_read_options(store, tmp_path):
    reader = RangeReader(cache_dir=str(tmp_path / "cache"), read_options=ReadOptions(min_block=100, block_size=100))
    assert reader.read(OTHER, 10, 20, size=1000) == DATA[10:20]
    assert ranges() == [(i, i + 100) for i in range(0, 1000, 100)]  # 100-byte requests, as the options say
    reader.close()


def test_advise_checks_the_shard_on_its_first_use(local, store, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: None)
    with pytest.raises(CorruptShardError) as e:
        RangeReader().advise(local[0], 0, 10, size=4999)
    assert str(e.value) == f"shard {local[0]} is 5000 bytes but was 4999 when indexed: {REBUILD}"
    reader = RangeReader(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CorruptShardError) as e:
        reader.advise(OTHER, 0, 10, size=1000, sha256="0" * 64)
    digest = hashlib.sha256(DATA[:1000]).hexdigest()
    assert str(e.value) == f"{OTHER}: sha256 {digest} does not match the manifest's {'0' * 64}"
    reader.advise(OTHER, 0, 10, size=1000)
    assert reader.read(OTHER, 0, 10) == DATA[:10]
    reader.close()


def test_close_neither_waits_for_nor_breaks_a_batch_in_flight_on_another_thread(store):
    entered, release = threading.Event(), threading.Event()
    real = LoggedFS.cat_file

    def blocked(self, path, start=None, end=None, **kwargs):
        entered.set()
        release.wait(20)
        return real(self, path, start=start, end=end, **kwargs)

    reader = RangeReader()
    results: list = []
    LoggedFS.cat_file = blocked
    try:
        batch = threading.Thread(target=lambda: results.append(reader.read_many([(URL, 0, 8, None, None)])))
        batch.start()
        assert entered.wait(10)
        closer = threading.Thread(target=reader.close)
        closer.start()
        closer.join(5)
        assert not closer.is_alive()  # close returned with the read still blocked
    finally:
        release.set()
        LoggedFS.cat_file = real
    batch.join(10)
    assert results == [[DATA[:8]]]
