"""What ``shardpipe inspect`` and ``verify`` print for hostile member names, run as real programs.

Each test runs ``python -m shardpipe.cli`` in its own process, printing UTF-8 strictly (as
under an en_US.UTF-8 locale): member names with control characters or bytes that are not UTF-8.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``shardpipe ARGS`` in its own process, printing UTF-8 strictly (as under an en_US.UTF-8 locale)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        timeout=300,
        env=env,
    )


def tar_of(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> Path:
    """A tar of ``members`` in this order, as a tool other than shardpipe writes it."""
    with tarfile.open(path, "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------- inspect and verify output

HOSTILE = ["a\x1b[2Jb", "c\rd", "e\x9b31mf", "caf\udce9"]


def hostile_shard(tmp_path: Path) -> Path:
    """Member names that clear a terminal, return its cursor, start a C1 escape, or are not UTF-8."""
    return tar_of(tmp_path / "h.tar", [(f"{k}.{ext}", b"x") for k in HOSTILE for ext in ("jpg", "txt")])


def test_inspect_escapes_control_characters_and_bytes_that_are_not_utf8(tmp_path: Path):
    """The table printed member names as they were: escape sequences reached the terminal, and a
    name that is not UTF-8 stopped inspect with a UnicodeEncodeError traceback."""
    shard = hostile_shard(tmp_path)
    out = cli("inspect", str(shard), "--keys", "4")
    assert out.stderr == ""
    assert out.returncode == 0
    assert r"first keys: a\x1b[2Jb, c\x0dd, e\x9b31mf, caf\xe9" in out.stdout.splitlines()
    assert not any(c in out.stdout for c in "\x1b\r\x9b\udce9")
    as_json = cli("inspect", str(shard), "--json", "--keys", "4")
    assert json.loads(as_json.stdout)["total"]["first_keys"] == HOSTILE


def test_verify_escapes_control_characters_and_bytes_that_are_not_utf8(tmp_path: Path):
    shard = hostile_shard(tmp_path)
    out = cli("verify", str(shard))
    assert out.stderr == ""
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[:2] == [f"FAIL {shard}: 4 samples, 10240 bytes", "4 problems in 1 shards (4 samples):"]
    assert lines[2:] == [
        f"  {shard}: corrupt member {k}.jpg: DecodeError: not a recognised image format (1 bytes starting b'x')"
        for k in (r"a\x1b[2Jb", r"c\x0dd", r"e\x9b31mf", r"caf\xe9")
    ]
