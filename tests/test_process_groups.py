"""The tests' process helpers end a child's whole group: grandchildren too, on failure and on timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .helpers import alive, process_groups, run_in_group

# a child that starts a grandchild (like a rank starting DataLoader workers), prints its pid, then waits
PARENT = (
    "import subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(g.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def gone_soon(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")


def test_a_failing_test_still_kills_the_grandchildren():
    with pytest.raises(AssertionError, match="the test failed"):
        with process_groups([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True) as (proc,):
            grandchild = int(proc.stdout.readline())
            assert alive(grandchild)
            raise AssertionError("the test failed")
    assert gone_soon(grandchild) and proc.poll() is not None


def test_run_in_group_kills_the_grandchildren_on_timeout(tmp_path):
    out = tmp_path / "pid"
    script = PARENT.replace("print(g.pid, flush=True)", f"open({str(out)!r}, 'w').write(str(g.pid))")
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_group([sys.executable, "-c", script], timeout=10)  # long enough to start both under load
    assert gone_soon(int(out.read_text()))


def test_run_in_group_returns_like_subprocess_run():
    done = run_in_group(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"], 60
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        run_in_group([sys.executable, "-c", "raise SystemExit(2)"], 60, check=True)
