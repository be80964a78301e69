"""Every code block of README.md runs as pasted: each in a fresh process, in order, in one temporary folder.

Bash blocks run too, except those that install things or start jobs elsewhere (``make``, ``pip``,
launchers of several processes, which tests/test_examples.py runs through the examples).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: commands a bash block may not contain to be run here (installs, or multi-process launchers)
NOT_RUN = ("make ", "pip ", "apt", "torchrun ", "accelerate launch", "shardpipe serve", "curl ")
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS")


def blocks() -> list[tuple[str, str]]:
    return [
        (lang, body) for lang, body in FENCE.findall((ROOT / "README.md").read_text()) if lang in ("python", "bash")
    ]


def runnable(lang: str, body: str) -> bool:
    return lang == "python" or not any(word in body for word in NOT_RUN)


def test_the_readme_has_blocks_of_each_kind():
    kinds = [lang for lang, body in blocks() if runnable(lang, body)]
    assert kinds.count("python") >= 4 and kinds.count("bash") >= 1


@pytest.mark.slow
def test_every_readme_block_runs_as_pasted(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["PYTHONPATH"] = str(ROOT)
    bin_dir = tmp_path / "bin"  # `shardpipe` on PATH is this checkout's
    bin_dir.mkdir()
    (bin_dir / "shardpipe").write_text(f'#!/bin/sh\nexec {sys.executable} -m shardpipe.cli "$@"\n')
    (bin_dir / "shardpipe").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    ran = 0
    for number, (lang, body) in enumerate(blocks()):
        if not runnable(lang, body):
            continue
        command = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (
            f"README block {number} ({lang}) failed:\n{body}\n--- output:\n{done.stdout}\n{done.stderr}"
        )
        ran += 1
    assert ran == len([b for b in blocks() if runnable(*b)])
