"""``write_shards`` with worker processes in programs as users write them: no main guard,
other threads busy (a progress bar, a model warming up). Real programs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe import write_shards

from .helpers import small_jpeg

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import logging, sys, threading, time
import numpy as np
import shardpipe

stop = threading.Event()


def busy():
    while not stop.is_set():
        np.random.randint(0, 255, (64, 64)).sum()


logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
for _ in range(2):
    threading.Thread(target=busy, daemon=True).start()
summary = shardpipe.write_shards({src!r}, {out!r}, maxcount=5, presize=32, workers=2, shuffle=False)
stop.set()
print("WROTE", summary.written, summary.presized)
"""


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.mark.slow
def test_presize_workers_beside_busy_threads_in_an_unguarded_script(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"im{i:02d}.jpg").write_bytes(small_jpeg(i, (96, 72)))
    expected = tmp_path / "expected"
    write_shards(str(src), str(expected / "e-%03d.tar"), maxcount=5, presize=32, workers=1, shuffle=False)

    out = tmp_path / "out"
    script = tmp_path / "write_unguarded.py"
    script.write_text(PROGRAM.format(src=str(src), out=str(out / "e-%03d.tar")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                             env=env)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the write hung beside busy threads: {e.stdout!r} {e.stderr!r}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("WROTE") == 1 and "WROTE 12 12" in run.stdout  # workers never re-ran the script
    assert shard_bytes(out) == shard_bytes(expected) and len(shard_bytes(out)) == 3
    # beside other threads the workers come from shardpipe's forkserver, not a fork of this busy process
    assert "write workers start by CleanForkServerContext" in run.stdout, run.stdout[-2000:]
