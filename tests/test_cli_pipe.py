"""A command whose stdout reader has gone (``shardpipe inspect ... | head``) stops quietly:
no traceback, exit status 141 (128 + SIGPIPE, as the shell reports for a tool SIGPIPE stopped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.cli import BROKEN_PIPE

from .helpers import make_samples, write_shards

REPO = Path(__file__).resolve().parents[1]


def run_into_closed_pipe(*args: str, cwd: Path) -> tuple[int, str]:
    """Run ``python -m shardpipe.cli ARGS`` with stdout a pipe whose read end is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout fails with EPIPE: deterministic, no race with a reader
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "shardpipe.cli", *args], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


@pytest.fixture
def shards(tmp_path: Path) -> str:
    write_shards(tmp_path, make_samples(12), [5, 7])
    return str(tmp_path / "shard-{0000..0001}.tar")


@pytest.mark.parametrize(
    "args", [("inspect",), ("inspect", "--json"), ("index", "-o", "out/manifest.json", "--no-progress")]
)
def test_a_closed_stdout_ends_the_command_quietly(shards: str, tmp_path: Path, args: tuple[str, ...]) -> None:
    status, stderr = run_into_closed_pipe(args[0], shards, *args[1:], cwd=tmp_path)
    assert status == BROKEN_PIPE == 141
    assert stderr == "", stderr  # no traceback, no "Exception ignored ... BrokenPipeError" at exit


def test_an_open_stdout_still_gets_everything(shards: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", "inspect", shards], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "shard-0000.tar" in proc.stdout and "shard-0001.tar" in proc.stdout


def test_a_broken_pipe_elsewhere_is_still_an_error(tmp_path: Path) -> None:
    """Only a closed stdout is quiet: a BrokenPipeError from a socket or a worker's pipe is shown."""
    code = (
        "import sys, shardpipe.cli.inspect as cmd\n"
        "def run(args):\n"
        "    raise BrokenPipeError(32, 'Broken pipe (a socket)')\n"
        "cmd.run = run\n"
        "from shardpipe.cli import main\n"
        "sys.exit(main(['inspect', 'x.tar']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "BrokenPipeError: [Errno 32] Broken pipe (a socket)" in proc.stderr
