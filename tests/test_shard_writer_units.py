"""write/shard_writer units: a glob given as the pattern, the stale-shard listing's order and
warning, the smallest size limit, and a store that needs its storage options for every write,
listing and scan."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import shardpipe
from shardpipe import ShardWriter
from shardpipe.write.shard_writer import (
    ShardPatternError,
    check_pattern,
    shard_name,
    stale_shards,
    warn_stale_shards,
)

from .helpers import make_samples

KEY = "secret"  # the storage option KeyedStore wants
TAIL = (
    ": manifest.json lists only this run's shards, but a glob over the folder would read these too; "
    "delete them or write into an empty folder"
)


class KeyedStore(MemoryFileSystem):
    """An in-memory store that opens, lists and moves only when given ``key=KEY`` (a storage option,
    like a credential): a call that drops the options fails."""

    protocol = "keyedwrite"
    store: dict = {}
    pseudo_dirs = [""]
    reads: list = []  # the file names opened or read from

    def __init__(self, *args, key=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = key

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("keyedwrite://"))

    def _check(self, path):
        if self.key != KEY:
            raise PermissionError(f"no key for {path}")

    def _open(self, path, mode="rb", *args, **kwargs):
        self._check(path)
        if "r" in mode:
            KeyedStore.reads.append(path.rsplit("/", 1)[-1])
        return super()._open(path, mode, *args, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._check(path)
        KeyedStore.reads.append(path.rsplit("/", 1)[-1])
        return super().cat_file(path, start=start, end=end, **kwargs)

    def ls(self, path, detail=True, **kwargs):
        self._check(path)
        return super().ls(path, detail=detail, **kwargs)

    def find(self, path, *args, **kwargs):
        self._check(path)
        return super().find(path, *args, **kwargs)

    def mv(self, path1, path2, **kwargs):
        self._check(path1)
        return super().mv(path1, path2, **kwargs)


fsspec.register_implementation("keyedwrite", KeyedStore, clobber=True)
OPTIONS = {"key": KEY}


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------- a glob for a pattern


def test_a_glob_pattern_is_refused_with_its_first_star_numbered():
    with pytest.raises(ShardPatternError) as info:
        check_pattern("out/train-*.tar")
    assert str(info.value) == (
        "shard pattern 'out/train-*.tar' needs a %d or {} placeholder for the shard number, e.g. "
        "'out/train-%06d.tar' (a glob names existing files; shards to write need numbers)"
    )
    with pytest.raises(ShardPatternError) as info:
        check_pattern("out/*/part-*.tar")
    assert "e.g. 'out/%06d/part-*.tar' (a glob names" in str(info.value)  # the first star only


def test_a_pattern_without_a_number_or_a_star_gets_the_stock_example():
    with pytest.raises(ShardPatternError) as info:
        check_pattern("data/shard.tar")
    assert str(info.value) == (
        "shard pattern 'data/shard.tar' needs a %d or {} placeholder for the shard number, e.g. 'out/train-%06d.tar'"
    )


USAGE = "it needs a %d or {} placeholder (exactly one) for the shard number, e.g. out/train-%06d.tar"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "shard pattern must be a non-empty string, not ''"),
        (None, "shard pattern must be a non-empty string, not None"),
        (b"s-%d.tar", "shard pattern must be a non-empty string, not b's-%d.tar'"),
        ("x-%d-%d.tar", f"shard pattern 'x-%d-%d.tar' has 2 placeholders, not one: {USAGE}"),
        ("x-%s.tar", f"shard pattern 'x-%s.tar' has a % that is not a %d placeholder: {USAGE}"),
        ("x-{-{}.tar", f"shard pattern 'x-{{-{{}}.tar' has a brace that is not a {{}} placeholder: {USAGE}"),
        ("x-}-{}.tar", f"shard pattern 'x-}}-{{}}.tar' has a brace that is not a {{}} placeholder: {USAGE}"),
        ("x-%033d.tar", "shard pattern 'x-%033d.tar' pads the number to 33 digits (at most 32)"),
        ("x-{:033d}.tar", "shard pattern 'x-{:033d}.tar' pads the number to 33 digits (at most 32)"),
    ],
)
def test_each_refused_pattern_by_its_whole_message(pattern, message):
    with pytest.raises(ShardPatternError) as info:
        check_pattern(pattern)
    assert str(info.value) == message


def test_a_lone_brace_beside_a_placeholder_is_refused_not_left_to_format():
    for pattern in ("x-{-{}.tar", "x-}-{}.tar"):  # str.format would fail on these mid-write
        with pytest.raises(ShardPatternError, match="has a brace that is not a {} placeholder"):
            ShardWriter(pattern)


def test_thirty_two_digits_are_the_widest_padding():
    assert check_pattern("x-%032d.tar") == "%" and check_pattern("x-{0:032d}.tar") == "{}"
    assert shard_name("x-%032d.tar", 5) == "x-" + "0" * 31 + "5.tar"


# ---------------------------------------------------------------- stale shards


def test_stale_shards_come_in_natural_order(tmp_path: Path):
    for name in ["s-0.tar", "s-10.tar", "s-9.tar", "s-2.tar", "s-100.tar"]:
        (tmp_path / name).write_bytes(b"x")
    stale = stale_shards(str(tmp_path / "s-%d.tar"), {"s-0.tar"})
    assert stale == [str(tmp_path / n) for n in ["s-2.tar", "s-9.tar", "s-10.tar", "s-100.tar"]]


def test_the_warning_names_three_stale_shards_then_dots(tmp_path: Path, caplog):
    for i in range(1, 6):
        (tmp_path / f"s-{i:02d}.tar").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        warn_stale_shards(str(tmp_path / "s-%02d.tar"), {"s-01.tar"})
    assert warnings_of(caplog) == [
        f"4 file(s) in {tmp_path} match the shard pattern but were not written by this run "
        f"(s-02.tar, s-03.tar, s-04.tar, ...){TAIL}"
    ]


def test_three_stale_shards_are_all_named_without_dots(tmp_path: Path, caplog):
    for i in range(1, 4):
        (tmp_path / f"s-{i:02d}.tar").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        warn_stale_shards(str(tmp_path / "s-%02d.tar"), set())
    assert warnings_of(caplog) == [
        f"3 file(s) in {tmp_path} match the shard pattern but were not written by this run "
        f"(s-01.tar, s-02.tar, s-03.tar){TAIL}"
    ]


def test_a_pattern_without_a_folder_looks_in_the_working_folder(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s-07.tar").write_bytes(b"x")
    assert stale_shards("s-%02d.tar", set()) == ["s-07.tar"]
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        warn_stale_shards("s-%02d.tar", set())
    assert warnings_of(caplog) == [
        f"1 file(s) in . match the shard pattern but were not written by this run (s-07.tar){TAIL}"
    ]


def test_a_literal_percent_after_the_number_is_matched_as_one_percent(tmp_path: Path):
    for name in ["s-00%.tar", "s-07%.tar", "s-07%%.tar", "s-07.tar", "%s-08.tar", "%%s-09.tar"]:
        (tmp_path / name).write_bytes(b"x")
    assert stale_shards(str(tmp_path / "s-%02d%%.tar"), {"s-00%.tar"}) == [str(tmp_path / "s-07%.tar")]
    assert stale_shards(str(tmp_path / "%%s-%02d.tar"), set()) == [str(tmp_path / "%s-08.tar")]


# ---------------------------------------------------------------- where the shards go


def test_a_pattern_without_a_folder_writes_into_the_working_folder(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ShardWriter("s-%02d.tar", maxcount=2) as w:
        for s in make_samples(3):
            w.write(s)
    assert [e["name"] for e in w.shards] == ["s-00.tar", "s-01.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.index", "manifest.json", "s-00.tar", "s-01.tar"]
    assert [e["name"] for e in json.loads((tmp_path / "manifest.json").read_text())["shards"]] == [
        "s-00.tar",
        "s-01.tar",
    ]


def test_abort_drops_the_shard_in_progress_and_the_writer_goes_on_at_its_number(tmp_path: Path):
    samples = make_samples(5)
    w = ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=2)
    for s in samples[:3]:
        w.write(s)
    w.abort()  # drops sample 2's shard, s-01, before it was renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-00.tar"]
    w.abort()  # nothing in progress: nothing to drop
    for s in samples[3:]:
        w.write(s)
    w.close()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(e["name"], e["samples"]) for e in manifest["shards"]] == [("s-00.tar", 2), ("s-01.tar", 2)]
    keys = [s["__key__"] for s in shardpipe.ShardDataset(str(tmp_path / "manifest.json"), decode=None)]
    assert keys == ["sample00000", "sample00001", "sample00003", "sample00004"]


# ---------------------------------------------------------------- limits


def test_the_smallest_size_limit_puts_each_sample_in_its_own_shard(tmp_path: Path):
    with ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=10, maxsize=1) as w:
        for s in make_samples(3):
            w.write(s)
    assert [e["samples"] for e in w.shards] == [1, 1, 1]
    assert [e["name"] for e in w.shards] == ["s-00.tar", "s-01.tar", "s-02.tar"]


# ---------------------------------------------------------------- a store that needs its options


@pytest.fixture
def store():
    KeyedStore.store.clear()
    KeyedStore.reads.clear()
    fs = fsspec.filesystem("keyedwrite", **OPTIONS)
    yield fs
    KeyedStore.store.clear()
    KeyedStore.reads.clear()


def test_the_shards_manifest_and_index_are_written_with_the_storage_options(store, tmp_path: Path):
    samples = make_samples(5)
    with ShardWriter("keyedwrite://run/s-%02d.tar", maxcount=2, storage_options=OPTIONS) as w:
        for s in samples:
            w.write(s)
    assert KeyedStore.reads == []  # the index comes from the writing: no shard is read back
    names = sorted(p.rsplit("/", 1)[-1] for p in store.find("/run"))
    assert names == ["manifest.index", "manifest.json", "s-00.tar", "s-01.tar", "s-02.tar"]
    manifest = json.loads(store.cat_file("/run/manifest.json"))
    assert [e["samples"] for e in manifest["shards"]] == [2, 2, 1]
    # the same bytes as the same samples written to a local folder
    with ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=2) as w:
        for s in samples:
            w.write(s)
    for name in ("s-00.tar", "s-01.tar", "s-02.tar", "manifest.index"):
        assert store.cat_file(f"/run/{name}") == (tmp_path / name).read_bytes()
    local = shardpipe.ShardDataset(str(tmp_path / "manifest.json"), decode=None)
    assert [s["__key__"] for s in local] == [s["__key__"] for s in samples]


def test_without_the_storage_options_the_store_refuses_the_first_shard(store):
    with pytest.raises(PermissionError, match="no key for"):
        with ShardWriter("keyedwrite://run/s-%02d.tar", maxcount=2) as w:
            w.write(make_samples(1)[0])
    assert store.find("/run") == []


def test_stale_shards_in_a_store_are_listed_with_the_storage_options(store, caplog):
    store.pipe("/run/s-07.tar", b"old")
    store.pipe("/run/notes.txt", b"x")
    store.pipe("/run/old/s-08.tar", b"old")  # in a subfolder: no glob over /run reads it
    assert stale_shards("keyedwrite://run/s-%02d.tar", {"s-00.tar"}, OPTIONS) == ["keyedwrite://run/s-07.tar"]
    assert stale_shards("keyedwrite://run/s-%02d.tar", {"s-00.tar"}) == []  # cannot list: nothing named
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        with ShardWriter("keyedwrite://run/s-%02d.tar", maxcount=5, storage_options=OPTIONS) as w:
            w.write(make_samples(1)[0])
    assert warnings_of(caplog) == [
        "1 file(s) in keyedwrite://run match the shard pattern but were not written by this run (s-07.tar)" + TAIL
    ]


def test_a_store_that_cannot_be_listed_is_logged_at_debug_with_the_reason(store, caplog):
    with caplog.at_level(logging.DEBUG, logger="shardpipe"):
        assert stale_shards("keyedwrite://run/s-%02d.tar", set()) == []
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "cannot list keyedwrite://run to look for stale shards: no key for /run")
    ]


def test_resumed_shards_are_scanned_with_the_storage_options_for_the_index(store):
    samples = make_samples(5)
    with ShardWriter("keyedwrite://run/s-%02d.tar", maxcount=2, storage_options=OPTIONS) as first:
        for s in samples:
            first.write(s)
    whole_index = store.cat_file("/run/manifest.index")
    KeyedStore.reads.clear()
    # a resumed run: the first two shards are kept from the run above, the rest written again
    with ShardWriter("keyedwrite://run/s-%02d.tar", maxcount=2, start_shard=2, storage_options=OPTIONS) as again:
        again.shards = list(first.shards[:2])
        again.write(samples[4])
    assert sorted(set(KeyedStore.reads)) == ["s-00.tar", "s-01.tar"]  # the kept shards only, scanned
    assert store.cat_file("/run/manifest.index") == whole_index
    assert json.loads(store.cat_file("/run/manifest.json"))["shards"] == first.shards
