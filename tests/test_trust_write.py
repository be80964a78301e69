"""Writer inputs that are checked before anything is written: the output pattern (exactly one
shard-number placeholder) and the user's label regex (a time bound per file name)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe import ShardpipeError, ShardWriter, write_shards
from shardpipe.devtools.synth import make_jpeg
from shardpipe.write.shard_writer import ShardPatternError, check_pattern, shard_name
from shardpipe.write.sources import folder as folder_source

REPO = Path(__file__).resolve().parents[1]

BAD_PATTERNS = [
    ("x{{}}.tar", "needs a %d or {} placeholder for the shard number"),
    ("x%%.tar", "needs a %d or {} placeholder for the shard number"),
    ("x.tar", "needs a %d or {} placeholder for the shard number"),
    ("x-%d-%d.tar", "has 2 placeholders, not one"),
    ("x-{}-{:06d}.tar", "has 2 shard-number placeholders, not one"),
    ("x-%(n)d.tar", "has a % that is not a %d placeholder"),
    ("x-%s.tar", "has a % that is not a %d placeholder"),
    ("x-%d-%.tar", "has a % that is not a %d placeholder"),
    ("x-{n}.tar", "has a brace that is not a {} placeholder"),
    ("x-%0100d.tar", "pads the number to 100 digits"),
    ("x-%6d.tar", "pads the shard number with spaces (%6d), which puts spaces in the file names; pad with zeros: %06d"),
    (
        "x-{:3d}.tar",
        "pads the shard number with spaces ({:3d}), which puts spaces in the file names; pad with zeros: {:03d}",
    ),
    (
        "x-{0:2d}.tar",
        "pads the shard number with spaces ({0:2d}), which puts spaces in the file names; pad with zeros: {0:02d}",
    ),
]


@pytest.mark.parametrize(("pattern", "message"), BAD_PATTERNS)
def test_a_pattern_without_exactly_one_placeholder_is_refused(tmp_path, pattern, message):
    with pytest.raises(ShardPatternError) as info:
        ShardWriter(str(tmp_path / pattern))
    assert message in str(info.value) and isinstance(info.value, (ValueError, ShardpipeError))
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("x-%06d.tar", "x-000012.tar"),
        ("x-%d.tar", "x-12.tar"),
        ("x%%-%03d.tar", "x%-012.tar"),
        ("x-{}.tar", "x-12.tar"),
        ("x-{:06d}.tar", "x-000012.tar"),
        ("x-{0:04d}.tar", "x-0012.tar"),
        ("x-%1d.tar", "x-12.tar"),  # a width of one pads nothing
        ("x-{:1d}.tar", "x-12.tar"),
        ("{{set}}-{:03d}.tar", "{set}-012.tar"),
    ],
)
def test_supported_placeholders_name_each_shard(pattern, name):
    assert check_pattern(pattern) in ("%", "{}")
    assert shard_name(pattern, 12) == name


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(6):
        (root / f"cat_{i}.jpg").write_bytes(make_jpeg(i))
    return root


def test_write_shards_checks_the_pattern_before_reading_or_writing(images, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ShardPatternError, match=r"'.*x\{\{\}\}\.tar' needs a %d or \{\} placeholder"):
        write_shards(str(images), str(out / "x{{}}.tar"), maxcount=2, workers=1, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(("pattern", "message"), BAD_PATTERNS[:6])
def test_the_cli_exits_2_with_a_usage_error(images, tmp_path, pattern, message):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", "write", str(images), str(out / pattern), "--no-progress"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_catastrophic_label_pattern_is_bounded_and_named(images, monkeypatch):
    pytest.importorskip("regex")
    monkeypatch.setattr(folder_source, "LABEL_MATCH_SECONDS", 0.2)
    (images / ("a" * 40 + "!.jpg")).write_bytes(make_jpeg(9))
    source = folder_source.FolderSource(str(images), label_pattern=r"^(a|aa)+$")
    with pytest.raises(
        ValueError, match=r"label pattern '\^\(a\|aa\)\+\$' ran for over 0.2 s on file name 'a{40}!\.jpg'"
    ):
        source.scan()


def test_label_patterns_that_are_not_regular_expressions_are_usage_errors(images):
    with pytest.raises(ValueError, match=r"label pattern '\(cat' is not a valid regular expression"):
        folder_source.FolderSource(str(images), label_pattern="(cat")
    with pytest.raises(ValueError, match="needs a group"):
        folder_source.FolderSource(str(images), label_pattern="cat")
    labels = folder_source.FolderSource(str(images), label_pattern=r"^([a-z]+)_\d").scan()
    assert labels.class_names == ["cat"] and len(labels.records) == 6
