"""DALI pipelines and fork: a forked process (a DataLoader worker) never tears down a pipeline its
parent built, and ``close`` releases a pipeline at once. Real programs, DALI's CPU operators."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install shardpipe[gpu])")

from shardpipe.batchdecode.dali import DaliBatchDecoder  # noqa: E402
from shardpipe.devtools.synth import make_jpeg  # noqa: E402

from .helpers import run_in_group  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = Path(__file__).with_name("dali_fork_prog.py")


@pytest.mark.parametrize(
    ("how", "want"),
    [
        ("drop", ["child 0"]),  # before: the child hung in DALI's teardown (or died of SIGSEGV)
        ("close", ["child 0"]),
        ("keep", ["child 0", "parent [0]"]),
        ("loader", ["batches [[0], [1], [2], [3]]"]),  # before: the worker hung or crashed
    ],
)
def test_a_forked_child_never_tears_down_its_parents_pipeline(how, want):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_in_group([sys.executable, str(PROGRAM), how], timeout=240, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[: len(want)] == want, result.stdout + result.stderr[-3000:]


def _dali_threads() -> int:
    names = (Path(f"/proc/self/task/{t}/comm").read_text() for t in os.listdir("/proc/self/task"))
    return sum(1 for name in names if name.startswith("[DALI]"))


def test_close_releases_the_pipelines_threads_at_once():
    """Before, ``close`` only dropped the decoder's reference: while anything else held the pipeline
    (a traceback's frame, a cycle) it lived on, threads and memory, until a garbage collection,
    which may come in a forked child."""
    gc.collect()  # decoders earlier tests dropped are cyclic garbage whose pipelines still run threads
    gc.disable()  # and no collection may end them while this test counts
    try:
        before = _dali_threads()
        decoder = DaliBatchDecoder(32, device="cpu", batch_size=2, num_threads=2, seed=1)
        decoder.decode([make_jpeg(i, plain=True) for i in range(2)])
        assert _dali_threads() > before
        held = decoder._pipe  # as a traceback of a failed batch would hold it
        decoder.close()
        assert _dali_threads() == before
        del held
        _, kept = decoder.decode([make_jpeg(3, plain=True)])  # a closed decoder builds a new pipeline
        assert kept == [0]
        decoder.close()
        assert _dali_threads() == before
    finally:
        gc.enable()
