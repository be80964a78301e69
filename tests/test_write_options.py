"""write_shards' one options object: flat keywords and WriteOptions write the same shards; bad values fail early."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shardpipe.devtools.synth import write_flat_folder, write_image_folder
from shardpipe.write.job import write_shards
from shardpipe.write.options import WriteOptions
from shardpipe.write.prepare import Prepared, PrepareOptions, Skipped, prepare
from shardpipe.write.sources.folder import FolderSource


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_options_object_and_flat_keywords_write_the_same_bytes(tmp_path: Path):
    src = tmp_path / "src"
    write_image_folder(src, 12, seed=3)
    a = write_shards(src, str(tmp_path / "a" / "s-%04d.tar"), maxcount=5, shuffle=True, seed=7)
    b = write_shards(src, str(tmp_path / "b" / "s-%04d.tar"), WriteOptions(maxcount=5, shuffle=True, seed=7))
    assert (a.written, a.shards, a.shuffled) == (b.written, b.shards, b.shuffled) == (12, 3, True)
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    assert len(_shard_bytes(tmp_path / "a")) == 3


def test_flat_keywords_replace_the_fields_of_a_given_options_object(tmp_path: Path):
    src = tmp_path / "src"
    write_image_folder(src, 6, seed=1)
    summary = write_shards(src, str(tmp_path / "o" / "s-%04d.tar"), WriteOptions(maxcount=2), maxcount=3)
    assert summary.shards == 2


def test_options_are_frozen_and_check_themselves():
    opts = WriteOptions(maxcount=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.maxcount = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="maxcount must be positive, got 0"):
        WriteOptions(maxcount=0)
    with pytest.raises(ValueError, match=r"unknown engine 'spark': choose one of \['local', 'ray'\]"):
        WriteOptions(engine="spark")
    with pytest.raises(ValueError, match="quality must be 1..100, got 0"):
        WriteOptions(quality=0)
    assert opts.prepare == PrepareOptions(None, 90, "header")


def test_unknown_keyword_is_a_type_error_naming_the_nearest(tmp_path: Path):
    with pytest.raises(TypeError, match="write_shards got an unknown keyword 'maxcnt'; did you mean 'maxcount'"):
        write_shards(tmp_path, str(tmp_path / "s-%04d.tar"), maxcnt=3)
    with pytest.raises(TypeError, match="then a WriteOptions"):
        write_shards(tmp_path, str(tmp_path / "s-%04d.tar"), {"maxcount": 3})  # type: ignore[arg-type]


def test_prepare_returns_named_records(tmp_path: Path):
    src = tmp_path / "src"
    write_flat_folder(src, 1, seed=2)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    source = FolderSource(src)
    records = {Path(r.name).name: r for r in source.scan().records}
    good_name = next(n for n in records if n != "broken.jpg")
    copy = PrepareOptions(restart_intervals=False)  # a byte-for-byte copy
    good = prepare(source, copy, 0, records[good_name])
    assert isinstance(good, Prepared) and good.pos == 0 and good.ext == "jpg" and good.presized is False
    assert good.marked is False and good.data == (src / good_name).read_bytes()
    bad = prepare(source, copy, 1, records["broken.jpg"])
    assert isinstance(bad, Skipped) and (bad.pos, bad.name) == (1, "broken.jpg")
    assert bad.reason.startswith("unreadable image")
