"""The `shardpipe` command: demo and bench run end to end on tiny generated data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shardpipe.cli import main

from .helpers import run_in_group


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
