"""Workers keep freed image buffers mapped: no page faults for the next image's buffers (glibc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")

CHURN = """
import resource, sys
from shardpipe.workermemory import tune_worker_allocator

def churn(rounds=200):
    # a few image-sized buffers (each below glibc's initial mmap threshold) live at once, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        held = [bytearray(100_000) for _ in range(4)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = churn()
tuned = tune_worker_allocator()
churn(2)  # the heap grows once
print(default, tuned, churn())
"""

LOADER = """
import os, pathlib, tempfile
import numpy as np
from shardpipe import ShardDataset, ShardLoader, workermemory
from tests.helpers import make_samples, write_shards

def tuned_here(img, rng=None):
    # 2: this process set its thresholds; 1: it tried and kept the defaults; 0: it never tried
    t = workermemory._tuned
    return np.full((2, 2, 3), 0 if t is None or t[0] != os.getpid() else 1 + t[1], np.uint8)

urls = write_shards(pathlib.Path(tempfile.mkdtemp()), make_samples(6), [3, 3])
ds = ShardDataset(urls, transform=tuned_here, batch_size=3)
workers = {int(v) for b in ShardLoader(ds, num_workers=2) for v in b["jpg"].flatten()}
main = {int(v) for b in ds for v in b["jpg"].flatten()}  # the user's own process: left as it is
print(sorted(workers), sorted(main))
"""


def run(code: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split(maxsplit=2) if "[" not in out.stdout else out.stdout.strip().split("] ")


def test_the_thresholds_stop_the_heap_trimming_churn() -> None:
    """glibc's defaults give the heap top back after each round and fault it in again the next."""
    default, tuned, faults = run(CHURN)
    assert tuned == "True"
    assert int(default) > 200 * 30  # ~41 page faults a round
    assert int(faults) < 20


def test_the_environment_leaves_the_allocator_alone() -> None:
    default, tuned, faults = run(CHURN, env={"SHARDPIPE_WORKER_MALLOC": "default"})
    assert tuned == "False"
    assert int(faults) > 200 * 30


@pytest.mark.parametrize("setting", ["", "default"])
def test_loader_workers_set_the_thresholds_and_the_main_process_does_not(setting: str) -> None:
    """A real program without a main guard: every worker tried (and, unless told not to, set them)."""
    workers, main = run(LOADER, env={"SHARDPIPE_WORKER_MALLOC": setting})
    assert workers == ("[1" if setting == "default" else "[2")
    assert main == "[0]"
