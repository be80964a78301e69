"""Shard writing edge cases: a key repeated in a row, a shard number in a folder name, literal
braces in the pattern, and shards left in the output folder by an earlier run."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shardpipe
from shardpipe import ShardWriter, TarWriter
from shardpipe.devtools.synth import write_image_folder
from shardpipe.stages.shards import expand_urls
from shardpipe.write.job import write_shards
from shardpipe.write.shard_writer import ShardPatternError, brace_range, check_pattern, shard_name, stale_shards

from .helpers import make_samples

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m shardpipe.cli ARGS`` in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def keys(manifest: Path) -> list[str]:
    return [s["__key__"] for s in shardpipe.ShardDataset(str(manifest), decode=None)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree of 12 generated JPEGs in 2 classes."""
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root, 12, num_classes=2)
    return root


# ---------------------------------------------------------------- a key repeated in a row


def test_a_key_repeated_in_a_row_is_refused_naming_it(tmp_path: Path) -> None:
    a, a2, b = make_samples(3)
    a2["__key__"] = a["__key__"]
    with ShardWriter(str(tmp_path / "t-%06d.tar"), maxcount=10) as w:
        w.write(a)
        with pytest.raises(ValueError, match=r"sample key 'sample00000' repeats the previous sample's key"):
            w.write(a2)
        w.write(b)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["samples"] == 2 and manifest["shards"][0]["samples"] == 2
    assert keys(tmp_path / "manifest.json") == ["sample00000", "sample00002"]  # the refused sample left nothing
    ds = shardpipe.IndexedDataset(str(tmp_path / "manifest.json"), decode=None)
    assert [ds[i]["__key__"] for i in range(len(ds))] == ["sample00000", "sample00002"]


def test_the_tar_writer_refuses_the_repeat_before_writing_a_byte() -> None:
    a, b = make_samples(2)
    out = io.BytesIO()
    tw = TarWriter(out)
    tw.write(a)
    before = (out.getvalue(), tw.tar_size, tw.samples)
    with pytest.raises(ValueError, match=r"'sample00000' repeats the previous sample's key.*own '__key__'"):
        tw.write({**b, "__key__": a["__key__"]})
    assert (out.getvalue(), tw.tar_size, tw.samples) == before


def test_repeats_that_are_not_in_a_row_or_cross_a_shard_boundary_are_kept(tmp_path: Path) -> None:
    a, b, a2 = make_samples(3)
    a2["__key__"] = a["__key__"]
    with ShardWriter(str(tmp_path / "apart" / "t-%06d.tar"), maxcount=10) as w:
        for s in (a, b, a2):  # webdataset allows this too: the reader sees three samples
            w.write(s)
    assert keys(tmp_path / "apart" / "manifest.json") == ["sample00000", "sample00001", "sample00000"]
    with ShardWriter(str(tmp_path / "split" / "t-%06d.tar"), maxcount=1) as w:
        w.write(a)
        w.write(a2)  # the next shard: nothing to merge with
    assert keys(tmp_path / "split" / "manifest.json") == ["sample00000", "sample00000"]


# ---------------------------------------------------------------- the shard number in a folder name


@pytest.mark.parametrize(
    ("pattern", "example"),
    [
        ("pd/%03d/shard.tar", "'pd/shard-%03d.tar'"),
        ("pd/{:04d}/x/shard.tar.gz", "'pd/shard-{:04d}.tar.gz'"),
        ("%d/shard.tar", "'shard-%d.tar'"),
        ("s3://bucket/run-{}/train.tar", "'s3://bucket/train-{}.tar'"),
    ],
)
def test_a_shard_number_in_a_folder_name_is_refused(pattern: str, example: str) -> None:
    with pytest.raises(ShardPatternError) as info:
        check_pattern(pattern)
    message = str(info.value)
    assert f"shard pattern {pattern!r} puts the shard number in a folder name" in message
    assert "manifest.json" in message and f"put the number in the file name, e.g. {example}" in message


def test_the_writers_refuse_it_before_writing(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardPatternError, match="puts the shard number in a folder name"):
        ShardWriter(str(tmp_path / "a" / "%03d" / "shard.tar"))
    with pytest.raises(ShardPatternError, match="puts the shard number in a folder name"):
        write_shards(str(images), str(tmp_path / "b" / "%03d" / "shard.tar"), maxcount=5, progress=False)
    proc = cli("write", str(images), "c/%03d/shard.tar", "--maxcount", "5", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "shardpipe write: error: shard pattern 'c/%03d/shard.tar' puts the shard number in a folder" in proc.stderr
    assert "e.g. 'c/shard-%03d.tar'" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_a_number_in_the_file_name_below_numbered_looking_folders_is_fine() -> None:
    assert check_pattern("runs/2024/v%%1/train-%06d.tar") == "%"
    assert check_pattern("runs/{{x}}/train-{:06d}.tar") == "{}"


# ---------------------------------------------------------------- literal braces


@pytest.mark.parametrize(
    "pattern",
    ["set{{a}}-{:04d}.tar", "{{x,y}}-{}.tar", "p%%-{a,b}-%03d.tar", "d{{1..2}}/s-{0:02d}.tar", "s-%06d.tar"],
)
@pytest.mark.parametrize("count", [1, 3])
def test_brace_range_expands_to_exactly_the_shards_written(tmp_path: Path, pattern: str, count: int) -> None:
    full = f"{tmp_path}/{pattern}"
    with ShardWriter(full, maxcount=2) as w:
        for s in make_samples(2 * count):
            w.write(s)
    written = [shard_name(full, i) for i in range(count)]
    assert all(os.path.isfile(p) for p in written)
    assert [s.url for s in expand_urls(brace_range(full, count))] == written


def test_brace_range_keeps_the_plain_form_for_plain_patterns() -> None:
    assert brace_range("out/train-%06d.tar", 3) == "out/train-{000000..000002}.tar"
    assert brace_range("out/train-{:04d}.tar", 1) == "out/train-0000.tar"
    assert brace_range("out/set{{a}}-{:04d}.tar", 2) == r"out/set\{a\}-{0000..0001}.tar"


def test_the_cli_prints_a_brace_range_of_the_shards_with_literal_braces(images: Path, tmp_path: Path) -> None:
    proc = cli("write", str(images), "bl/set{{a}}-{:04d}.tar", "--maxcount", "5", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith("shards: ")]
    assert printed == [r"shards: bl/set\{a\}-{0000..0002}.tar"]
    on_disk = sorted(p.name for p in (tmp_path / "bl").glob("*.tar"))
    assert on_disk == ["set{a}-0000.tar", "set{a}-0001.tar", "set{a}-0002.tar"]
    expanded = [s.url for s in expand_urls(str(tmp_path / printed[0].removeprefix("shards: ")))]
    assert expanded == [str(tmp_path / "bl" / n) for n in on_disk]


# ---------------------------------------------------------------- shards left by an earlier run


def test_stale_shards_lists_only_files_the_pattern_could_have_named(tmp_path: Path) -> None:
    for name in ["s-000000.tar", "s-000001.tar", "s-000010.tar", "s-000002.tar", "s-1.tar", "s-000003.tar.1a2b3c4d.tmp",
                 "notes.txt", "manifest.json", "t-000004.tar"]:  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "s-000005.tar").mkdir()
    stale = stale_shards(str(tmp_path / "s-%06d.tar"), {"s-000000.tar", "s-000001.tar"})
    assert stale == [str(tmp_path / "s-000002.tar"), str(tmp_path / "s-000010.tar")]
    assert stale_shards(str(tmp_path / "missing" / "s-%06d.tar"), set()) == []


def test_writing_over_a_bigger_earlier_run_warns_and_keeps_the_files(images: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "st"
    write_shards(str(images), str(out / "s-%06d.tar"), maxcount=2, progress=False)  # 6 shards
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        summary = write_shards(str(images), str(out / "s-%06d.tar"), maxcount=5, progress=False)  # 3 shards
    assert summary.shards == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"3 file(s) in {out} match the shard pattern but were not written by this run "
        "(s-000003.tar, s-000004.tar, s-000005.tar)"
    )
    assert "delete them or write into an empty folder" in warnings[0]
    assert sorted(p.name for p in out.glob("s-*.tar")) == [f"s-{i:06d}.tar" for i in range(6)]  # nothing deleted


def test_no_warning_when_the_folder_holds_only_this_runs_shards(images: Path, tmp_path: Path, caplog) -> None:
    pattern = str(tmp_path / "s-%06d.tar")
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        write_shards(str(images), pattern, maxcount=5, progress=False)
        write_shards(str(images), pattern, maxcount=5, progress=False)  # the same shards again
        write_shards(str(images), pattern, maxcount=5, maxsize=1 << 30, progress=False)  # the rolling layout
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_shard_writer_warns_too(tmp_path: Path, caplog) -> None:
    (tmp_path / "t-007.tar").write_bytes(b"old")
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        with ShardWriter(str(tmp_path / "t-%03d.tar"), maxcount=5, compress=None) as w:
            for s in make_samples(3):
                w.write(s)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"1 file(s) in {tmp_path} match the shard pattern but were not written by this run (t-007.tar)"
    ]


def test_the_cli_shows_the_warning(images: Path, tmp_path: Path) -> None:
    first = cli("write", str(images), "st/s-%06d.tar", "--maxcount", "2", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0 and "WARNING" not in first.stderr, first.stderr
    again = cli("write", str(images), "st/s-%06d.tar", "--maxcount", "3", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    lines = [line for line in again.stderr.splitlines() if line.startswith("WARNING")]
    assert lines == [
        "WARNING 2 file(s) in st match the shard pattern but were not written by this run (s-000004.tar, "
        "s-000005.tar): manifest.json lists only this run's shards, but a glob over the folder would read these "
        "too; delete them or write into an empty folder"
    ]


def test_a_shard_writer_without_a_size_limit_closes_shards_by_count(tmp_path: Path):
    with ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=3, maxsize=None) as w:
        for i in range(7):
            w.write({"__key__": f"k{i}", "txt": "x" * 2000})
    assert [e["samples"] for e in w.shards] == [3, 3, 1]


@pytest.mark.parametrize("taken", [["samples"], ["format", "shards"], ["bytes", "index"]])
def test_metadata_may_not_replace_the_manifests_own_keys(tmp_path: Path, taken):
    with pytest.raises(ValueError) as e:
        ShardWriter(str(tmp_path / "s-%02d.tar"), metadata={k: 1 for k in taken} | {"class_names": ["a"]})
    assert str(e.value) == (
        f"metadata keys {sorted(taken)} are the manifest's own (['bytes', 'format', 'index', 'samples', 'shards']); "
        "name them otherwise"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("maxcount, maxsize", [(0, None), (1, 0), (1, -5)])
def test_shard_limits_must_be_positive(tmp_path: Path, maxcount, maxsize):
    with pytest.raises(ValueError, match=r"^maxcount and maxsize must be positive \(maxsize=None: no limit\)$"):
        ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=maxcount, maxsize=maxsize)


@pytest.mark.parametrize(
    "pattern, compress, message",
    [
        ("s-%02d.tar", "gz", "gzip shards need a .tar.gz or .tgz name (readers go by it), not '{}'"),
        ("s-%02d.tgz", None, "shard '{}' is named as gzip but written plain: pass compress='gz' or name it .tar"),
        ("s-%02d.TAR.GZ", None, "shard '{}' is named as gzip but written plain: pass compress='gz' or name it .tar"),
    ],
)
def test_a_shard_name_must_say_the_compression_it_has(tmp_path: Path, pattern, compress, message):
    full = str(tmp_path / pattern)
    with pytest.raises(ValueError) as e:
        ShardWriter(full, compress=compress)
    assert str(e.value) == message.format(full % 0)
    with pytest.raises(ValueError) as e:
        write_shards(str(tmp_path), full, compress=compress)  # before the source is read
    assert str(e.value) == message.format(full % 0)
    assert not list(tmp_path.glob("s-*"))


@pytest.mark.parametrize("pattern, compress", [("s-%02d.tar", None), ("s-%02d.tar.gz", "gz"), ("s-%02d.tgz", "gz")])
def test_names_that_say_their_compression_are_written_and_read_by_webdataset(tmp_path: Path, pattern, compress):
    import webdataset as wds

    with ShardWriter(str(tmp_path / pattern), maxcount=3, compress=compress) as w:
        for s in make_samples(5):
            w.write(s)
    urls = sorted(str(p) for p in tmp_path.glob("s-*"))
    got = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert got == [s["__key__"] for s in make_samples(5)]
