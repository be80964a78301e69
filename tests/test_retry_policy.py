"""The remote read's retry policy at its boundaries, and seeks to the very start of an object."""

from __future__ import annotations

import pytest

from shardpipe.errors import TruncatedShardError
from shardpipe.io.files import open_shard
from shardpipe.io.remote import ReadOptions, call_with_retries, is_retryable

from .helpers import payload

MiB = 1 << 20


@pytest.mark.parametrize(
    "status, retry",
    [(400, False), (403, False), (404, False), (416, False), (499, False), (408, True), (429, True),
     (500, True), (502, True), (503, True), (504, True)],
)  # fmt: skip
def test_http_statuses_server_errors_and_throttling_are_retried(status: int, retry: bool):
    import aiohttp

    assert is_retryable(aiohttp.ClientResponseError(None, (), status=status)) is retry


def test_a_status_on_another_exception_type_is_not_read_as_http():
    class Odd(Exception):
        status = 503

    assert not is_retryable(Odd())


def test_call_with_retries_tries_retries_plus_one_times(caplog):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "reset")
        return "ok"

    opts = ReadOptions(retries=2, backoff=0.0, max_backoff=0.0)
    assert call_with_retries(flaky, "info of x", opts) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionResetError):
        call_with_retries(flaky, "info of x", ReadOptions(retries=1, backoff=0.0, max_backoff=0.0))
    assert len(calls) == 2  # the first try and one retry

    def wrong():
        calls.append(1)
        raise PermissionError("denied")

    calls.clear()
    with pytest.raises(PermissionError):
        call_with_retries(wrong, "info of x", opts)
    assert len(calls) == 1  # not retryable: raised at once


def test_read_options_bounds():
    ReadOptions(block_size=1, readahead=0, retries=0)  # the smallest valid values
    for bad in ({"block_size": 0}, {"readahead": -1}, {"retries": -1}):
        with pytest.raises(ValueError, match=r"^ReadOptions\.(block_size|readahead|retries) must be "):
            ReadOptions(**bad)
    assert [ReadOptions(backoff=0.5, max_backoff=3).delay(i) for i in (1, 2, 3, 4)] == [0.5, 1, 2, 3]


@pytest.mark.servers
def test_seek_back_to_exactly_zero(http_store):
    data = payload(3 * MiB + 5, 21)
    http_store.put("zero.bin", data)
    opts = ReadOptions(block_size=MiB, readahead=1)
    with open_shard(http_store.url("zero.bin"), read_options=opts) as f:
        assert f.seek(0) == 0 and f.tell() == 0 and f.read(10) == data[:10]  # at the start already
        f.seek(2 * MiB + 3)
        assert f.read(10) == data[2 * MiB + 3 : 2 * MiB + 13]
        assert f.seek(0) == 0 and f.tell() == 0  # back past every block in memory
        assert f.read(MiB + 1) == data[: MiB + 1]
        assert f.seek(-f.tell(), 1) == 0 and f.read() == data
    with open_shard(http_store.url("zero.bin"), 3 * MiB + 5, read_options=opts) as f:
        assert f.read() == b""  # an offset at exactly the end is empty, not an error
        assert f.seek(0) == 0 and f.read(4) == data[:4]


@pytest.mark.servers
def test_retries_run_out_at_the_configured_count(http_store):
    data = payload(2 * MiB, 22)
    http_store.put("cut.bin", data)
    http_store.proxy.cut(after=1000, times=50)  # every response is cut
    opts = ReadOptions(block_size=MiB, readahead=0, retries=2, backoff=0.01, max_backoff=0.01)
    with pytest.raises(TruncatedShardError, match=r"read failed at byte 0 of 2097152 after 3 attempts"):
        with open_shard(http_store.url("cut.bin", proxied=True), read_options=opts) as f:
            f.read()
