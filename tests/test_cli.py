"""The `shardpipe` command: demo and bench run end to end on tiny generated data."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from shardpipe.cli import main

from .helpers import run_in_group, strict_cli


def test_demo_runs_the_main_job(tmp_path: Path, capsys):
    args = [
        "demo",
        "--dir",
        str(tmp_path),
        "-n",
        "48",
        "--epochs",
        "2",
        "--workers",
        "2",
        "--batch-size",
        "8",
        "--size",
        "64",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "generated and wrote 48 JPEGs" in out
    assert "epoch 0: 48 images" in out and "epoch 1: 48 images" in out
    for stage in ("read", "untar", "decode", "augment", "batch"):
        assert f"\n{stage} " in out
    assert "skipped: nothing" in out and "images/s (best epoch of 2, 2 workers)" in out
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["samples"] == 48
    # a second run reuses the shards instead of generating them again
    assert main(args[:-2] + ["--size", "32", "--epochs", "1"]) == 0
    assert "reusing 48 samples" in capsys.readouterr().out


def test_bench_prints_the_side_by_side_table(bench_data_dir: Path):
    cmd = [sys.executable, "-m", "shardpipe.cli", "bench", "--data", str(bench_data_dir), "--n", "64", "--rounds", "1",
           "--batch", "16", "--only", "shardpipe", "webdataset"]  # fmt: skip
    result = run_in_group(cmd, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "webdataset + PIL" in out and "x webdataset" in out
    assert "per-stage seconds per 1000 samples" in out


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_version_and_python_dash_m_shardpipe(tmp_path: Path):
    """``shardpipe --version`` prints the package's version (the one pyproject.toml builds), and
    ``python -m shardpipe`` runs the same command where the ``shardpipe`` script is not on PATH."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', pyproject, re.M).group(1)
    for module in ("shardpipe", "shardpipe.cli"):
        result = strict_cli("--version", module=module)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"shardpipe {version}\n", ""), module
    # a real subcommand through python -m shardpipe, and its usage errors as the script's
    listed = strict_cli("inspect", str(tmp_path / "missing" / "manifest.json"), module="shardpipe")
    assert listed.returncode == 2 and "manifest not found" in listed.stderr, listed.stderr
    assert "usage: shardpipe " in strict_cli("--help", module="shardpipe").stdout
