"""The local shard cache: downloads once, stays under its limit, detects corruption,
and lets racing processes share one download. Bytes from the server are counted by
the fault proxy in front of it (nginx or SeaweedFS)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os

import pytest

from shardpipe.errors import CorruptShardError
from shardpipe.io.cache import ShardCache
from shardpipe.io.files import get_cache, open_shard
from shardpipe.io.remote import ReadOptions, open_remote

from .helpers import payload

pytestmark = pytest.mark.servers

MiB = 1 << 20
FAST = ReadOptions(block_size=MiB, readahead=2, retries=3, backoff=0.05)


def cached_read(url: str, cache_dir, offset: int = 0, **kw) -> bytes:
    with open_shard(url, offset, cache_dir=cache_dir, read_options=FAST, **kw) as f:
        return f.read()


def data_files(cache_dir) -> list[str]:
    return sorted(n for n in os.listdir(cache_dir) if not n.startswith(".") and not n.endswith(".meta"))


def test_second_read_reads_nothing_from_the_server(remote, tmp_path):
    data = payload(3 * MiB, 1)
    remote.put("c-twice.bin", data)
    url = remote.url("c-twice.bin", proxied=True)
    opts = remote.options(proxied=True)
    assert cached_read(url, tmp_path, storage_options=opts) == data
    assert remote.proxy.bytes_down >= len(data)
    remote.proxy.reset_counters()
    assert cached_read(url, tmp_path, storage_options=opts) == data
    assert cached_read(url, tmp_path, 12345, storage_options=opts) == data[12345:]
    assert (remote.proxy.connections, remote.proxy.bytes_down) == (0, 0)
    assert get_cache(tmp_path).stats.hits == 2


def test_eviction_keeps_the_cache_under_its_limit_in_lru_order(http_store, tmp_path):
    size = MiB
    limit = 3 * size + size // 2  # room for three shards
    urls = []
    for i in range(5):
        http_store.put(f"c-lru-{i}.bin", payload(size, 10 + i))
        urls.append(http_store.url(f"c-lru-{i}.bin"))
    cache = ShardCache(tmp_path, limit)

    def read(i: int) -> bytes:
        with cache.open(urls[i], lambda: open_remote(urls[i], options=FAST)) as f:
            return f.read()

    for i in range(3):
        assert read(i) == payload(size, 10 + i)
        assert cache.usage() <= limit
    read(0)  # shard 0 is now the most recently used: shard 1 goes first
    for i in (3, 4):
        assert read(i) == payload(size, 10 + i)
        assert cache.usage() <= limit
    kept = {n.split("-", 1)[1] for n in data_files(tmp_path)}
    assert kept == {"c-lru-0.bin", "c-lru-3.bin", "c-lru-4.bin"}
    assert cache.stats.evictions == 2 and cache.stats.downloads == 5 and cache.stats.hits == 1


def test_shard_larger_than_the_cache_is_streamed_uncached(http_store, tmp_path):
    data = payload(2 * MiB, 20)
    http_store.put("c-big.bin", data)
    url = http_store.url("c-big.bin")
    assert cached_read(url, tmp_path, cache_size=MiB) == data
    assert data_files(tmp_path) == []
    assert get_cache(tmp_path, MiB).stats.bypassed == 1


def test_corrupt_cached_file_is_detected_and_fetched_again(http_store, tmp_path):
    data = payload(2 * MiB, 30)
    http_store.put("c-corrupt.bin", data)
    url = http_store.url("c-corrupt.bin", proxied=True)
    assert cached_read(url, tmp_path) == data
    (name,) = data_files(tmp_path)
    st = (tmp_path / name).stat()
    with open(tmp_path / name, "r+b") as f:  # flip one byte in place
        f.seek(MiB)
        byte = f.read(1)
        f.seek(MiB)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(tmp_path / name, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse clock may not tick
    http_store.proxy.reset_counters()
    assert cached_read(url, tmp_path) == data
    assert http_store.proxy.bytes_down >= len(data)  # fetched again
    assert get_cache(tmp_path).stats.refetched_corrupt == 1


def test_silent_corruption_is_caught_when_hits_are_verified(http_store, tmp_path):
    data = payload(MiB, 31)
    http_store.put("c-rot.bin", data)
    url = http_store.url("c-rot.bin")
    cache = ShardCache(tmp_path, verify_hits=True)
    with cache.open(url, lambda: open_remote(url, options=FAST)) as f:
        assert f.read() == data
    path = cache.path_for(url)
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\0")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size and mtime
    with cache.open(url, lambda: open_remote(url, options=FAST)) as f:
        assert f.read() == data
    assert cache.stats.refetched_corrupt == 1 and cache.stats.downloads == 2


def test_manifest_checksum_is_checked_on_download(http_store, tmp_path):
    data = payload(MiB, 40)
    http_store.put("c-sha.bin", data)
    url = http_store.url("c-sha.bin")
    bad = "0" * 64
    with pytest.raises(CorruptShardError, match=f"c-sha.bin: sha256 .* does not match the manifest's {bad}"):
        cached_read(url, tmp_path, expected_sha256=bad)
    assert data_files(tmp_path) == []  # neither the data nor a .part is left behind
    good = hashlib.sha256(data).hexdigest()
    assert cached_read(url, tmp_path, expected_sha256=good, expected_size=len(data)) == data
    assert get_cache(tmp_path).stats.downloads == 1


def test_cached_copy_not_matching_a_new_manifest_is_fetched_again(http_store, tmp_path):
    old, new = payload(MiB, 41), payload(MiB, 42)
    http_store.put("c-new.bin", old)
    url = http_store.url("c-new.bin")
    assert cached_read(url, tmp_path) == old
    http_store.put("c-new.bin", new)  # the shard was rewritten, the manifest says so
    sha = hashlib.sha256(new).hexdigest()
    assert cached_read(url, tmp_path, expected_sha256=sha) == new


def test_leftover_part_files_from_crashed_processes_are_removed(http_store, tmp_path):
    http_store.put("c-crash-a.bin", payload(MiB, 50))
    http_store.put("c-crash-b.bin", payload(MiB, 51))
    cache = ShardCache(tmp_path, MiB + MiB // 2)
    url_a, url_b = http_store.url("c-crash-a.bin"), http_store.url("c-crash-b.bin")
    for url in (url_a, url_b):  # a crash left a half-written download of each
        stale = cache.path_for(url).with_name(cache.path_for(url).name + ".999999.abcdef.part")
        stale.write_bytes(b"x" * MiB)
    with cache.open(url_a, lambda: open_remote(url_a, options=FAST)) as f:
        assert f.read() == payload(MiB, 50)
    # a's own leftover went at once; b's went to make room (its lock was free)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
    assert cache.usage() == MiB


def _race(url: str, cache_dir: str, barrier, results) -> None:
    barrier.wait()
    with open_shard(url, cache_dir=cache_dir, read_options=FAST) as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    results.put((digest, get_cache(cache_dir).stats.downloads))


def test_processes_racing_for_one_shard_download_it_once(http_store, tmp_path):
    data = payload(4 * MiB, 60)
    http_store.put("c-race.bin", data)
    url = http_store.url("c-race.bin", proxied=True)
    http_store.proxy.throttle = 10 * MiB  # the download takes ~0.4 s: the others wait
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(url, str(tmp_path), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert {d for d, _ in got} == {hashlib.sha256(data).hexdigest()}
    assert sum(downloads for _, downloads in got) == 1
    assert len(data) <= http_store.proxy.bytes_down < len(data) + 64 * 1024
    assert len(data_files(tmp_path)) == 1


def test_s3_shards_are_cached(s3_store, tmp_path):
    data = payload(2 * MiB, 70)
    s3_store.put("c-s3.bin", data)
    url, opts = s3_store.url("c-s3.bin"), s3_store.options(proxied=True)
    assert cached_read(url, tmp_path, storage_options=opts, expected_size=len(data)) == data
    s3_store.proxy.reset_counters()
    assert cached_read(url, tmp_path, storage_options=opts, expected_size=len(data)) == data
    assert s3_store.proxy.bytes_down == 0


def test_cache_size_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="cache_size must be positive, not 0"):
        ShardCache(tmp_path, 0)


def test_a_file_gone_between_the_listing_and_its_stat_is_left_out(tmp_path, monkeypatch):
    """Another thread's download finishing (``x.part`` renamed to ``x``) or an eviction between the cache's
    directory listing and its ``stat`` of an entry: the listing left ``size`` unset and the reservation
    failed with ``UnboundLocalError`` (seen in CI: two prefetch threads filling one small cache)."""
    import shardpipe.io.cache as cache_module

    cache = ShardCache(tmp_path / "cache", 10_000)
    (tmp_path / "cache" / "a.tar.part").write_bytes(b"a" * 100)
    (tmp_path / "cache" / "b.tar").write_bytes(b"b" * 200)  # a cached shard whose meta is not written yet
    real_scandir = os.scandir

    class RenamedOnListing:
        """``os.scandir`` whose entry ``a.tar.part`` is renamed (a finished download) as it is listed."""

        def __init__(self, path):
            self.it = real_scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.it.close()

        def __iter__(self):
            for entry in self.it:
                if entry.name == "a.tar.part":
                    os.replace(entry.path, entry.path[: -len(".part")])
                yield entry

    monkeypatch.setattr(cache_module.os, "scandir", RenamedOnListing)
    alone = ShardCache(tmp_path / "alone", 10_000)
    (tmp_path / "alone" / "a.tar.part").write_bytes(b"a" * 100)
    assert list(alone._entries()) == []  # listed first: UnboundLocalError; after another: that one's size
    entries = sorted((p.name, size, used) for p, size, used in cache._entries())
    assert ("b.tar", 200, 0) in entries  # no meta: the first to go
    assert "a.tar.part" not in [name for name, _, _ in entries]
    monkeypatch.undo()
    assert cache.usage() == 300  # the renamed download, listed again, and b
