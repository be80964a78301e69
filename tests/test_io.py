"""shardpipe.io.files: local and pipe: sources, URL helpers, and atomic writes to disk, S3 and GCS."""

from __future__ import annotations

import os
import sys

import fsspec.core
import pytest

from shardpipe.errors import ShardNotFoundError, TruncatedShardError
from shardpipe.io.files import (
    atomic_write,
    dirname_url,
    is_local,
    join_url,
    local_path,
    open_shard,
    read_bytes,
)

from .helpers import payload

MiB = 1 << 20


def test_url_helpers():
    assert is_local("/data/a.tar") and is_local("file:///data/a.tar") and is_local("a.tar")
    assert not is_local("s3://b/a.tar") and not is_local("https://h/a.tar")
    assert local_path("file:///data/a.tar") == "/data/a.tar"
    assert join_url("s3://b/train", "a.tar") == "s3://b/train/a.tar"
    assert join_url("s3://b/train", "gs://c/x.tar") == "gs://c/x.tar"
    assert join_url("/data", "a.tar") == "/data/a.tar"
    assert dirname_url("gs://b/train/a.tar") == "gs://b/train"
    assert dirname_url("file:///data/a.tar") == "/data"


def test_local_open_at_offset_and_missing(tmp_path):
    data = payload(5000, 1)
    (tmp_path / "a.tar").write_bytes(data)
    with open_shard(str(tmp_path / "a.tar"), 1234) as f:
        assert f.read() == data[1234:]
    with open_shard(f"file://{tmp_path}/a.tar") as f:
        assert f.read() == data
    with pytest.raises(ShardNotFoundError, match="shard not found: .*nope.tar"):
        open_shard(str(tmp_path / "nope.tar"))


def test_synchronous_fsspec_stores_stream_through_a_thread_pool():
    from shardpipe.io.remote import ReadOptions, ThreadBlockSource

    data = payload(3 * MiB + 5, 7)
    fs, path = fsspec.core.url_to_fs("memory://shardpipe-test/sync/a.tar")
    fs.pipe_file(path, data)
    opts = ReadOptions(block_size=MiB, readahead=2)
    with open_shard("memory://shardpipe-test/sync/a.tar", 100, read_options=opts) as f:
        assert isinstance(f._source, ThreadBlockSource)
        assert f.read() == data[100:]
    with pytest.raises(ShardNotFoundError, match="shard not found: memory://shardpipe-test/sync/b.tar"):
        open_shard("memory://shardpipe-test/sync/b.tar")


# -- pipe: ------------------------------------------------------------------------------
def test_pipe_urls_are_refused_by_default(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="refusing pipe: URL .* pass allow_pipe=True"):
        open_shard(f"pipe:touch {marker}")
    assert not marker.exists()  # the command never ran


def test_pipe_streams_the_commands_stdout(tmp_path):
    data = payload(3 * MiB + 17, 2)
    (tmp_path / "a.tar").write_bytes(data)
    with open_shard(f"pipe:cat {tmp_path}/a.tar", allow_pipe=True) as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]
    with open_shard(f"pipe:cat {tmp_path}/a.tar", 2 * MiB + 5, allow_pipe=True) as f:
        assert f.tell() == 2 * MiB + 5
        assert f.read() == data[2 * MiB + 5 :]


def test_failing_pipe_command_raises_at_the_end_of_its_output(tmp_path):
    with open_shard("pipe:printf abc; exit 3", allow_pipe=True) as f:
        with pytest.raises(TruncatedShardError, match="pipe command exited with status 3 after 3 bytes"):
            f.read()


def test_closing_a_pipe_early_stops_the_command():
    f = open_shard(
        f"pipe:{sys.executable} -c \"import sys\nwhile True: sys.stdout.write('x' * 65536)\"", allow_pipe=True
    )
    assert f.read(100) == b"x" * 100
    proc = f._proc
    f.close()
    assert proc.poll() is not None  # killed and reaped, not left running


# -- atomic_write ------------------------------------------------------------------------
class Boom(Exception):
    pass


def test_atomic_write_local(tmp_path):
    url = str(tmp_path / "sub" / "a.tar")
    with atomic_write(url) as f:
        f.write(b"hello")
    assert open(url, "rb").read() == b"hello"
    with pytest.raises(Boom):
        with atomic_write(url) as f:
            f.write(b"partial")
            raise Boom
    assert open(url, "rb").read() == b"hello"  # the old file stays, no temporary is left
    assert os.listdir(tmp_path / "sub") == ["a.tar"]


def test_atomic_write_to_other_fsspec_stores_writes_then_moves():
    url = "memory://shardpipe-test/aw/a.tar"
    fs, path = fsspec.core.url_to_fs(url)
    with atomic_write(url) as f:
        f.write(b"complete")
    assert fs.cat_file(path) == b"complete"
    with pytest.raises(Boom):
        with atomic_write(url) as f:
            f.write(b"partial")
            raise Boom
    assert fs.cat_file(path) == b"complete"
    assert fs.ls("/shardpipe-test/aw", detail=False) == ["/shardpipe-test/aw/a.tar"]


@pytest.mark.servers
@pytest.mark.parametrize("kind", ["s3", "gcs"])
@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "multipart"])
def test_atomic_write_to_object_storage(request, kind, size):
    store = request.getfixturevalue(f"{kind}_store")
    name = f"aw-{size}.tar"
    url, opts = store.url(name), store.options()
    if kind == "s3":
        opts["default_block_size"] = 5 * MiB  # parts of 5 MiB: 12 MiB is a multipart upload
    fs, path = fsspec.core.url_to_fs(url, **opts)
    data = payload(size, 3)
    with atomic_write(url, storage_options=opts) as f:
        for i in range(0, size, MiB):
            f.write(data[i : i + MiB])
    assert read_bytes(url, storage_options=opts) == data

    # a failed rewrite leaves the old object as it was
    with pytest.raises(Boom):
        with atomic_write(url, storage_options=opts) as f:
            f.write(payload(size, 4))
            raise Boom
    fs.invalidate_cache()
    assert read_bytes(url, storage_options=opts) == data

    # a failed first write publishes nothing
    with pytest.raises(Boom):
        with atomic_write(url + ".new", storage_options=opts) as f:
            f.write(payload(size, 5))
            raise Boom
    fs.invalidate_cache()
    assert not fs.exists(path + ".new")


@pytest.mark.servers
def test_failed_multipart_upload_to_s3_is_aborted(s3_store):
    url = s3_store.url("aw-abort.tar")
    opts = s3_store.options() | {"default_block_size": 5 * MiB}
    fs, path = fsspec.core.url_to_fs(url, **opts)
    bucket, key = path.split("/", 1)

    def pending_uploads() -> list:
        uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
        return [u for u in uploads if u["Key"] == key]

    with pytest.raises(Boom):
        with atomic_write(url, storage_options=opts) as f:
            f.write(payload(12 * MiB, 6))
            f.flush()  # parts are uploaded now
            assert len(pending_uploads()) == 1
            raise Boom
    assert pending_uploads() == []
    assert not fs.exists(path)
