"""io.files on local paths: URL helpers, open errors by message, size checks, pipes, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardpipe.errors import CorruptShardError, ShardNotFoundError, ShardReadError, TruncatedShardError
from shardpipe.io.files import (
    atomic_write,
    dirname_url,
    get_cache,
    is_local,
    join_url,
    local_path,
    open_shard,
    read_bytes,
)

from .helpers import payload


@pytest.mark.parametrize(
    "base, name, expected",
    [
        ("", "a.tar", "a.tar"),  # no folder: the name as given
        ("/data", "/abs/a.tar", "/abs/a.tar"),  # absolute names win
        ("s3://b/x", "/abs/a.tar", "/abs/a.tar"),
        ("file:///data/x", "a.tar", "/data/x/a.tar"),  # file:// becomes a plain path
        ("rel/dir", "a.tar", os.path.join("rel/dir", "a.tar")),
        ("https://h/p/", "a.tar", "https://h/p/a.tar"),
    ],
)
def test_join_url(base: str, name: str, expected: str):
    assert join_url(base, name) == expected


def test_url_helpers_on_edge_cases():
    assert dirname_url("a.tar") == "" and dirname_url("rel/a.tar") == "rel"
    assert dirname_url("https://h/p/a.tar") == "https://h/p"
    assert local_path("/x/file://y") == "/x/file://y" and not is_local("/x/file://y")
    assert is_local("file://rel") and local_path("file://rel") == "rel"


def test_local_open_checks_the_manifest_size(tmp_path: Path):
    data = payload(3000, 5)
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    with open_shard(str(path), 0, expected_size=3000) as f:
        assert f.tell() == 0 and f.read() == data
    with open_shard(str(path), 2999, expected_size=3000) as f:
        assert f.read() == data[-1:]
    with pytest.raises(CorruptShardError, match=rf"^shard {path} is 3000 bytes but its manifest entry says 2999$"):
        open_shard(str(path), expected_size=2999)
    assert read_bytes(f"file://{path}") == data


def test_open_errors_name_the_shard(tmp_path: Path):
    with pytest.raises(ShardNotFoundError, match=rf"^shard not found: {tmp_path}/none.tar$"):
        open_shard(str(tmp_path / "none.tar"))
    with pytest.raises(ShardReadError, match=rf"^cannot read shard {tmp_path}: \[Errno 21\] Is a directory"):
        open_shard(str(tmp_path))


def test_one_cache_object_per_folder_and_size(tmp_path: Path):
    a = get_cache(tmp_path / "c", 1 << 20)
    assert get_cache(str(tmp_path / "c"), 1 << 20) is a
    assert get_cache(tmp_path / "c", 2 << 20) is not a
    assert get_cache(tmp_path / "d", 1 << 20) is not a


def test_pipe_offset_past_the_end_stops_at_the_end(tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(b"abcdef")
    with open_shard(f"pipe:cat {tmp_path}/a.bin", 100, allow_pipe=True) as f:
        assert f.tell() == 6 and f.read() == b""
    with open_shard(f"pipe:cat {tmp_path}/a.bin", 2, allow_pipe=True) as f:
        assert f.name == f"pipe:cat {tmp_path}/a.bin" and f.readable()
        assert f.read1(2) == b"cd"
        buf = bytearray(10)
        assert f.readinto(buf) == 2 and bytes(buf[:2]) == b"ef"
    with pytest.raises(ValueError, match=rf"^read from closed stream pipe:cat {tmp_path}/a.bin$"):
        f.read(1)


def test_a_failing_pipe_is_truncated_also_on_a_short_sized_read():
    with open_shard("pipe:printf abcd; exit 2", allow_pipe=True) as f:
        assert f.read(3) == b"abc"  # more may follow: no verdict yet
        with pytest.raises(TruncatedShardError, match=r"^pipe command exited with status 2 after 4 bytes: 'printf"):
            f.read(10)


def test_atomic_write_into_a_relative_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with atomic_write("plain.json") as f:
        f.write(b"{}")
    assert (tmp_path / "plain.json").read_bytes() == b"{}"
    assert sorted(os.listdir(tmp_path)) == ["plain.json"]


def test_readinto_fills_at_most_the_buffer(tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(b"abcdefgh")
    with open_shard(f"pipe:cat {tmp_path}/a.bin", allow_pipe=True) as f:
        buf = bytearray(3)
        assert f.readinto(buf) == 3 and bytes(buf) == b"abc" and f.tell() == 3
        assert f.read() == b"defgh"


def test_forked_children_keep_the_parents_filesystem_instances(monkeypatch):
    import fsspec

    from shardpipe.io import files

    fs = fsspec.filesystem("memory")  # fsspec caches instances per class
    kept: list = []
    monkeypatch.setattr(files, "_INHERITED_FILESYSTEMS", kept)
    files._keep_inherited_filesystems()  # what os.register_at_fork runs in a DataLoader worker
    assert any(x is fs for x in kept)


def test_a_running_command_is_neither_waited_for_by_read_0_nor_by_close():
    import time

    t0 = time.monotonic()
    f = open_shard("pipe:printf ab; sleep 60", allow_pipe=True)
    assert f.read(0) == b"" and f.read(2) == b"ab"  # no end-of-output verdict while it runs
    proc = f._proc
    f.close()  # kills it rather than waiting for the sleep
    assert proc.returncode is not None and time.monotonic() - t0 < 30


def test_a_remote_shard_is_checked_against_the_manifest_size_on_open():
    import fsspec

    data = payload(5000, 12)
    fs, path = fsspec.core.url_to_fs("memory://shardpipe-files/sized.tar")
    fs.pipe_file(path, data)
    try:
        url = "memory://shardpipe-files/sized.tar"
        with open_shard(url, 100, expected_size=5000) as f:
            assert f.read() == data[100:]
        with pytest.raises(CorruptShardError, match=rf"^{url}: object is 5000 bytes but the manifest says 4999$"):
            open_shard(url, expected_size=4999)
    finally:
        fs.rm(path)
