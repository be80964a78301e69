"""A remote shard replaced between two ranged requests is an error, never a splice of two
versions: against real SeaweedFS (S3), fake-gcs-server and nginx."""

from __future__ import annotations

import pytest

from shardpipe.errors import CorruptShardError
from shardpipe.io.files import open_shard
from shardpipe.io.remote import ReadOptions

from .helpers import payload

pytestmark = pytest.mark.servers

KiB = 1 << 10
# small blocks, one in flight: most of the object is requested after the replacement
SMALL = ReadOptions(block_size=256 * KiB, readahead=1, retries=2, backoff=0.05, max_backoff=0.1)
FIELD = {"s3": "ETag", "gcs": "generation", "http": "ETag"}


def test_a_shard_replaced_mid_read_is_an_error(remote):
    old, new = payload(3 << 20, 71), payload((3 << 20) + 1, 72)  # nginx's ETag is mtime and size
    remote.put("pinned.bin", old)
    with open_shard(remote.url("pinned.bin"), storage_options=remote.options(), read_options=SMALL) as f:
        assert f._source.pin is not None and f._source.pin.field == FIELD[remote.kind]
        first = f.read(256 * KiB)
        remote.put("pinned.bin", new)
        with pytest.raises(
            CorruptShardError,
            match=rf"{remote.url('pinned.bin')} changed while being read: the request for bytes \d+-\d+ no longer "
            rf"matches {FIELD[remote.kind]} \S+, seen when it was opened",
        ):
            while f.read(256 * KiB):
                pass
    assert first == old[: 256 * KiB]


def test_an_unchanged_pinned_shard_reads_whole(remote):
    data = payload((2 << 20) + 5, 73)
    remote.put("steady.bin", data)
    with open_shard(remote.url("steady.bin"), storage_options=remote.options(), read_options=SMALL) as f:
        assert f._source.pin is not None
        assert f.read() == data
