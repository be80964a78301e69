"""``shardpipe demo`` as a new user runs it, in its own process: bad option values, a folder it
cannot write, a full disk (a file size limit), Ctrl-C while it generates and while it streams, and a
rerun over a damaged manifest. Each ends with a clear message and exit status, no traceback, and no
shards left without a manifest."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.cli.demo import INTERRUPTED

from .helpers import kill_group, spawn

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def demo(*args: str, cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    """``python -m shardpipe.cli demo ARGS`` in ``cwd``, its files limited to ``limit`` bytes."""

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", "demo", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=300, preexec_fn=set_limit if limit is not None else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "0"], "argument -n/--images: must be an integer >= 1, not 0"),
        (["--epochs", "0"], "argument --epochs: must be an integer >= 1, not 0"),
        (["--workers", "-1"], "argument --workers: must be an integer >= 0, not -1"),
        (["--batch-size", "x"], "argument --batch-size: not an integer: 'x'"),
        # the choices left out auto, the default and the name users type most
        (["--decoder", "nosuch"], "--decoder: unknown decoder 'nosuch': choose one of ['auto', 'cv2', "),
    ],
)
def test_bad_values_are_usage_errors_before_anything_is_generated(tmp_path: Path, args: list[str], message: str):
    """-n 0 divided by zero, --epochs 0 printed an unbound variable's traceback, the others failed in
    the library's checks with a traceback after the images were generated."""
    done = demo("--dir", "d", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"shardpipe demo: error: {message}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()


def test_a_full_disk_is_named_and_no_shard_is_left_without_a_manifest(tmp_path: Path):
    done = demo("--dir", "d", "-n", "64", cwd=tmp_path, limit=1_200_000)  # a shard or two fit, not eight
    assert done.returncode == 2, done.stderr
    assert "shardpipe demo: error: cannot write the demo data under d: [Errno 27] File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "d" / "shards").iterdir()) == []


def test_a_folder_that_is_a_file_is_named(tmp_path: Path):
    (tmp_path / "d").write_text("not a folder")
    done = demo("--dir", "d", "-n", "16", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "shardpipe demo: error: cannot write the demo data under d: [Errno 20] Not a directory" in done.stderr


def interrupt(tmp_path: Path, ready: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Start the demo, press Ctrl-C (SIGINT to its process group, as a terminal does) once
    ``ready``: "generating" (a shard is being written) or "streaming" (the first epoch's bar has moved)."""
    shards = tmp_path / "d" / "shards"
    cmd = [sys.executable, "-m", "shardpipe.cli", "demo", "--dir", "d", "-n", "400", "--size", "32", "--batch-size", "8"]  # fmt: skip
    proc = spawn(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""
    try:
        if ready == "generating":
            while proc.poll() is None and not (shards.is_dir() and any(shards.iterdir())):
                pass
        else:  # mid-epoch: its workers are running
            assert proc.stderr is not None
            while proc.poll() is None and not re.search(rb"epoch 0: .*\| *[1-9]\d*/400", err):
                err += os.read(proc.stderr.fileno(), 4096)
        os.killpg(proc.pid, signal.SIGINT)
        out, rest = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), (err + rest).decode()), shards


@pytest.mark.parametrize("ready", ["generating", "streaming"])
def test_ctrl_c_exits_130_with_one_line_and_no_traceback(tmp_path: Path, ready: str):
    """It printed the main process's traceback and, while generating, each image worker's; the
    shards written so far stayed behind without a manifest."""
    done, shards = interrupt(tmp_path, ready)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.rstrip().endswith(INTERRUPTED)
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    left = sorted(p.name for p in shards.iterdir())
    if ready == "generating":
        assert left == []
    else:  # complete: kept, and reused by the next run
        assert left == [f"demo-{i:06d}.tar" for i in range(8)] + ["manifest.index", "manifest.json"]


def test_a_rerun_over_a_damaged_manifest_writes_the_shards_again(tmp_path: Path):
    args = ["--dir", "d", "-n", "16", "--epochs", "1", "--size", "32"]
    assert demo(*args, cwd=tmp_path).returncode == 0
    manifest = tmp_path / "d" / "shards" / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])  # cut short
    done = demo(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "generated and wrote 16 JPEGs" in done.stdout and "epoch 0: 16 images" in done.stdout
