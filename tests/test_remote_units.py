"""io/remote.py without a server: read options, the retry policy's verdicts and logs, object_info's
errors, the connection pool option, and the thread-pool source over fsspec's in-memory store
(a real synchronous filesystem)."""

from __future__ import annotations

import dataclasses
import http.client
import logging
import threading

import fsspec
import numpy as np
import pytest

from shardpipe.errors import CorruptShardError, ShardNotFoundError, TruncatedShardError
from shardpipe.io import remote as remote_module
from shardpipe.io.clients import MAX_CONNECTIONS, reading_options
from shardpipe.io.remote import (
    ReadOptions,
    StoreUnreachableError,
    ThreadBlockSource,
    call_store,
    call_with_retries,
    is_retryable,
    object_info,
    open_remote,
)

from .helpers import Sleeps, own_records, payload

MiB = 1 << 20


def test_read_option_defaults():
    o = ReadOptions()
    assert (o.block_size, o.readahead, o.min_block, o.retries) == (16 * MiB, None, MiB, 8)
    assert (o.backoff, o.max_backoff, o.timeout) == (0.25, 8.0, 60.0)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ({"block_size": 0}, ValueError, "ReadOptions.block_size must be above 0, got 0"),
        ({"min_block": 0}, ValueError, "ReadOptions.min_block must be above 0, got 0"),
        ({"memory_limit": 0}, ValueError, "ReadOptions.memory_limit must be above 0, got 0"),
        ({"retries": -1}, ValueError, "ReadOptions.retries must be 0 or more, got -1"),
        ({"readahead": -1}, ValueError, "ReadOptions.readahead must be 0 or more, got -1"),
        ({"timeout": 0}, ValueError, "ReadOptions.timeout must be above 0, got 0"),
        ({"timeout": -5.0}, ValueError, "ReadOptions.timeout must be above 0, got -5.0"),
        ({"timeout": float("nan")}, ValueError, "ReadOptions.timeout must be a finite number, got nan"),
        ({"backoff": -0.25}, ValueError, "ReadOptions.backoff must be 0 or more, got -0.25"),
        ({"max_backoff": -1}, ValueError, "ReadOptions.max_backoff must be 0 or more, got -1"),
        ({"max_backoff": float("inf")}, ValueError, "ReadOptions.max_backoff must be a finite number, got inf"),
        ({"timeout": "5"}, TypeError, "ReadOptions.timeout must be a number, got '5'"),
        ({"retries": 1.5}, TypeError, "ReadOptions.retries must be an integer, got 1.5"),
        ({"retries": True}, TypeError, "ReadOptions.retries must be an integer, got True"),
        ({"block_size": None}, TypeError, "ReadOptions.block_size must be an integer, got None"),
        ({"readahead": "2"}, TypeError, "ReadOptions.readahead must be an integer or None, got '2'"),
    ],
)  # fmt: skip
def test_each_read_option_is_checked_where_the_options_are_made_naming_the_field(bad, error, message):
    with pytest.raises(error) as e:
        ReadOptions(**bad)
    assert str(e.value) == message
    with pytest.raises(error) as e:  # (dataclasses.replace makes them too)
        dataclasses.replace(ReadOptions(), **bad)
    assert str(e.value) == message


def test_read_options_at_their_bounds_are_valid():
    ReadOptions(block_size=1, min_block=1, memory_limit=1, readahead=0, retries=0, backoff=0, max_backoff=0)
    ReadOptions(timeout=1e-3, backoff=1, max_backoff=2, readahead=None)  # ints where seconds go
    assert ReadOptions(block_size=np.int64(4096)).block_size == 4096  # numpy integers are integers


def test_backoff_doubles_from_the_first_retry_up_to_the_cap():
    o = ReadOptions(backoff=0.25, max_backoff=1.5)
    assert [o.delay(a) for a in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 1.5, 1.5]


@pytest.mark.parametrize(
    "exc, retry",
    [
        (EOFError("incomplete"), True),
        (http.client.IncompleteRead(b"ab", 5), True),
        (OSError(5, "io"), True),
        (ValueError("a bug"), False),
        (KeyError("k"), False),
        (PermissionError(13, "denied"), False),
        (TruncatedShardError("ours"), False),
    ],
)
def test_verdicts_by_type(exc: BaseException, retry: bool):
    assert is_retryable(exc) is retry


def test_the_retryable_types_are_computed_once_and_include_each_clients_transfer_errors(monkeypatch):
    import aiohttp
    from botocore.exceptions import BotoCoreError
    from fsspec.exceptions import FSTimeoutError

    from shardpipe.io import remote

    types = remote._retryable_types()
    assert types == (OSError, EOFError, IndexError, http.client.HTTPException, aiohttp.ClientError, BotoCoreError,
                     FSTimeoutError)  # fmt: skip
    monkeypatch.setattr(remote, "_RETRYABLE", None)  # computed afresh by the first verdict
    assert is_retryable(FSTimeoutError())
    assert remote._RETRYABLE == types


def test_a_not_found_is_retried_only_for_a_retryable_cause():
    try:
        raise FileNotFoundError("x") from ValueError("bad")
    except FileNotFoundError as e:
        assert not is_retryable(e)
    try:
        raise FileNotFoundError("x") from EOFError("cut")
    except FileNotFoundError as e:
        assert is_retryable(e)


def test_a_status_that_is_not_an_integer_is_no_http_verdict():
    import aiohttp

    err = aiohttp.ClientResponseError(None, (), status=404)
    assert not is_retryable(err)
    err.status = "503"  # type: ignore[assignment]
    assert is_retryable(err)  # then its type decides: an aiohttp ClientError


def test_each_retry_is_logged_and_waits_its_backoff(caplog, monkeypatch):
    sleeps = Sleeps()
    monkeypatch.setattr(remote_module, "time", sleeps)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) <= 3:
            raise ConnectionResetError(104, "reset")
        return 7

    opts = ReadOptions(retries=3, backoff=0.5, max_backoff=1.5)
    with caplog.at_level(logging.INFO, logger="shardpipe"):
        assert call_with_retries(flaky, "info of s3://b/x", opts) == 7
    assert sleeps.waits == [0.5, 1.0, 1.5]
    assert [r.getMessage() for r in own_records(caplog)] == [
        "retrying info of s3://b/x after ConnectionResetError: [Errno 104] reset"
    ] * 3
    assert [r.levelno for r in own_records(caplog)] == [logging.INFO] * 3


def test_no_retries_means_one_attempt(monkeypatch):
    monkeypatch.setattr(remote_module, "time", Sleeps())
    calls = []

    def failing():
        calls.append(1)
        raise EOFError("cut")

    with pytest.raises(EOFError):
        call_with_retries(failing, "x", ReadOptions(retries=0))
    assert calls == [1]


class InfoStore:
    """An fsspec in-memory filesystem whose ``info`` fails as a real store's can (the
    failures a test cannot get from a local server on demand)."""

    def __init__(self, failures: list[BaseException], info: dict | None = None):
        self.failures = list(failures)
        self.info_calls = 0
        self._info = info

    def info(self, path: str) -> dict:
        self.info_calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return dict(self._info or {"size": 12, "name": path})


def test_object_info_retries_and_gives_an_integer_size(monkeypatch):
    monkeypatch.setattr(remote_module, "time", Sleeps())
    fs = InfoStore([ConnectionResetError(104, "reset")], {"size": "12", "name": "p", "ETag": "e"})
    assert object_info(fs, "p", "s3://b/p", ReadOptions(retries=1)) == {"size": 12, "name": "p", "ETag": "e"}
    assert fs.info_calls == 2


def test_object_info_errors_name_the_url(monkeypatch):
    monkeypatch.setattr(remote_module, "time", Sleeps())
    opts = ReadOptions(retries=2)
    fs = InfoStore([ConnectionResetError(104, "reset")] * 3)
    with pytest.raises(TruncatedShardError) as e:
        object_info(fs, "p", "s3://b/p", opts)
    assert str(e.value) == "s3://b/p: cannot open after 3 attempts: ConnectionResetError: [Errno 104] reset"
    assert fs.info_calls == 3
    wrapped = FileNotFoundError("p")
    wrapped.__cause__ = ConnectionResetError(104, "down")
    with pytest.raises(TruncatedShardError) as e:  # named by the cause, not the wrapper
        object_info(InfoStore([wrapped] * 3), "p", "s3://b/p", opts)
    assert str(e.value) == "s3://b/p: cannot open after 3 attempts: ConnectionResetError: [Errno 104] down"
    wrapped = FileNotFoundError("p")
    wrapped.__cause__ = ConnectionRefusedError(111, "refused")
    with pytest.raises(StoreUnreachableError) as e:  # no connection at all: the store's problem, not the shard's
        object_info(InfoStore([wrapped] * 3), "p", "s3://b/p", opts)
    assert str(e.value) == (
        "s3://b/p: cannot reach the store at the default s3:// endpoint to open it after 3 attempts: "
        "ConnectionRefusedError: [Errno 111] refused"
    )
    with pytest.raises(ShardNotFoundError, match=r"^shard not found: s3://b/p$"):
        object_info(InfoStore([FileNotFoundError("p")]), "p", "s3://b/p", opts)
    with pytest.raises(PermissionError):
        object_info(InfoStore([PermissionError(13, "no")]), "p", "s3://b/p", opts)
    with pytest.raises(CorruptShardError, match=r"^s3://b/p: the server does not report the object's size$"):
        object_info(InfoStore([], {"name": "p"}), "p", "s3://b/p", opts)


def test_messages_of_a_single_try_say_one_attempt():
    once = ReadOptions(retries=0)
    with pytest.raises(TruncatedShardError) as e:
        object_info(InfoStore([ConnectionResetError(104, "reset")]), "p", "s3://b/p", once)
    assert str(e.value) == "s3://b/p: cannot open after 1 attempt: ConnectionResetError: [Errno 104] reset"
    with pytest.raises(StoreUnreachableError) as e:
        object_info(InfoStore([ConnectionRefusedError(111, "refused")]), "p", "s3://b/p", once)
    assert str(e.value) == (
        "s3://b/p: cannot reach the store at the default s3:// endpoint to open it after 1 attempt: "
        "ConnectionRefusedError: [Errno 111] refused"
    )
    with pytest.raises(StoreUnreachableError) as e:
        call_store(InfoStore([TimeoutError("slow")]), "info", "p", url="s3://b/p", what="listing", options=once)
    assert str(e.value) == "s3://b/p: cannot reach the store for its listing after 1 attempt: TimeoutError: slow"


def test_reading_options_give_s3_a_wide_pool_and_each_client_one_try_and_keep_what_the_user_set():
    once = {"max_pool_connections": MAX_CONNECTIONS, "retries": {"total_max_attempts": 1}}
    assert reading_options("s3://b/x", None) == {"config_kwargs": once}
    assert reading_options("s3a://b/x", {"anon": True}) == {"anon": True, "config_kwargs": once}
    mine = {"config_kwargs": {"max_pool_connections": 5, "retries": {}}}
    assert reading_options("s3://b/x", mine) == mine and mine == {
        "config_kwargs": {"max_pool_connections": 5, "retries": {}}
    }
    assert reading_options("gs://b/x", {"token": "anon"}) == {"token": "anon", "retry_timeout": 0}
    assert reading_options("gcs://b/x", {"retry_timeout": 5}) == {"retry_timeout": 5}
    assert reading_options("https://h/x", None) == {}
    assert MAX_CONNECTIONS == 64


@pytest.fixture
def memory_object():
    data = payload(2 * MiB + 17, 5)
    fs, path = fsspec.core.url_to_fs("memory://shardpipe-units/obj.bin")
    fs.pipe_file(path, data)
    yield "memory://shardpipe-units/obj.bin", data
    fs.rm(path)


def test_open_remote_from_an_offset_and_the_manifest_size(memory_object):
    url, data = memory_object
    opts = ReadOptions(block_size=MiB, min_block=MiB, readahead=1)
    with open_remote(url, 5, options=opts, expected_size=len(data)) as f:
        assert f.tell() == 5 and f.size == len(data) and f.read() == data[5:]
        assert isinstance(f._source, ThreadBlockSource)
        assert f._source.pool._max_workers == 2  # readahead + 1 threads
    with pytest.raises(CorruptShardError, match=rf"^{url}: object is {len(data)} bytes but the manifest says 7$"):
        open_remote(url, options=opts, expected_size=7)
    with open_remote(url, options=ReadOptions(block_size=MiB)) as f:
        assert f._source.pool._max_workers == MAX_CONNECTIONS  # adaptive window: room for its widest
        assert f.read(10) == data[:10]


def test_the_thread_source_reads_ranges_and_times_out():
    fs, path = fsspec.core.url_to_fs("memory://shardpipe-units/ranges.bin")
    fs.pipe_file(path, bytes(range(100)))

    release = threading.Event()

    class Slow:
        threads: list[str] = []

        def cat_file(self, path, start, end):
            self.threads.append(threading.current_thread().name)
            release.wait(30)  # busy until the test has looked (not a guess at how long that takes)
            return b""

    try:
        src = ThreadBlockSource(fs, path, timeout=5, threads=0)
        assert src.pool._max_workers == 1 and src.pin is None
        assert src.result(src.submit(10, 14)) == bytes([10, 11, 12, 13])
        assert not src.changed(OSError())
        src.close()
        slow = ThreadBlockSource(Slow(), path, timeout=0.05, threads=1)
        with pytest.raises(TimeoutError, match=r"^no data within 0.05 s$"):
            slow.result(slow.submit(0, 1))
        queued = slow.submit(1, 2)  # behind the slow one on the only thread
        slow.close()
        assert queued.cancelled()
        assert Slow.threads == ["shardpipe-read_0"]  # named as shardpipe's (fork warnings, py-spy)
    finally:
        release.set()
        fs.rm(path)
