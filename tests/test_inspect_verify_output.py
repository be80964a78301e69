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


# ---------------------------------------------------------------- errors and warnings


def test_errors_and_warnings_escape_the_file_names_they_print(tmp_path: Path):
    """``fail()`` and the log printed shard URLs as they were: a file name holding an escape sequence
    (or a C1 control) reached the terminal from every error and warning of index, verify and inspect."""
    import os
    import tarfile

    name = "a\x1b[2Jb\x9b31m"
    (tmp_path / f"{name}.tar").write_bytes(b"not a tar archive at all\n")
    shown = "a\\x1b[2Jb\\x9b31m"
    for command, *args in (
        ("index", f"{name}.tar", "-o", "m.json", "--no-progress"),
        ("verify", f"{name}-gone.tar"),
        ("inspect", f"{name}-gone.tar"),
    ):
        out = strict_cli(command, *args, cwd=tmp_path)
        assert out.returncode in (1, 2) and out.stderr.startswith(f"shardpipe {command}: error: "), out.stderr
        assert shown in out.stderr and "\x1b" not in out.stderr and "\x9b" not in out.stderr, out.stderr
    os.unlink(tmp_path / f"{name}.tar")
    with tarfile.open(tmp_path / f"{name}.tar", "w") as tf:  # a symlink: index warns, naming the shard
        info = tarfile.TarInfo("k.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.jpg"
        tf.addfile(info)
    out = strict_cli("index", f"{name}.tar", "-o", "m.json", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"WARNING shard {shown}.tar: skipped 1 symbolic link" in out.stderr and "\x1b" not in out.stderr
