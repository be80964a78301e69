"""What ``shardpipe inspect`` and ``verify`` print for hostile member names, run as real programs.

Each test runs ``python -m shardpipe.cli`` in its own process, printing UTF-8 strictly (as
under an en_US.UTF-8 locale): member names with control characters or bytes that are not UTF-8.
"""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import strict_cli, tar_of

# ---------------------------------------------------------------- inspect and verify output

HOSTILE = ["a\x1b[2Jb", "c\rd", "e\x9b31mf", "caf\udce9"]


def hostile_shard(tmp_path: Path) -> Path:
    """Member names that clear a terminal, return its cursor, start a C1 escape, or are not UTF-8."""
    return tar_of(tmp_path / "h.tar", [(f"{k}.{ext}", b"x") for k in HOSTILE for ext in ("jpg", "txt")])


def test_inspect_escapes_control_characters_and_bytes_that_are_not_utf8(tmp_path: Path):
    """The table printed member names as they were: escape sequences reached the terminal, and a
    name that is not UTF-8 stopped inspect with a UnicodeEncodeError traceback."""
    shard = hostile_shard(tmp_path)
    out = strict_cli("inspect", str(shard), "--keys", "4")
    assert out.stderr == ""
    assert out.returncode == 0
    assert r"first keys: a\x1b[2Jb, c\x0dd, e\x9b31mf, caf\xe9" in out.stdout.splitlines()
    assert not any(c in out.stdout for c in "\x1b\r\x9b\udce9")
    as_json = strict_cli("inspect", str(shard), "--json", "--keys", "4")
    assert json.loads(as_json.stdout)["total"]["first_keys"] == HOSTILE


def test_verify_escapes_control_characters_and_bytes_that_are_not_utf8(tmp_path: Path):
    shard = hostile_shard(tmp_path)
    out = strict_cli("verify", str(shard))
    assert out.stderr == ""
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[:2] == [f"FAIL {shard}: 4 samples, 10240 bytes", "4 problems in 1 shards (4 samples):"]
    assert lines[2:] == [
        f"  {shard}: corrupt member {k}.jpg: DecodeError: not a recognised image format (1 bytes starting b'x')"
        for k in (r"a\x1b[2Jb", r"c\x0dd", r"e\x9b31mf", r"caf\xe9")
    ]
