"""Random access to remote shards in batches: nearby samples of a shard share one ranged GET,
the rest go out in parallel. Requests are counted in nginx's own access log."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from shardpipe import ShardDataset, ShardWriter
from shardpipe.indexed import IndexedDataset

from .helpers import payload

pytestmark = pytest.mark.servers

KiB = 1 << 10


def served_manifest(http_store, tmp_path: Path, name: str, n: int, size: int, per_shard: int) -> tuple[str, list]:
    samples = [{"__key__": f"{name}{i:04d}", "bin": payload(size + i, 500 + i)} for i in range(n)]
    root = tmp_path / name
    with ShardWriter(f"{root}/r-%06d.tar", maxcount=per_shard) as w:
        for s in samples:
            w.write(s)
    shutil.copytree(root, http_store.server.docroot / name, dirs_exist_ok=True)
    return http_store.url(f"{name}/manifest.json"), samples


def requests_for(http_store, name: str, method: str, expected: int) -> int:
    """``method`` requests nginx logged for the shards under ``/name/``.

    nginx logs a request after its response left, so a client may look before the last line is
    written: wait (up to 5 s) for ``expected`` lines, then a little longer for any beyond them."""
    pattern = re.compile(rf'"{method} /{name}/r-\d+\.tar ')

    def count() -> int:
        return sum(1 for line in http_store.server.access_log.read_text().splitlines() if pattern.search(line))

    deadline = time.monotonic() + 5
    while count() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    return count()


def test_a_batch_of_nearby_samples_is_one_get_per_shard(http_store, tmp_path):
    manifest, samples = served_manifest(http_store, tmp_path, "near", 40, 3 * KiB, per_shard=20)
    ds = IndexedDataset(manifest, decode=None)
    indices = [37, 2, 19, 20, 5, 33, 0, 11, 26, 39, 14, 21]  # both shards, out of order
    got = ds.__getitems__(indices)
    assert [(s["__key__"], s["bin"]) for s in got] == [(samples[i]["__key__"], samples[i]["bin"]) for i in indices]
    assert requests_for(http_store, "near", "GET", 2) == 2  # one per shard
    assert requests_for(http_store, "near", "HEAD", 2) == 2  # each shard's size checked once


def test_samples_far_apart_get_a_request_each(http_store, tmp_path):
    manifest, samples = served_manifest(http_store, tmp_path, "far", 12, 300 * KiB, per_shard=12)
    ds = IndexedDataset(manifest, decode=None)
    indices = [0, 2, 4, 6, 8, 10]  # 300 KiB gaps: more than is worth reading and dropping
    got = ds.__getitems__(indices)
    assert [s["bin"] for s in got] == [samples[i]["bin"] for i in indices]
    assert requests_for(http_store, "far", "GET", len(indices)) == len(indices)


def test_dataloader_batches_read_through_getitems(http_store, tmp_path):
    manifest, samples = served_manifest(http_store, tmp_path, "dl", 48, 2 * KiB, per_shard=16)
    ds = IndexedDataset(manifest, decode=None)
    loader = DataLoader(ds, batch_size=24, shuffle=False, collate_fn=lambda batch: batch)
    keys = [s["__key__"] for batch in loader for s in batch]
    assert keys == [s["__key__"] for s in samples]
    assert requests_for(http_store, "dl", "GET", 4) == 4  # batches 0-23 and 24-47 each span two shards


def test_block_shuffle_from_remote_shards_groups_its_reads(http_store, tmp_path):
    manifest, samples = served_manifest(http_store, tmp_path, "blk", 60, 2 * KiB, per_shard=20)
    ds = ShardDataset(manifest, shuffle=True, shuffle_algo="block", decode=None, seed=3)
    got = [s["__key__"] for s in ds]
    assert sorted(got) == [s["__key__"] for s in samples] and got != sorted(got)
    assert requests_for(http_store, "blk", "GET", 3) == 3  # one group of 60 positions: one GET per shard
