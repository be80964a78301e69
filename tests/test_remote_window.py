"""The adaptive window of remote reads, its memory bound and prefetch, against real nginx
and SeaweedFS behind the fault proxy (latency, cuts)."""

from __future__ import annotations

import os
import shutil
import tracemalloc
from pathlib import Path

import pytest

from shardpipe import ShardDataset, ShardWriter
from shardpipe.errors import CorruptShardError
from shardpipe.io import budget as budget_module
from shardpipe.io.budget import LinkStats, MemoryBudget, process_budget
from shardpipe.io.files import open_shard
from shardpipe.io.opener import ShardOpener
from shardpipe.io.remote import ReadOptions
from shardpipe.options import OpenOptions
from shardpipe.stages.base import Context, Pipeline
from shardpipe.stages.samples import GroupSamples
from shardpipe.stages.shards import ShardList, expand_urls
from shardpipe.stages.untar import Untar

from .helpers import payload

pytestmark = pytest.mark.servers

KiB, MiB = 1 << 10, 1 << 20


def big_samples(n: int, size: int, seed: int) -> list[dict]:
    return [{"__key__": f"w{seed}-{i:04d}", "bin": payload(size + i, seed * 1000 + i)} for i in range(n)]


def serve_shards(http_store, tmp_path: Path, name: str, samples: list[dict], per_shard: int) -> str:
    """Write ``samples`` into shards of ``per_shard`` under nginx; the manifest's URL through the proxy."""
    root = tmp_path / name
    with ShardWriter(f"{root}/s-%06d.tar", maxcount=per_shard) as w:
        for s in samples:
            w.write(s)
    dest = http_store.server.docroot / name
    shutil.copytree(root, dest, dirs_exist_ok=True)
    return http_store.url(f"{name}/manifest.json", proxied=True)


def fields(sample: dict) -> tuple:
    return sample["__key__"], sample["bin"]


def unique_budget(limit: int) -> MemoryBudget:
    """A budget no other test shares (one object per limit and process)."""
    budget = process_budget(limit)
    assert budget.used == 0 and budget.streams == 0
    return budget


# -- prefetch ------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_prefetch_k_keeps_k_shards_opened_ahead(http_store, tmp_path, k):
    samples = big_samples(16, 20 * KiB, k)
    manifest = serve_shards(http_store, tmp_path, f"ahead{k}", samples, per_shard=2)
    shards = expand_urls(manifest)
    urls = [s.url for s in shards]
    opener = ShardOpener(prefetch=k, read_options=ReadOptions(min_block=64 * KiB))
    pipeline = Pipeline([ShardList(shards), Untar(opener), GroupSamples()], Context())
    got = [fields(s) for s in pipeline]
    assert got == [fields(s) for s in samples]
    reading = [e for e in opener.events if e[0] == "reading"]
    assert [e[1] for e in reading] == urls
    for i, (_, _url, ahead) in enumerate(reading):
        assert list(ahead) == urls[i + 1 : i + 1 + k], f"while reading shard {i}"
    opens = [e for e in opener.events if e[0] == "open"]
    assert [e[2] for e in opens] == [False] + [True] * (len(urls) - 1)  # every shard after the first was ready


def test_prefetched_shard_keeps_filling_while_the_current_one_is_read(http_store, tmp_path):
    """A shard opened ahead fills its window up to its share, not just a first block."""
    data = [payload(8 * MiB, 90 + i) for i in range(2)]
    for i, d in enumerate(data):
        http_store.put(f"fill-{i}.bin", d)
    urls = [http_store.url(f"fill-{i}.bin", proxied=True) for i in range(2)]
    budget = unique_budget(6 * MiB + 1)
    opts = ReadOptions(min_block=256 * KiB, block_size=MiB, memory_limit=budget.limit)
    from shardpipe.io.prefetch import Prefetcher

    with Prefetcher(depth=1, read_options=opts) as pf:
        current = pf.open(urls[0])
        pf.prefetch(urls[1])
        ahead = pf._ahead[urls[1]].result()
        first = current.read(4 * MiB)  # the current stream is consumed; the freed bytes go on being requested
        assert ahead.max_reserved > 2 * 256 * KiB  # beyond the first two requests
        assert ahead.requests >= 4
        rest = current.read()
        current.close()
        got1 = ahead.read()
        ahead.close()
    assert (first + rest, got1) == (data[0], data[1])
    assert budget.peak <= budget.limit and budget.used == 0


# -- the memory bound ------------------------------------------------------------------------
def test_bytes_in_flight_never_exceed_the_memory_limit(http_store, tmp_path):
    samples = big_samples(24, 100 * KiB, 7)
    manifest = serve_shards(http_store, tmp_path, "bound", samples, per_shard=6)  # ~600 KiB shards
    budget = unique_budget(3 * MiB + 17)
    http_store.proxy.latency = 0.01  # the window grows while the consumer waits
    read = ReadOptions(min_block=64 * KiB, block_size=512 * KiB, memory_limit=budget.limit)
    got = [fields(s) for s in ShardDataset(manifest, decode=None, read_options=read, prefetch=3)]
    assert got == [fields(s) for s in samples]
    assert budget.peak <= budget.limit
    assert budget.peak > budget.limit // 3  # the streams did use the room they had
    assert budget.used == 0 and budget.streams == 0  # everything returned when the streams closed


def test_memory_limit_is_an_open_option(http_store, tmp_path):
    samples = big_samples(8, 64 * KiB, 8)
    manifest = serve_shards(http_store, tmp_path, "optlimit", samples, per_shard=4)
    limit = 2 * MiB + 29
    budget = unique_budget(limit)
    ds = ShardDataset(manifest, decode=None, memory_limit=limit, read_options=ReadOptions(min_block=64 * KiB))
    assert [fields(s) for s in ds] == [fields(s) for s in samples]
    assert 0 < budget.peak <= limit
    with pytest.raises(ValueError, match="memory_limit must be an integer >= 1"):
        OpenOptions(memory_limit=0)


@pytest.fixture
def fresh_link_stats(monkeypatch) -> LinkStats:
    """This process's link measurements as a new process starts them: the demand earlier tests
    taught (up to the whole memory share) would request the object in one go, so no read waits."""
    stats = LinkStats()
    monkeypatch.setitem(budget_module._stats, os.getpid(), stats)
    return stats


def test_adaptive_window_widens_when_the_reader_waits(http_store, fresh_link_stats):
    data = payload(6 * MiB, 95)
    http_store.put("widen.bin", data)
    http_store.proxy.latency = 0.03
    opts = ReadOptions(min_block=64 * KiB, block_size=MiB, memory_limit=64 * MiB + 3)
    with open_shard(http_store.url("widen.bin", proxied=True), read_options=opts) as f:
        got = f.read()
    assert got == data
    assert f.stalls >= 1
    assert fresh_link_stats.demand > LinkStats().demand  # each stall raised the demand
    assert f.max_reserved > 2 * MiB  # more than two of the largest requests in flight
    assert f.requests < 6 * MiB // (64 * KiB)  # requests grew from 64 KiB to 1 MiB


# -- faults --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["http", "s3"])
def test_cuts_with_many_requests_in_flight_give_every_sample_once(request, tmp_path, kind):
    store = request.getfixturevalue(f"{kind}_store")
    samples = big_samples(30, 60 * KiB, 9)
    if kind == "http":
        manifest = serve_shards(store, tmp_path, "cuts", samples, per_shard=10)
        options = {}
    else:
        with ShardWriter(store.url("cuts/s-%06d.tar"), maxcount=10, storage_options=store.options()) as w:
            for s in samples:
                w.write(s)
        manifest, options = store.url("cuts/manifest.json"), store.options(proxied=True)
    budget = unique_budget(8 * MiB + (11 if kind == "http" else 13))
    store.proxy.latency = 0.005
    store.proxy.cut(after=20_000, times=4)  # responses are 32-128 KiB: each cut breaks one mid-body
    read = ReadOptions(
        min_block=32 * KiB, block_size=128 * KiB, retries=4, backoff=0.01, max_backoff=0.05, memory_limit=budget.limit
    )
    got = [
        fields(s) for s in ShardDataset(manifest, decode=None, read_options=read, prefetch=2, storage_options=options)
    ]
    assert store.proxy.faults_fired == 4
    assert got == [fields(s) for s in samples]
    assert budget.peak >= 4 * 128 * KiB  # many requests were in flight when the cuts came


def test_server_ignoring_range_is_refused_without_reading_the_object(http_store):
    data = payload(64 * MiB, 96)
    http_store.put("norange-big.bin", data)
    url = f"{http_store.server.endpoint}/norange/norange-big.bin"  # nginx with max_ranges 0: 200 + everything
    tracemalloc.start()
    try:
        with pytest.raises(CorruptShardError, match=r"answered 200 with 67108864 bytes: the server ignores Range"):
            with open_shard(url) as f:
                f.read(1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB  # the 64 MiB body was never read into memory
