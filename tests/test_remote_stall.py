"""A server that accepts the connection and then never answers, in front of real SeaweedFS,
fake-gcs-server and nginx: opening a shard (its size and version request) and a random-access
read are errors naming the shard after ``ReadOptions.timeout`` a try, never a hang of the
clients' own minutes-long limits. (Stalls mid-body of a streamed shard: tests/test_remote.py.)"""

from __future__ import annotations

import pytest

from shardpipe import ShardDataset
from shardpipe.errors import TruncatedShardError
from shardpipe.io.files import open_shard
from shardpipe.io.ranged import RangeReader
from shardpipe.io.remote import ReadOptions

from .helpers import payload

pytestmark = pytest.mark.servers

SHORT = ReadOptions(timeout=1, retries=1, backoff=0.05, max_backoff=0.1)


@pytest.mark.timeout(120)  # (before: 5 minutes a try over HTTP and GCS, 60 s x 5 a try over S3)
def test_a_server_that_never_answers_the_open_is_an_error_naming_the_shard(remote):
    remote.put("stall/open.bin", payload(1000, 1))
    url = remote.url("stall/open.bin", proxied=True)
    remote.proxy.stall(after=0, seconds=30, times=1000)  # every response, from its first byte
    with pytest.raises(TruncatedShardError) as e:
        open_shard(url, storage_options=remote.options(proxied=True), read_options=SHORT)
    assert str(e.value) == f"{url}: cannot open after 2 attempts: TimeoutError: no answer within 1 s"


@pytest.mark.timeout(120)
def test_a_stalled_epoch_stops_naming_the_shard(http_store):
    http_store.put("stall/epoch.tar", payload(1000, 2))
    url = http_store.url("stall/epoch.tar", proxied=True)
    http_store.proxy.stall(after=0, seconds=30, times=1000)
    with pytest.raises(TruncatedShardError, match=rf"^{url}: cannot open after 2 attempts: TimeoutError"):
        list(ShardDataset(url, decode=None, read_options=SHORT))


@pytest.mark.timeout(120)
def test_a_random_read_from_a_stalled_server_is_an_error_naming_the_shard_and_bytes(http_store):
    data = payload(400_000, 3)
    http_store.put("stall/ranged.bin", data)
    url = http_store.url("stall/ranged.bin", proxied=True)
    reader = RangeReader(read_options=SHORT)
    assert reader.read(url, 0, 1000) == data[:1000]  # the size request and a first read pass
    http_store.proxy.stall(after=20_000, seconds=30, times=1000)  # the bodies stop part-way
    with pytest.raises(TruncatedShardError) as e:
        reader.read(url, 0, 300_000)
    assert str(e.value) == (
        f"{url}: read of bytes 0-299999 failed after 2 attempts: TimeoutError: no answer within 1 s"
    )
    http_store.proxy.clear()
    assert reader.read(url, 100, 300_000) == data[100:300_000]  # the shard reads again once the server does


@pytest.mark.timeout(120)
def test_a_timeout_the_client_raises_itself_is_reported_as_its_own_not_as_the_deadline(http_store):
    import aiohttp

    data = payload(400_000, 4)
    http_store.put("stall/own-timeout.bin", data)
    url = http_store.url("stall/own-timeout.bin", proxied=True)
    own = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(sock_read=0.5)}}  # aiohttp gives up first
    reader = RangeReader(storage_options=own, read_options=ReadOptions(timeout=30, retries=0))
    assert reader.read(url, 0, 1000) == data[:1000]
    http_store.proxy.stall(after=20_000, seconds=30, times=1000)
    with pytest.raises(TruncatedShardError) as e:
        reader.read(url, 0, 300_000)
    assert str(e.value) == (
        f"{url}: read of bytes 0-299999 failed after 1 attempt: SocketTimeoutError: Timeout on reading data from socket"
    )  # (was: "TimeoutError: no answer within 30 s", aiohttp's own error taken for the deadline)


@pytest.mark.timeout(120)
def test_a_block_stalled_mid_stream_names_the_bytes_and_the_deadline(remote):
    """A streamed block that stalls past ``timeout`` (before: "TimeoutError: " and nothing after it)."""
    data = payload(400_000, 5)
    remote.put("stall/block.bin", data)
    url = remote.url("stall/block.bin", proxied=True)
    read = ReadOptions(min_block=8192, block_size=8192, readahead=0, timeout=1, retries=1, backoff=0.05)
    with open_shard(url, storage_options=remote.options(proxied=True), read_options=read) as f:
        assert f.read(8192) == data[:8192]
        remote.proxy.stall(after=0, seconds=30, times=1000)  # every response from here, from its first byte
        with pytest.raises(TruncatedShardError) as e:
            f.read(8192)
    assert str(e.value) == (
        f"{url}: read failed at byte 8192 of 400000 after 2 attempts: TimeoutError: no data for bytes 8192-16383 "
        "within 1 s"
    )
