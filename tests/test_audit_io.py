"""Audit of remote reads as a user sees them: exact epochs over S3, GCS and HTTP (shuffled,
with workers, resumed), lying manifests, missing shards, cut connections, and the cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from shardpipe import ShardDataset, ShardLoader
from shardpipe.errors import CorruptShardError, ShardNotFoundError, TruncatedShardError
from shardpipe.io.remote import ReadOptions

from .helpers import make_samples
from .test_remote import _fields, remote_epoch_manifest, write_epoch

pytestmark = pytest.mark.servers

FAST = ReadOptions(retries=2, backoff=0.01, max_backoff=0.05, timeout=5)


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return make_samples(40, prefix="au")


@pytest.fixture(scope="module")
def local(tmp_path_factory, samples) -> str:
    """The shards on local disk (6 shards of at most 7 samples); returns their folder."""
    root = tmp_path_factory.mktemp("audit-local")
    write_epoch(f"{root}/train-%06d.tar", samples)
    return str(root)


def _loader(manifest: str, **kw) -> ShardLoader:
    ds = ShardDataset(manifest, decode=None, shuffle=5, seed=3, **kw)
    return ShardLoader(ds, num_workers=2, multiprocessing_context="fork")


def _epoch(loader: ShardLoader, limit: int | None = None) -> list[tuple]:
    out = []
    for s in loader:
        out.append(_fields(s))
        if limit is not None and len(out) == limit:
            break
    return out


def test_shuffled_epoch_with_workers_equals_the_local_one(remote, local, samples):
    manifest = remote_epoch_manifest(remote, local, samples, "audit-shuffle")
    expected = _epoch(_loader(f"{local}/manifest.json"))
    got = _epoch(_loader(manifest, storage_options=remote.options(proxied=True)))
    assert got == expected and len(got) == len(samples)


def test_resume_mid_epoch_from_remote_is_exact(remote, local, samples):
    manifest = remote_epoch_manifest(remote, local, samples, "audit-resume")
    opts = remote.options(proxied=True)
    full = _epoch(_loader(manifest, storage_options=opts))
    first = _loader(manifest, storage_options=opts)
    head = _epoch(first, limit=13)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _loader(manifest, storage_options=opts)
    resumed.load_state_dict(state)
    assert head + _epoch(resumed) == full


def _lying_manifest(remote, local: str, samples, name: str, field: str, value) -> str:
    """The epoch on ``remote`` with shard 1's manifest entry ``field`` replaced by ``value``."""
    manifest = remote_epoch_manifest(remote, local, samples, name)
    doc = json.loads(Path(local, "manifest.json").read_text())
    doc["shards"][1][field] = value
    doc.pop("index", None)
    remote.put(f"{name}/manifest.json", json.dumps(doc).encode())
    return manifest


@pytest.mark.parametrize("field", ["bytes", "sha256"])
def test_a_lying_manifest_entry_is_a_corrupt_shard_naming_it(remote, local, samples, field):
    value = 512 * 3 if field == "bytes" else hashlib.sha256(b"other").hexdigest()
    manifest = _lying_manifest(remote, local, samples, f"audit-lie-{field}", field, value)
    ds = ShardDataset(manifest, decode=None, verify=True, storage_options=remote.options(proxied=True))
    with pytest.raises(CorruptShardError, match="train-000001.tar"):
        list(ds)


@pytest.mark.parametrize(("field", "kept"), [("bytes", 33), ("sha256", 40)])
def test_a_lying_manifest_entry_is_a_counted_skip(remote, local, samples, field, kept):
    """A wrong size is known at open (the shard is skipped whole); a wrong sha256 only once the
    shard has streamed (its samples are out already): either way counted, nothing repeated."""
    value = 512 * 3 if field == "bytes" else hashlib.sha256(b"other").hexdigest()
    manifest = _lying_manifest(remote, local, samples, f"audit-lieskip-{field}", field, value)
    ds = ShardDataset(manifest, decode=None, verify=True, on_error="skip", storage_options=remote.options(proxied=True))
    got = [_fields(s)[0] for s in ds]
    assert ds.stats.errors() == {"CorruptShardError": 1}
    assert len(got) == kept and len(set(got)) == kept


def test_a_shard_missing_on_the_server_is_named(remote, local, samples):
    manifest = remote_epoch_manifest(remote, local, samples, "audit-missing")
    doc = json.loads(Path(local, "manifest.json").read_text())
    doc["shards"][2]["name"] = "gone-000002.tar"
    doc.pop("index", None)
    remote.put("audit-missing/manifest.json", json.dumps(doc).encode())
    ds = ShardDataset(manifest, decode=None, read_options=FAST, storage_options=remote.options(proxied=True))
    with pytest.raises(ShardNotFoundError, match="gone-000002.tar"):
        list(ds)
    skip = ShardDataset(manifest, decode=None, on_error="skip", read_options=FAST,
                        storage_options=remote.options(proxied=True))  # fmt: skip
    assert len(list(skip)) == len(samples) - 7 and skip.stats.errors() == {"ShardNotFoundError": 1}


def test_cuts_mid_shard_with_workers_and_shuffle_are_exact(remote, local, samples):
    manifest = remote_epoch_manifest(remote, local, samples, "audit-cuts")
    expected = _epoch(_loader(f"{local}/manifest.json"))
    remote.proxy.cut(after=5000, times=FAST.retries)  # however they fall, no one request runs out of retries
    got = _epoch(_loader(manifest, storage_options=remote.options(proxied=True), read_options=FAST))
    assert got == expected


def test_cuts_past_the_retries_with_workers_name_the_shard(remote, local, samples):
    manifest = remote_epoch_manifest(remote, local, samples, "audit-cutall")
    remote.proxy.cut(after=5000, times=1_000_000)
    loader = _loader(manifest, storage_options=remote.options(proxied=True), read_options=FAST, prefetch=0)
    with pytest.raises(TruncatedShardError, match=r"train-00000\d\.tar"):
        _epoch(loader)


# -- the shard cache ------------------------------------------------------------------------
def test_a_truncated_cache_file_is_not_trusted(s3_store, local, samples, tmp_path):
    """A cached copy cut short (a killed writer, a full disk) is fetched again, not read short."""
    manifest = remote_epoch_manifest(s3_store, local, samples, "audit-cache-trunc")
    kw = {"storage_options": s3_store.options(), "cache_dir": str(tmp_path)}
    expected = [_fields(s) for s in ShardDataset(manifest, decode=None, **kw)]
    for path in tmp_path.glob("*train-00000[0-5].tar"):
        os.truncate(path, path.stat().st_size // 2)
    again = ShardDataset(manifest, decode=None, **kw)
    assert [_fields(s) for s in again] == expected


def test_a_cache_too_small_for_the_epoch_streams_exactly(s3_store, local, samples, tmp_path):
    manifest = remote_epoch_manifest(s3_store, local, samples, "audit-cache-small")
    one = max(p.stat().st_size for p in Path(local).glob("train-*.tar"))
    kw = {"storage_options": s3_store.options(), "cache_dir": str(tmp_path), "cache_size": one * 2}
    for _ in range(2):
        got = [_fields(s) for s in ShardDataset(manifest, decode=None, **kw)]
        assert [k for k, _ in got] == [s["__key__"] for s in samples]
    cached = sum(p.stat().st_size for p in tmp_path.glob("*.tar"))
    assert cached <= one * 2


def _epoch_keys(manifest: str, kw: dict, out) -> None:
    """One epoch in a child process; its keys and byte digests go to ``out``."""
    got = [_fields(s) for s in ShardDataset(manifest, decode=None, **kw)]
    out.put([(k, hashlib.sha256(repr(v).encode()).hexdigest()) for k, v in got])


def test_two_processes_sharing_a_cache_read_exact_epochs(s3_store, local, samples, tmp_path):
    import multiprocessing as mp

    manifest = remote_epoch_manifest(s3_store, local, samples, "audit-cache-share")
    kw = {"storage_options": s3_store.options(proxied=True), "cache_dir": str(tmp_path)}
    expected = [(k, hashlib.sha256(repr(v).encode()).hexdigest()) for k, v in _epoch(_loader(f"{local}/manifest.json"))]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_epoch_keys, args=(manifest, kw, out)) for _ in range(2)]
    s3_store.proxy.reset_counters()
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert all(sorted(r) == sorted(expected) for r in results)
    shard_bytes = sum(p.stat().st_size for p in Path(local).glob("train-*.tar"))
    assert s3_store.proxy.bytes_down < shard_bytes * 1.5  # each shard downloaded once
