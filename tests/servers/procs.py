"""Helpers shared by the server wrappers: free ports, readiness polling, child processes."""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    """The ports Linux hands out for ``bind(0)`` and outgoing connections (32768-60999 by default)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that are free right now, drawn from below the ephemeral
    range: a port from ``bind(0)`` is released before the server binds it, and in that window any
    outgoing connection (a client of another fixture, pip, boto) or other ``bind(0)`` could be given
    it; ports below the range are never handed out by the kernel, only chosen, as these are."""
    low = max(1024, min(_ephemeral_range()[0], 32768) - 12000)
    high = min(_ephemeral_range()[0], 32768) - 1
    chosen: list[int] = []
    draw = random.Random()  # the process's own random state is seeded by some tests
    for _ in range(2000):
        port = draw.randint(low, high)
        if port in chosen:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken (or in TIME_WAIT without SO_REUSEADDR): draw again
        chosen.append(port)
        if len(chosen) == n:
            return chosen
    raise RuntimeError(f"found only {len(chosen)} of {n} free ports in {low}-{high}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (see ``free_ports``)."""
    return free_ports(1)[0]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass


def find_binary(name: str, *candidates: str) -> str | None:
    """The path of an executable: the candidates first, then PATH (pyenv shims resolved)."""
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found and "/shims/" in found:  # a pyenv shim: prefer the real binary beside python
        import sys

        real = Path(sys.executable).parent / name
        if real.is_file():
            return str(real)
    return found


class ChildProcess:
    """A server child process with its output in a log file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,  # Ctrl-C in pytest must not reach the server first
            # the death signal follows the thread that forks: only the main thread lives long enough
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
        log.close()
        atexit.register(self.stop)  # never leave a server running after the tests

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        atexit.unregister(self.stop)
        _signal_group(self.proc.pid, signal.SIGTERM)  # its own group (start_new_session): nginx's workers too
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        _signal_group(self.proc.pid, signal.SIGKILL)  # children that outlived the leader

    def wait_ready(self, check, timeout: float, what: str) -> None:
        """Poll ``check()`` until true; fail with the log tail if the child dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
