"""``shardpipe index`` and the index sidecar: counts equal to streaming's, random access, bad input."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import shardpipe
from shardpipe import CorruptShardError, IndexedDataset, ShardDataset, TruncatedShardError, index_shards
from shardpipe.cli import main as cli_main
from shardpipe.format.index import SampleIndex
from shardpipe.format.manifest import load_manifest
from shardpipe.io.ranged import RangeReader

from .helpers import make_samples, process_groups, write_shards

wds = pytest.importorskip("webdataset")


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def webdataset_shards(root: Path, ext: str) -> list[str]:
    """Shards written by the real webdataset package, plus one by tarfile with the awkward cases."""
    samples = make_samples(23)
    samples[4]["seg.bin"] = b"\x00\x01 dotted extension"
    for i in (6, 7, 8):  # keys with dots in their directory part
        samples[i]["__key__"] = f"v1.2/part.a/{samples[i]['__key__']}"
    with wds.ShardWriter(str(root / f"w-%03d.{ext}"), maxcount=8, verbose=0) as w:
        for s in samples:
            w.write(dict(s))
    # metadata members (__*__), a directory entry, a pax long name, an extension-less member
    path = root / f"w-999.{ext}"
    with tarfile.open(path, "w:gz" if ext.endswith("gz") else "w", format=tarfile.PAX_FORMAT) as tf:
        _add_member(tf, "__meta__.json", b'{"made": "by hand"}')
        tf.addfile(tarfile.TarInfo("somedir/"))
        _add_member(tf, "a/" + "long" * 40 + ".jpg", b"x" * 700)
        _add_member(tf, "a/" + "long" * 40 + ".cls", b"1")
        _add_member(tf, "README", b"not a sample")
        _add_member(tf, "b.txt", b"second")
        _add_member(tf, "__index__", b"trailing metadata")
    return sorted(str(p) for p in root.glob(f"w-*.{ext}"))


def streamed(urls) -> list[dict]:
    return list(ShardDataset(urls, decode=None))


@pytest.mark.parametrize("ext", ["tar", "tar.gz"])
def test_index_of_webdataset_shards_equals_what_streaming_finds(tmp_path: Path, ext: str):
    urls = webdataset_shards(tmp_path, ext)
    out = str(tmp_path / "manifest.json")
    manifest = index_shards("::".join(urls), out, workers=3, sha256=True)
    stream = streamed(urls)
    per_url = [sum(1 for s in stream if s["__url__"] == u) for u in urls]
    assert [e["samples"] for e in manifest["shards"]] == per_url
    assert manifest["samples"] == len(stream) == 23 + 2
    for entry, url in zip(manifest["shards"], urls, strict=True):
        data = Path(url).read_bytes()
        assert entry == {"name": Path(url).name, "samples": entry["samples"], "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    # the manifest streams like one ShardWriter wrote: same samples, now with counts
    assert [s["__key__"] for s in streamed(out)] == [s["__key__"] for s in stream]
    index = SampleIndex.load(str(tmp_path / "manifest.index"))
    assert index.counts().tolist() == per_url
    assert [index.compressed(i) for i in range(len(urls))] == [ext == "tar.gz"] * len(urls)
    if ext == "tar.gz":
        with pytest.raises(ValueError, match="gzip-compressed.*sequentially"):
            IndexedDataset(out)
        return
    ds = IndexedDataset(out, decode=None)
    assert len(ds) == len(stream)
    for i, s in enumerate(stream):  # every sample, byte for byte
        got = ds[i]
        assert got.pop("__index__") == i
        assert got == s


def test_cli_index_writes_the_same_manifest_and_index(tmp_path: Path, capsys):
    urls = webdataset_shards(tmp_path, "tar")
    api = tmp_path / "api"
    api.mkdir()
    index_shards(urls, str(api / "manifest.json"), workers=1)
    pattern = str(tmp_path / "w-{000..002}.tar") + "::" + str(tmp_path / "w-999.tar")
    assert cli_main(["index", pattern, "-o", str(tmp_path / "manifest.json"), "--workers", "2", "--no-progress"]) == 0
    assert "indexed 25 samples in 4 shards" in capsys.readouterr().out
    assert (tmp_path / "manifest.index").read_bytes() == (api / "manifest.index").read_bytes()
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path, api))
    assert [e["samples"] for e in a["shards"]] == [e["samples"] for e in b["shards"]]
    # shards outside the manifest's folder are named by path, and still resolve
    assert [e["url"] for e in load_manifest(str(api / "manifest.json"))["shards"]] == urls
    # a missing input: exit status 2, as for every command
    assert cli_main(["index", str(tmp_path / "missing-{0..1}.tar"), "-o", str(tmp_path / "m.json")]) == 2
    assert "shard not found" in capsys.readouterr().err


@pytest.mark.parametrize("compress", [None, "gz"])
def test_shardwriter_index_equals_a_scan(tmp_path: Path, compress):
    suffix = "tar.gz" if compress else "tar"
    with shardpipe.ShardWriter(str(tmp_path / f"s-%03d.{suffix}"), maxcount=6, compress=compress) as w:
        for s in make_samples(20):
            w.write(s)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["index"] == "manifest.index"
    other = tmp_path / "again"
    other.mkdir()
    urls = sorted(str(p) for p in tmp_path.glob(f"s-*.{suffix}"))
    again = index_shards(urls, str(other / "manifest.json"), sha256=True)
    assert (tmp_path / "manifest.index").read_bytes() == (other / "manifest.index").read_bytes()
    assert [e["sha256"] for e in again["shards"]] == [e["sha256"] for e in written["shards"]]


def test_shards_kept_from_an_interrupted_run_are_indexed_too(tmp_path: Path):
    samples = make_samples(15)
    with shardpipe.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=6, manifest=False) as first:
        for s in samples[:6]:
            first.write(s)
    # what write_shards does on resume: the kept shards' entries, then the rest
    with shardpipe.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=6, start_shard=1) as w:
        w.shards = list(first.shards)
        for s in samples[6:]:
            w.write(s)
    ds = IndexedDataset(str(tmp_path / "manifest.json"), decode=None)
    assert [ds[i]["__key__"] for i in range(len(ds))] == [s["__key__"] for s in samples]


def test_indexed_dataset_random_access_decode_and_distributed_sampler(tmp_path: Path):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    with shardpipe.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=9) as w:
        for s in make_samples(40):
            w.write(s)
    manifest = str(tmp_path / "manifest.json")
    stream = streamed(manifest)
    raw = IndexedDataset(manifest, decode=None)
    for i in np.random.default_rng(0).permutation(40)[:15].tolist() + [-1]:
        got = raw[i]
        got.pop("__index__")
        assert got == stream[i]
    with pytest.raises(IndexError, match="out of range"):
        raw[40]
    decoded = IndexedDataset(manifest)  # decoded like ShardDataset's samples
    ref = list(ShardDataset(manifest))
    assert np.array_equal(decoded[7]["jpg"], ref[7]["jpg"]) and decoded[7]["cls"] == ref[7]["cls"]
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(decoded, num_replicas=2, rank=rank, shuffle=True, seed=1)
        # pytest's process runs the session's server threads: no plain fork beside them
        loader = DataLoader(decoded, batch_size=4, sampler=sampler, num_workers=2, timeout=120,
                            multiprocessing_context=shardpipe.worker_context(decoded))  # fmt: skip
        for batch in loader:
            assert isinstance(batch["jpg"], torch.Tensor) and batch["jpg"].shape[1:] == (40, 48, 3)
            seen += batch["__key__"]
    assert sorted(seen) == sorted(s["__key__"] for s in stream)


def test_indexed_dataset_from_s3_directly_and_through_the_cache(tmp_path: Path, s3_store):
    urls = write_shards(tmp_path, make_samples(30), [11, 7, 12])
    for u in urls:
        s3_store.put(f"idx/{Path(u).name}", Path(u).read_bytes())
    remote = [s3_store.url(f"idx/{Path(u).name}") for u in urls]
    options = s3_store.options()
    out = s3_store.url("idx/manifest.json")
    manifest = index_shards(remote, out, workers=2, storage_options=options)
    assert [e["samples"] for e in manifest["shards"]] == [11, 7, 12]
    stream = streamed(urls)
    for kw in ({}, {"cache_dir": str(tmp_path / "cache")}):
        ds = IndexedDataset(out, decode=None, storage_options=options, **kw)
        for i in np.random.default_rng(1).permutation(30)[:10].tolist():
            got = ds[i]
            got.pop("__index__")
            assert {k: v for k, v in got.items() if k != "__url__"} == {
                k: v for k, v in stream[i].items() if k != "__url__"
            }
            assert got["__url__"] == remote[stream[i]["__shard__"]]
    assert any((tmp_path / "cache").iterdir())


def _indexed_copy(tmp_path: Path, prefix: str) -> str:
    folder = tmp_path / prefix
    with shardpipe.ShardWriter(str(folder / "s-%03d.tar"), maxcount=10) as w:
        for s in make_samples(20, prefix=prefix):
            w.write(s)
    return str(folder / "manifest.json")


def test_an_index_that_no_longer_matches_its_shard_is_reported(tmp_path: Path):
    manifest = _indexed_copy(tmp_path, "sample")
    shard = tmp_path / "sample" / "s-000.tar"
    # same size, other content: keys of the same length (a rewritten shard)
    other = _indexed_copy(tmp_path, "sampla")
    good = shard.read_bytes()
    swapped = (tmp_path / "sampla" / "s-000.tar").read_bytes()
    assert len(good) == len(swapped)
    shard.write_bytes(swapped)
    with pytest.raises(CorruptShardError, match="index does not match shard .*s-000.tar"):
        IndexedDataset(manifest, decode=None)[3]
    from shardpipe.cli.verify import verify_shards

    problems = verify_shards(manifest)["problems"]
    assert [p for p in problems if "index mismatch" in p] == [
        f"{shard}: index mismatch: the shard changed since {tmp_path / 'sample' / 'manifest.index'} was written "
        "(run `shardpipe index`)"
    ]
    # a damaged header inside the range the index points at
    broken = bytearray(good)
    broken[512 * 0 + 3] ^= 0xFF
    shard.write_bytes(bytes(broken))
    with pytest.raises(CorruptShardError, match="index does not match shard"):
        IndexedDataset(manifest, decode=None)[0]
    # a shorter (or longer) shard: its size no longer matches
    shard.write_bytes(good[:-1024])
    with pytest.raises(CorruptShardError, match="was 10240 bytes when indexed|bytes but was"):
        IndexedDataset(manifest, decode=None)[0]
    # the other shard still reads
    assert IndexedDataset(manifest, decode=None)[15]["__key__"] == "sample00015"
    assert other


def test_read_past_the_end_is_truncated_shard_error(tmp_path: Path):
    urls = write_shards(tmp_path, make_samples(3), [3])
    size = Path(urls[0]).stat().st_size
    reader = RangeReader()
    assert len(reader.read(urls[0], size - 10, size)) == 10
    with pytest.raises(TruncatedShardError, match=f"truncated shard .*asked for bytes {size - 10}-{size + 9}"):
        reader.read(urls[0], size - 10, size + 10)


def test_bad_manifests(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"samples": 3}')
    with pytest.raises(ValueError, match="not a manifest: no 'shards' list"):
        load_manifest(str(bad))
    idx = tmp_path / "x.index"
    idx.write_bytes(b"SHPIDX01" + bytes(8) + (5).to_bytes(8, "little") + bytes(40))
    with pytest.raises(ValueError, match="truncated or damaged"):
        SampleIndex.load(str(idx))


@pytest.mark.parametrize("world, algo", [(3, "block")])
def test_gloo_ranks_on_webdataset_shards_after_shardpipe_index(tmp_path: Path, world: int, algo: str):
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    urls = webdataset_shards(tmp_path, "tar")
    manifest = str(tmp_path / "manifest.json")
    assert cli_main(["index", "::".join(urls), "-o", manifest, "--no-progress"]) == 0
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmds = [
        [sys.executable, "-m", "tests.dist_worker", str(r), str(world), str(tmp_path / "store"), manifest, "drop",
         str(tmp_path / f"r{r}.json"), algo]
        for r in range(world)
    ]  # fmt: skip
    with process_groups(*cmds, cwd=root, env=env) as procs:
        codes = [p.wait(timeout=180) for p in procs]
    assert codes == [0] * world, "a rank failed or hung (see its output above)"
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(world)]
    assert len({r["steps"] for r in results}) == 1, [r["steps"] for r in results]
    keys = [k for r in results for k in r["keys"]]
    assert len(keys) == len(set(keys)) and len(keys) == 25 - 25 % world
    assert set(keys) <= {s["__key__"] for s in streamed(urls)}
