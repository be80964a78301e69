"""A file that is not a tar archive (a manifest, an image, a text file caught by a glob) is named as
such, never called a truncated or damaged shard; a tar cut short is still truncated."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from shardpipe import NotTarError, ShardDataset, TruncatedShardError
from shardpipe.devtools.synth import make_jpeg

from .helpers import make_samples, strict_cli, write_shards

FIX = (
    "(to fix: leave it out of URLS (a narrower glob, 'out/train-*.tar', or a brace range names only the shards), "
    "or write it again if it was meant to be one)"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """One good shard, one cut after 300 bytes, and files of other kinds beside them."""
    (good,) = write_shards(tmp_path, make_samples(3), [3])
    data = Path(good).read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:300])  # inside its first header: truncated, not another kind
    (tmp_path / "notes.txt").write_bytes(b"hello\n")
    (tmp_path / "photo.jpg").write_bytes(make_jpeg(0))
    (tmp_path / "notes.tar.gz").write_bytes(gzip.compress(b"hello\n"))
    (tmp_path / "empty.tar").write_bytes(b"")
    return tmp_path


NOT_TAR = {  # file -> what its error says after "shard PATH is not a tar archive: "
    "empty.tar": "it is empty (0 bytes)",
    "notes.tar.gz": "its first 6 bytes (decompressed, starting b'hello\\n') are not a tar header (a file of another "
    "kind caught by a glob?)",
    "notes.txt": "its first 6 bytes (starting b'hello\\n') are not a tar header (a file of another kind caught by a "
    "glob?)",
    "photo.jpg": "its first 512 bytes (starting b'\\xff\\xd8\\xff\\xe0\\x00\\x10JFIF\\x00\\x01\\x01\\x00\\x00\\x01') "
    "are not a tar header (a file of another kind caught by a glob?)",
}


def test_verify_and_inspect_tell_another_kind_of_file_from_a_truncated_tar(folder: Path):
    """Each of these was "truncated or damaged shard: truncated tar: ... ends at byte 6 without the
    end-of-archive marker" (or "not a tar header (bad checksum) ... at byte 0")."""
    verify = strict_cli("verify", "*", cwd=folder)
    assert verify.returncode == 1, verify.stderr
    problems = verify.stdout.split(" shards (3 samples):\n", 1)[1].splitlines()
    assert problems[0].startswith(
        "  cut.tar: truncated or damaged shard: truncated tar: shard cut.tar ends at byte 300"
    )
    assert problems[1:] == [f"  shard {name} is not a tar archive: {said} {FIX}" for name, said in NOT_TAR.items()]
    inspect = strict_cli("inspect", "*", cwd=folder)
    assert inspect.returncode == 1, inspect.stderr
    errors = [line for line in inspect.stdout.splitlines() if line.startswith("  ERROR: ")]
    assert errors[0].startswith("  ERROR: truncated tar: shard cut.tar ends at byte 300")
    assert errors[1:] == [f"  ERROR: shard {name} is not a tar archive: {said}" for name, said in NOT_TAR.items()]


@pytest.mark.parametrize("name", sorted(NOT_TAR))
def test_index_says_not_a_tar_archive(folder: Path, name: str):
    out = strict_cli("index", f"shard-0000.tar::{name}", "-o", "m.json", "--no-progress", cwd=folder)
    assert out.returncode == 1
    assert out.stderr == f"shardpipe index: error: shard {name} is not a tar archive: {NOT_TAR[name]} {FIX}\n"


def test_streaming_raises_not_a_tar_archive_and_truncated_for_a_cut_tar(folder: Path):
    for name, said in NOT_TAR.items():
        with pytest.raises(NotTarError) as info:
            list(ShardDataset(str(folder / name), decode=None))
        assert str(info.value) == f"shard {folder / name} is not a tar archive: {said}"
    with pytest.raises(TruncatedShardError, match="ends at byte 300 without the end-of-archive marker"):
        list(ShardDataset(str(folder / "cut.tar"), decode=None))
