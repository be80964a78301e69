"""Start real ``shardpipe serve`` processes on 127.0.0.1 for the decode-fleet tests."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import yaml

from .helpers import kill_group, make_samples, spawn, write_manifest_dataset

ROOT = Path(__file__).resolve().parents[1]
COUNTS = [9, 2, 14, 5, 1, 11, 7, 13, 6, 12]  # 80 samples in 10 uneven shards


def write_config(root: Path, samples: int | None = None, **dataset: object) -> Path:
    """A small dataset plus a serve config: 32x32 crops (flipped at random), batches of 4."""
    counts = COUNTS if samples is None else [samples]
    manifest = write_manifest_dataset(root, make_samples(sum(counts)), counts)
    config = {
        "dataset": {"urls": manifest, "batch_size": 4, "shuffle": 8, "seed": 1, "require": ["jpg", "cls"], **dataset},
        "transform": [{"CenterCrop": {"size": 32}}, {"RandomHorizontalFlip": {}}],
        "loader": {"num_workers": 2},
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class ServerProcess:
    """One ``shardpipe serve`` process; ``endpoint`` is where it listens."""

    def __init__(self, config: Path, workers: int = 2, bind: str = "tcp://127.0.0.1:*", *extra: str):
        cmd = [sys.executable, "-m", "shardpipe.cli", "serve", str(config), "--workers", str(workers)]
        cmd += (["--bind", bind] if bind else []) + ["--heartbeat", "0.2", *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.cmd = cmd
        self.proc = spawn(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)  # its workers join its group
        self.endpoint, self.pid = "", 0

    def wait_ready(self) -> ServerProcess:
        """Read the server's start-up line (its endpoint)."""
        cmd = self.cmd
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"shardpipe serve did not start: {cmd} (exit code {self.proc.poll()})")
        info = json.loads(line)
        self.endpoint, self.pid, self.worker_pids = info["listening"], info["pid"], info["worker_pids"]
        return self

    def stop(self) -> None:
        kill_group(self.proc)  # the server and its decode workers
        if self.proc.stdout:
            self.proc.stdout.close()


def start_servers(config: Path, n: int, workers: int = 2, *extra: str) -> list[ServerProcess]:
    """Start ``n`` servers at once (their start-up overlaps)."""
    servers = [ServerProcess(config, workers, "tcp://127.0.0.1:*", *extra) for _ in range(n)]
    return [s.wait_ready() for s in servers]
