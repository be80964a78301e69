"""IndexedShards, IndexedDataset and block_shuffle_source one piece at a time: messages, options
passed through, pickling, negative indices, the transform's (seed, epoch) and read hints."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from shardpipe import CorruptShardError, IndexedDataset, index_shards
from shardpipe.augment.base import sample_rng
from shardpipe.format.manifest import load_manifest
from shardpipe.indexed import IndexedShards, block_shuffle_source
from shardpipe.io.access import AccessDeniedError
from shardpipe.io.remote import ReadOptions

from .helpers import make_samples, write_shards, write_with_shard_writer

N = 7  # samples, in shards of 3, 3 and 1
KEY = "k"  # the storage option KeyedFS wants


class KeyedFS(MemoryFileSystem):
    """An in-memory store that reads only when given ``key=KEY`` (a storage option, like a credential)."""

    protocol = "keyedmem"
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, key=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = key

    def _check(self, path):
        if self.key != KEY:
            raise PermissionError(f"no key for {path}")

    def _open(self, path, *args, **kwargs):
        self._check(path)
        return super()._open(path, *args, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._check(path)
        return super().cat_file(path, start=start, end=end, **kwargs)


fsspec.register_implementation("keyedmem", KeyedFS, clobber=True)
OPTIONS = {"key": KEY}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_with_shard_writer(tmp_path_factory.mktemp("indexed-units"), N, maxcount=3)


@pytest.fixture(scope="module")
def remote(manifest) -> str:
    """The same shards, manifest and index in the keyed store; a copy under bad/ whose manifest
    gives shard 0 a wrong sha256. Returns the good manifest's URL."""
    fs = fsspec.filesystem("keyedmem", **OPTIONS)
    for p in Path(manifest).parent.iterdir():
        fs.pipe(f"keyedmem://units/good/{p.name}", p.read_bytes())
        fs.pipe(f"keyedmem://units/bad/{p.name}", p.read_bytes())
    meta = json.loads(Path(manifest).read_text())
    meta["shards"][0]["sha256"] = "0" * 64
    fs.pipe("keyedmem://units/bad/manifest.json", json.dumps(meta).encode())
    yield "keyedmem://units/good/manifest.json"
    fsspec.filesystem("keyedmem", **OPTIONS).rm("keyedmem://units", recursive=True)


BLOCK_NEEDS_MANIFEST = (
    "shuffle_algo='block' reads samples by random access: pass the shards' manifest.json with its index "
    "(create both for existing shards with `shardpipe index SHARDS -o manifest.json`)"
)


def test_block_shuffle_source_reads_the_manifest_only_for_the_block_shuffle(manifest):
    shards = block_shuffle_source(manifest, True, "block")
    assert isinstance(shards, IndexedShards)
    assert shards.manifest == manifest
    assert len(shards) == N
    assert [Path(u).name for u in shards.urls] == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert shards.sample(3)["__key__"] == "sample00003"
    assert block_shuffle_source(manifest, 500, "block").manifest == manifest  # a window size asks for shuffling too
    assert block_shuffle_source(manifest, True, "window") is None
    assert block_shuffle_source(manifest, True, "auto") is None
    for off in (False, 0):
        with pytest.raises(ValueError) as e:
            block_shuffle_source(manifest, off, "block")
        assert str(e.value) == "shuffle_algo='block' needs shuffle=True"


@pytest.mark.parametrize("urls", ["{dir}/s-{{000..002}}.tar", ["{dir}/s-000.tar", "{dir}/s-001.tar"], "{dir}/*.tar"])
def test_block_shuffle_source_without_one_manifest_says_how_to_make_one(manifest, urls):
    folder = str(Path(manifest).parent)
    urls = [u.format(dir=folder) for u in urls] if isinstance(urls, list) else urls.format(dir=folder)
    with pytest.raises(ValueError) as e:
        block_shuffle_source(urls, True, "block")
    assert str(e.value) == BLOCK_NEEDS_MANIFEST


def test_block_shuffle_source_passes_the_loaded_manifest_and_storage_options(remote):
    loaded = load_manifest(remote, OPTIONS)
    shards = block_shuffle_source(remote, True, "block", storage_options=OPTIONS, loaded=loaded)
    assert shards.manifest == remote
    assert shards.storage_options == OPTIONS
    assert shards.index_url == "keyedmem://units/good/manifest.index"
    assert shards.sample(6)["__key__"] == "sample00006"
    with pytest.raises(
        AccessDeniedError, match=r"^keyedmem://units/good/manifest.index: access denied \(no key for keyedmem://"
    ):
        block_shuffle_source(remote, True, "block", loaded=loaded)  # the index needs the options too


def test_indexed_dataset_reads_with_its_read_options(manifest):
    small = ReadOptions(block_size=1)
    ds = IndexedDataset(manifest, decode=None, read_options=small)
    assert ds.shards.reader.read_options is small
    assert [s["__key__"] for s in ds.__getitems__([0, 1, 2])] == ["sample00000", "sample00001", "sample00002"]
    assert ds.shards.reader.requests == 3  # one request per sample: none fits a 1-byte block
    default = IndexedDataset(manifest, decode=None)
    assert default.shards.reader.read_options == ReadOptions()
    assert [s["__key__"] for s in default.__getitems__([0, 1, 2])] == ["sample00000", "sample00001", "sample00002"]
    assert default.shards.reader.requests == 1  # neighbours of one shard: one read


def test_the_transform_draws_from_seed_epoch_and_key(manifest):
    drawn: list[int] = []

    def record(img, rng):
        drawn.append(int(rng.integers(1 << 62)))
        return img

    ds = IndexedDataset(manifest, decode="rgb8", transform=record, seed=5)
    assert (ds.seed, ds.epoch) == (5, 0)
    first = ds[2]
    assert first["__key__"] == "sample00002"
    assert first["jpg"].shape == (40, 48, 3)
    ds.set_epoch(3)
    ds[2]
    other = IndexedDataset(manifest, decode="rgb8", transform=record)  # seed 0
    other[4]
    expected = [
        int(sample_rng(5, 0, "sample00002").integers(1 << 62)),
        int(sample_rng(5, 3, "sample00002").integers(1 << 62)),
        int(sample_rng(0, 0, "sample00004").integers(1 << 62)),
    ]
    assert drawn == expected
    assert len(set(drawn)) == 3


def test_negative_indices_count_from_the_end(manifest):
    ds = IndexedDataset(manifest, decode=None)
    assert len(ds) == N
    assert ds[-N]["__key__"] == "sample00000"
    assert ds[-1]["__key__"] == "sample00006"
    assert ds[-N]["__index__"] == 0
    assert [s["__index__"] for s in ds.__getitems__([-N, -1, 3])] == [0, N - 1, 3]
    for bad in (-N - 1, N):
        with pytest.raises(IndexError) as e:
            ds[bad]
        assert str(e.value) == f"index {bad} out of range: the dataset holds {N} samples"


def test_pickled_shards_leave_the_index_behind_and_map_it_again(manifest):
    shards = IndexedShards(manifest)
    state = shards.__getstate__()
    assert state["index"] is None
    assert set(state) == set(vars(shards))
    restored = pickle.loads(pickle.dumps(shards))
    assert set(vars(restored)) == set(vars(shards))
    assert restored.index.url == shards.index_url
    assert len(restored) == N
    assert restored.sample(4)["__key__"] == "sample00004"
    assert restored.index.locate(4) == shards.index.locate(4)


def test_pickled_remote_shards_read_the_index_with_the_storage_options(remote):
    shards = IndexedShards(remote, OPTIONS)
    restored = pickle.loads(pickle.dumps(shards))
    assert restored.storage_options == OPTIONS
    assert len(restored) == N
    assert restored.sample(5)["__key__"] == "sample00005"


def test_advise_hints_the_bytes_of_the_sample(manifest, monkeypatch):
    shards = IndexedShards(manifest)
    calls = []
    real = os.posix_fadvise

    def spy(fd, offset, length, advice):
        calls.append((offset, length, advice))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    for i in (0, 4, 6):
        assert shards.advise(i) is None
    expected = []
    for i in (0, 4, 6):
        _, start, end, _ = shards.index.locate(i)
        expected.append((start, end - start, os.POSIX_FADV_WILLNEED))
    assert calls == expected
    assert [c[1] > 0 for c in calls] == [True, True, True]


def test_gzip_shards_are_refused_for_random_access_saying_why(tmp_path: Path):
    urls = write_shards(tmp_path, make_samples(5), [2, 3], compress="gz")
    out = str(tmp_path / "manifest.json")
    index_shards(urls, out, workers=1)
    shards = IndexedShards(out)
    assert [Path(u).name for u in shards.sequential_only] == ["shard-0000.tar.gz", "shard-0001.tar.gz"]
    expected = (
        f"2 shards are gzip-compressed ({shards.sequential_only[0]}, ...): they can only be read sequentially; "
        "write tar shards (or gunzip them and run `shardpipe index`) for random access"
    )
    for make in (lambda: IndexedDataset(out, decode=None), lambda: block_shuffle_source(out, True, "block")):
        with pytest.raises(ValueError) as e:
            make()
        assert str(e.value) == expected


def test_a_cached_sample_is_checked_against_the_manifest_sha256(remote, tmp_path: Path):
    good = IndexedShards(remote, OPTIONS, cache_dir=str(tmp_path / "good"))
    assert good.sample(1)["__key__"] == "sample00001"
    bad_url = "keyedmem://units/bad/manifest.json"
    bad = IndexedShards(bad_url, OPTIONS, cache_dir=str(tmp_path / "bad"))
    digest = hashlib.sha256(fsspec.filesystem("keyedmem", **OPTIONS).cat("keyedmem://units/bad/s-000.tar")).hexdigest()
    with pytest.raises(CorruptShardError) as e:
        bad.sample(1)
    assert str(e.value) == (f"keyedmem://units/bad/s-000.tar: sha256 {digest} does not match the manifest's {'0' * 64}")
    assert bad.sample(4)["__key__"] == "sample00004"  # shard 1's sha256 is right
    assert np.array_equal(bad.index.counts(), [3, 3, 1])
