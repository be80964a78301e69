"""Start real ``shardpipe serve`` processes on 127.0.0.1 for the decode-fleet tests."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .helpers import kill_group, make_samples, spawn, write_manifest_dataset

ROOT = Path(__file__).resolve().parents[1]
COUNTS = [9, 2, 14, 5, 1, 11, 7, 13, 6, 12]  # 80 samples in 10 uneven shards


def write_config(root: Path, samples: int | None = None, crop: int = 32, **dataset: object) -> Path:
    """A small dataset plus a serve config: ``crop`` x ``crop`` crops (flipped at random), batches of 4."""
    counts = COUNTS if samples is None else [samples]
    manifest = write_manifest_dataset(root, make_samples(sum(counts)), counts)
    config = {
        "dataset": {"urls": manifest, "batch_size": 4, "shuffle": 8, "seed": 1, "require": ["jpg", "cls"], **dataset},
        "transform": [{"CenterCrop": {"size": crop}}, {"RandomHorizontalFlip": {}}],
        "loader": {"num_workers": 2},
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class ServerProcess:
    """One ``shardpipe serve`` process; ``endpoint`` is where it listens."""

    def __init__(
        self,
        config: Path,
        workers: int = 2,
        bind: str = "tcp://127.0.0.1:*",
        *extra: str,
        env: dict | None = None,
        stderr: Any = None,
    ):
        cmd = [sys.executable, "-m", "shardpipe.cli", "serve", str(config), "--workers", str(workers)]
        cmd += (["--bind", bind] if bind else []) + ["--heartbeat", "0.2", *extra]
        env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
        self.cmd = cmd
        # its workers join its group; stderr: where its log goes (None: this process's stderr)
        self.proc = spawn(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
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


class Peer:
    """A raw client (or a hostile one): requests on its own DEALER socket, answers read by hand."""

    def __init__(self, endpoint: str, **options: int):
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger, self.sock.rcvtimeo = 0, 20000
        for name, value in options.items():  # e.g. rcvhwm, rcvbuf: set before connecting
            setattr(self.sock, name, value)
        self.sock.connect(endpoint)
        self.endpoint = endpoint

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames)

    def next(self, timeout: float = 20) -> dict | None:
        """The header of the next message that is not a heartbeat; None after ``timeout`` seconds."""
        from shardpipe.serve.wire import unpack

        deadline = time.monotonic() + timeout
        while self.sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            header, _ = unpack(self.sock.recv_multipart())
            if header["type"] != "heartbeat":
                return header
        return None

    def ask(self, frames: list) -> dict:
        """Send ``frames``; the first reply that is not a heartbeat."""
        self.send(frames)
        reply = self.next()  # heartbeats keep coming while it holds parts of ours
        if reply is None:
            raise AssertionError(f"no answer but heartbeats within 20s to {frames[0][:80]!r}")
        return reply

    def close(self) -> None:
        self.sock.close(0)


def _stats(pids: list[int]) -> tuple[int, bool]:
    """User plus system CPU time of ``pids`` in clock ticks, and whether any of them is runnable."""
    ticks, runnable = 0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone
            continue
        ticks += int(fields[11]) + int(fields[12])
        runnable |= fields[0] == "R"
    return ticks, runnable


def wait_idle(pids: list[int], timeout: float = 120) -> None:
    """Wait for a second in which ``pids`` were never runnable and used under 5% of a core: done with
    their work (a process that waits for a CPU on a busy machine is runnable, so it is not idle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before, busy = _stats(pids)
        for _ in range(10):
            time.sleep(0.1)
            ticks, runnable = _stats(pids)
            busy |= runnable
        if not busy and ticks - before <= os.sysconf("SC_CLK_TCK") // 20:
            return
    raise AssertionError(f"processes {pids} still busy after {timeout:g}s")
