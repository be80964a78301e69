"""``shardpipe bench`` options as a new user types them, in its own process: values it cannot run
with, an ``--only`` name that matches no row, a ``--report`` whose folder cannot be made. Each is
refused (exit 2, one line naming the option) before any data is generated or any row is run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "shardpipe.cli", "bench", "--data", "bd", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        # --n 0 ran the default 3000 images; a negative --n or --rounds 0 failed with a traceback
        (["--n", "0"], "argument --n: must be an integer >= 1, not 0"),
        (["--rounds", "0"], "argument --rounds: must be an integer >= 1, not 0"),
        (["--workers", "0"], "argument --workers: must be an integer >= 1, not 0"),
        # a ZeroDivisionError after the data was generated; a typo beside a good name was dropped quietly
        (["--only", "shardpipe", "nosuchrow"], "--only 'nosuchrow' names no row; the rows: shardpipe; "),
        (["--peers", "--only", "LitData", "nosuch"], "--only 'nosuch' names no row; the rows: shardpipe; "),
        # the table was saved, and this failed, only after every round had run
        (["--peers", "--report", "afile/peers.txt"], "--report afile/peers.txt: its folder cannot be made: "),
    ],
)
def test_what_cannot_run_is_refused_before_any_data_is_generated(tmp_path: Path, args: list[str], message: str):
    (tmp_path / "afile").write_text("a file, not a folder")
    done = bench(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"shardpipe bench: error: {message}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "bd").exists()


def test_only_matches_row_names_in_any_case_as_with_peers(tmp_path: Path):
    """``--only`` was case-sensitive here and case-insensitive with ``--peers``: a name typed as the
    table prints it in another case matched nothing (and the run failed with ZeroDivisionError)."""
    done = bench("--n", "16", "--rounds", "1", "--only", "UNTAR+GROUP Shardpipe", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "round 1/1  untar+group shardpipe " in done.stdout
    table = done.stdout[done.stdout.index("\nloader ") :]
    assert "\nuntar+group shardpipe " in table and "\nuntar+group webdataset" not in table


#: a ``sitecustomize`` that makes ``lmdb`` and ``webdataset`` unimportable in every process it reaches
BLOCK_IMPORTS = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lmdb", "webdataset"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocked())
"""


def test_rows_whose_package_is_missing_are_skipped_with_their_install_line(tmp_path: Path):
    """Plain ``shardpipe bench`` imported ``lmdb`` to write its data and so failed without it (and the
    webdataset rows without ``webdataset``), while ``--peers`` skips a row whose package is missing and
    prints its install line: now both do, and the other rows run."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_IMPORTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    cmd = [sys.executable, "-m", "shardpipe.cli", "bench", "--data", "bd", "--n", "8", "--rounds", "1",
           "--only", "lmdb", "webdataset", "untar+group shardpipe"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LMDB + PIL (map): not installed: pip install lmdb (skipped)" in done.stdout
    table = done.stdout[done.stdout.index("\nloader ") :]
    assert "\nuntar+group shardpipe " in table
    for name, package in (("LMDB + PIL (map)", "lmdb"), ("webdataset + PIL", "webdataset"),
                          ("untar+group webdataset", "webdataset")):  # fmt: skip
        assert f"\n{name}: not installed: pip install {package}\n" in table + "\n", name
        assert f"\n{name} " not in table  # not measured
