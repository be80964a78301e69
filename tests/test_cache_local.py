"""ShardCache without a server: downloads counted, hits, checks, LRU eviction, locks, leftovers."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import pytest

from shardpipe.errors import CorruptShardError
from shardpipe.io.cache import LOCKS, ShardCache

from .helpers import payload


class Source:
    """Serves ``objects`` by URL like ``open_remote`` would; logs each download."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.downloads: list[str] = []

    def __call__(self, url: str, size: int | None = None):
        def download():
            self.downloads.append(url)
            stream = io.BytesIO(self.objects[url])
            stream.size = len(self.objects[url]) if size is None else size  # type: ignore[attr-defined]
            return stream

        return download


def read(cache: ShardCache, source: Source, url: str, **kw) -> bytes | None:
    f = cache.open(url, source(url), **kw)
    if f is None:
        return None
    with f:
        return f.read()


def test_path_names_are_unique_readable_and_safe(tmp_path: Path):
    cache = ShardCache(tmp_path)
    url = "s3://bucket/train/shard 0001?.tar"
    digest = hashlib.sha1(url.encode()).hexdigest()[:16]
    assert cache.path_for(url) == tmp_path / f"{digest}-shard_0001_.tar"
    assert cache.path_for("https://h/d/x.tar/").name.endswith("-x.tar")
    assert cache.path_for("https://h/d/BOX/").name.endswith("-BOX")  # only the slash is stripped
    long = "https://h/" + "a" * 100 + "b" * 80
    assert cache.path_for(long).name == hashlib.sha1(long.encode()).hexdigest()[:16] + "-" + "b" * 80
    assert cache.path_for("s3://a/x.tar") != cache.path_for("s3://b/x.tar")


@pytest.mark.parametrize("size", [0, -1])
def test_cache_size_must_be_positive(tmp_path: Path, size: int):
    with pytest.raises(ValueError, match=rf"^cache_size must be positive, not {size}$"):
        ShardCache(tmp_path, size)


def test_one_download_then_hits(tmp_path: Path):
    data = payload(5000, 1)
    source = Source({"s3://b/a.tar": data})
    cache = ShardCache(tmp_path, 10_000)
    assert read(cache, source, "s3://b/a.tar", expected_size=5000) == data
    assert read(cache, source, "s3://b/a.tar", expected_sha256=hashlib.sha256(data).hexdigest().upper()) == data
    assert source.downloads == ["s3://b/a.tar"]
    assert (cache.stats.downloads, cache.stats.hits) == (1, 1)
    assert cache.usage() == 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [LOCKS, cache.path_for("s3://b/a.tar").name, cache.path_for("s3://b/a.tar").name + ".meta"]
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"expected_size": 99}, r"^s3://b/a.tar: 100 bytes, but the manifest says 99$"),
        ({"expected_sha256": "ab" * 32}, r"^s3://b/a.tar: sha256 [0-9a-f]{64} does not match the manifest's (ab){32}$"),
    ],
)
def test_a_download_not_matching_the_manifest_is_corrupt_and_not_kept(tmp_path: Path, kw, message):
    source = Source({"s3://b/a.tar": payload(100, 2)})
    cache = ShardCache(tmp_path)
    with pytest.raises(CorruptShardError, match=message):
        read(cache, source, "s3://b/a.tar", **kw)
    assert [p.name for p in tmp_path.iterdir()] == [LOCKS] and cache.stats.downloads == 0


def test_a_short_download_is_corrupt(tmp_path: Path):
    source = Source({"s3://b/a.tar": payload(100, 2)})
    cache = ShardCache(tmp_path)
    with pytest.raises(CorruptShardError, match=r"^s3://b/a.tar: downloaded 100 bytes, expected 120$"):
        cache.open("s3://b/a.tar", source("s3://b/a.tar", size=120))
    assert [p.name for p in tmp_path.iterdir()] == [LOCKS]


def test_a_shard_larger_than_the_cache_is_streamed(tmp_path: Path, caplog):
    source = Source({"s3://b/big.tar": payload(300, 3)})
    cache = ShardCache(tmp_path, 299)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        assert cache.open("s3://b/big.tar", source("s3://b/big.tar")) is None
    assert cache.stats.bypassed == 1 and cache.usage() == 0
    assert [r.getMessage() for r in caplog.records] == [
        "s3://b/big.tar (300 bytes) is larger than cache_size=299: streaming it uncached"
    ]
    assert read(ShardCache(tmp_path / "exact", 300), source, "s3://b/big.tar") is not None  # the limit is inclusive


def test_least_recently_used_shards_are_evicted_first(tmp_path: Path):
    objects = {f"s3://b/{n}.tar": payload(100, i) for i, n in enumerate("abcd")}
    source = Source(objects)
    cache = ShardCache(tmp_path, 250)
    read(cache, source, "s3://b/a.tar")
    read(cache, source, "s3://b/b.tar")
    read(cache, source, "s3://b/a.tar")  # a is now more recent than b
    read(cache, source, "s3://b/c.tar")  # 300 > 250: b goes
    assert cache.stats.evictions == 1 and cache.usage() == 200
    assert not cache.path_for("s3://b/b.tar").exists() and cache.path_for("s3://b/a.tar").exists()
    read(cache, source, "s3://b/a.tar")
    assert source.downloads == ["s3://b/a.tar", "s3://b/b.tar", "s3://b/c.tar"]  # a was a hit


def test_a_shard_locked_by_another_process_is_not_evicted(tmp_path: Path, caplog):
    source = Source({"s3://b/a.tar": payload(100, 1), "s3://b/b.tar": payload(100, 2)})
    cache = ShardCache(tmp_path, 150)
    read(cache, source, "s3://b/a.tar")
    fd = os.open(cache._lock_path(cache.path_for("s3://b/a.tar")), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # in use elsewhere (flock locks are per open file)
    try:
        with caplog.at_level(logging.WARNING, logger="shardpipe"):
            assert cache.open("s3://b/b.tar", source("s3://b/b.tar")) is None
    finally:
        os.close(fd)
    assert cache.path_for("s3://b/a.tar").exists() and cache.stats.evictions == 0 and cache.stats.bypassed == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"cache {tmp_path} is full of shards in use: streaming s3://b/b.tar"
    ]
    assert read(cache, source, "s3://b/b.tar") is not None and cache.stats.evictions == 1  # unlocked: a goes


def test_leftover_part_files_are_removed_and_counted_as_used_space(tmp_path: Path):
    source = Source({"s3://b/a.tar": payload(100, 1), "s3://b/b.tar": payload(100, 2)})
    cache = ShardCache(tmp_path, 1000)
    data = cache.path_for("s3://b/a.tar")
    stale = data.with_name(data.name + ".999.abcdef.part")
    stale.write_bytes(bytes(50))
    other = cache.path_for("s3://b/b.tar").with_name(cache.path_for("s3://b/b.tar").name + ".998.abcdef.part")
    other.write_bytes(bytes(70))
    (tmp_path / "x.meta").write_bytes(bytes(500))  # not counted: records and temporaries
    (tmp_path / "y.tmp").write_bytes(bytes(500))
    assert cache.usage() == 120
    read(cache, source, "s3://b/a.tar")
    assert not stale.exists() and other.exists() and cache.usage() == 170


def test_a_stale_part_is_evicted_when_space_is_short(tmp_path: Path):
    source = Source({"s3://b/a.tar": payload(100, 1)})
    cache = ShardCache(tmp_path, 120)
    other = cache.path_for("s3://b/z.tar")
    part = other.with_name(other.name + ".997.abcdef.part")
    part.write_bytes(bytes(60))
    assert read(cache, source, "s3://b/a.tar") is not None
    assert not part.exists() and cache.stats.evictions == 0  # leftovers are not shards: not counted


def test_a_changed_cached_copy_is_fetched_again(tmp_path: Path, caplog):
    data = payload(100, 1)
    source = Source({"s3://b/a.tar": data})
    cache = ShardCache(tmp_path)
    read(cache, source, "s3://b/a.tar")
    path = cache.path_for("s3://b/a.tar")
    st = path.stat()
    path.write_bytes(b"x" * 100)  # same size, new mtime (set: a coarse file clock may not have ticked)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        assert read(cache, source, "s3://b/a.tar") == data
    assert cache.stats.refetched_corrupt == 1 and len(source.downloads) == 2
    assert (
        caplog.records[0].getMessage() == f"cached shard {path} changed or does not match its manifest: fetching again"
    )
    # same size and mtime, other bytes: only verify_hits notices
    path.write_bytes(b"y" * 100)
    os.utime(path, ns=(st.st_atime_ns, path.stat().st_mtime_ns))
    meta = path.with_name(path.name + ".meta")
    record = json.loads(meta.read_text())
    record["mtime_ns"] = path.stat().st_mtime_ns
    meta.write_text(json.dumps(record))
    assert read(cache, source, "s3://b/a.tar") == b"y" * 100  # trusted by size and mtime
    verifying = ShardCache(tmp_path, verify_hits=True)
    assert read(verifying, source, "s3://b/a.tar") == data and verifying.stats.refetched_corrupt == 1


def test_a_hit_not_matching_a_new_manifest_is_fetched_again(tmp_path: Path):
    data = payload(100, 1)
    source = Source({"s3://b/a.tar": data})
    cache = ShardCache(tmp_path)
    read(cache, source, "s3://b/a.tar")
    assert read(cache, source, "s3://b/a.tar", expected_size=100) == data and len(source.downloads) == 1
    source.objects["s3://b/a.tar"] = data + b"!"
    assert read(cache, source, "s3://b/a.tar", expected_size=101) == data + b"!"
    assert cache.stats.refetched_corrupt == 1
    new = hashlib.sha256(b"new").hexdigest()
    source.objects["s3://b/a.tar"] = b"new"
    assert read(cache, source, "s3://b/a.tar", expected_sha256=new) == b"new"
    assert cache.stats.refetched_corrupt == 2 and len(source.downloads) == 3


def test_a_missing_or_broken_record_means_no_hit(tmp_path: Path):
    data = payload(100, 1)
    source = Source({"s3://b/a.tar": data})
    cache = ShardCache(tmp_path)
    read(cache, source, "s3://b/a.tar")
    path = cache.path_for("s3://b/a.tar")
    path.with_name(path.name + ".meta").write_text("{not json")
    assert read(cache, source, "s3://b/a.tar") == data and len(source.downloads) == 2
    assert cache.stats.refetched_corrupt == 0  # a download, not a corrupt hit


def test_cache_files_are_read_through_a_one_mib_buffer(tmp_path: Path):
    data = payload(3 << 20, 4)
    source = Source({"s3://b/a.tar": data})
    cache = ShardCache(tmp_path)
    for expect in ("download", "hit"):
        with cache.open("s3://b/a.tar", source("s3://b/a.tar")) as f:
            assert isinstance(f, io.BufferedReader), expect
            assert len(f.peek(1)) == 1 << 20, expect  # the first fill reads 1 MiB at once
            assert f.read() == data
    assert (cache.stats.downloads, cache.stats.hits) == (1, 1)


def test_the_record_names_url_size_sha256_and_mtime(tmp_path: Path):
    data = payload(1000, 6)
    cache = ShardCache(tmp_path)
    read(cache, Source({"s3://b/r.tar": data}), "s3://b/r.tar")
    path = cache.path_for("s3://b/r.tar")
    record = json.loads(path.with_name(path.name + ".meta").read_text())
    assert record == {
        "url": "s3://b/r.tar",
        "size": 1000,
        "sha256": hashlib.sha256(data).hexdigest(),
        "mtime_ns": path.stat().st_mtime_ns,
    }


def test_bypasses_are_counted_each_time(tmp_path: Path):
    source = Source({"s3://b/big.tar": payload(300, 3), "s3://b/a.tar": payload(80, 1), "s3://b/b.tar": payload(80, 2)})
    cache = ShardCache(tmp_path, 100)
    for _ in range(3):  # too large for the cache
        assert cache.open("s3://b/big.tar", source("s3://b/big.tar")) is None
    assert cache.stats.bypassed == 3 and source.downloads == ["s3://b/big.tar"] * 3
    read(cache, source, "s3://b/a.tar")
    fd = os.open(cache._lock_path(cache.path_for("s3://b/a.tar")), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a.tar in use elsewhere: no room for b.tar
    try:
        for _ in range(2):
            assert cache.open("s3://b/b.tar", source("s3://b/b.tar")) is None
    finally:
        os.close(fd)
    assert cache.stats.bypassed == 5


def test_a_cache_directory_removed_under_it_is_made_again(tmp_path: Path):
    import shutil

    data = payload(200, 8)
    source = Source({"s3://b/a.tar": data})
    cache = ShardCache(tmp_path / "deep" / "cache")
    shutil.rmtree(tmp_path / "deep")  # e.g. a tmp cleaner
    assert read(cache, source, "s3://b/a.tar") == data
    assert (tmp_path / "deep" / "cache" / LOCKS).is_dir()
