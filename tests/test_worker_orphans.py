"""A killed training process leaves no worker, forkserver or resource tracker behind.

Beside another thread, ``ShardLoader`` starts its workers from shardpipe's forkserver, so a
worker's parent is the server, not the training process: torch's parent-death check never
fires, and the server waits for every holder of its "alive" pipe (the workers included).
Each program here (``worker_programs`` kind ``killed``) runs a 2-worker loader beside an idle
thread, reports its workers', server's and resource tracker's pids once a batch arrived, and
is then killed with SIGTERM or SIGKILL; every process it started must be gone within
``GONE_WITHIN_S``. Every process of the program carries a marker in its environment, so the
check also finds processes it did not report, and a failing test kills what is left. A plain
process started from the server (no torch worker loop, whose own parent check would end a
worker once the server is gone) checks the worker's watch of the trainer by itself.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shardpipe.devtools.worker_programs import parse_results, source

from .helpers import make_samples, write_manifest_dataset

ROOT = Path(__file__).resolve().parent.parent
#: the training process is up, its server started and a batch arrived within this
READY_WITHIN_S = 120
#: every process the program started is gone within this once it was killed
GONE_WITHIN_S = 10
MARKER = "SHARDPIPE_ORPHAN_TEST"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    """(manifest, keys file): 96 samples in 8 shards, so no worker runs out while the program is killed."""
    root = tmp_path_factory.mktemp("worker-orphans")
    samples = make_samples(96)
    manifest = write_manifest_dataset(root, samples, [12] * 8)
    keys = root / "keys.json"
    keys.write_text(json.dumps([s["__key__"] for s in samples]))
    return manifest, str(keys)


def marked(tag: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``MARKER=tag``."""
    needle = f"{MARKER}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie holds no memory and counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_ready(proc: subprocess.Popen, within_s: float, keys: tuple[str, ...] = ("ready",)) -> dict:
    """The program's ``RESULT`` records holding ``keys``, merged (failing if it ends first or is slow)."""
    deadline, out = time.monotonic() + within_s, b""
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
            merged = {k: v for r in parse_results(out.decode().rpartition("\n")[0]) for k, v in r.items()}
            if all(k in merged for k in keys):
                return merged
    pytest.fail(f"the program never got ready (exit {proc.poll()}): {out.decode()[-2000:]}")


def wait_gone(pids: set[int], tag: str, within_s: float) -> tuple[float, list[int]]:
    """(seconds until every process in ``pids`` and every marked one was gone, those left after ``within_s``)."""
    t0 = time.monotonic()
    while True:
        left = sorted({p for p in pids if alive(p)} | set(marked(tag)))
        if not left or time.monotonic() - t0 > within_s:
            return time.monotonic() - t0, left


def describe(pids: list[int]) -> str:
    lines = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            cmd, ppid = "?", "?"
        lines.append(f"pid {pid} (parent {ppid}): {cmd}")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,variant",
    [
        (signal.SIGTERM, ""),
        (signal.SIGKILL, ""),
        (signal.SIGKILL, "persistent"),
        (signal.SIGTERM, "no_pidfd"),
        (signal.SIGKILL, "stdlib_forkserver"),
        (signal.SIGTERM, "stdlib_forkserver"),
        (signal.SIGKILL, "indexed_stdlib_forkserver"),
    ],
    ids=[
        "sigterm",
        "sigkill",
        "sigkill-beside-idle-persistent-workers",
        "sigterm-without-pidfd",
        "sigkill-standard-library-forkserver",
        "sigterm-standard-library-forkserver",
        "sigkill-indexed-dataset-standard-library-forkserver",
    ],
)
def test_killing_the_training_process_leaves_no_worker_or_forkserver(tmp_path, data, sig, variant):
    tag = uuid.uuid4().hex
    program = tmp_path / "killed.py"
    stdlib = variant.endswith("stdlib_forkserver")
    manifest, keys = data
    if variant.startswith("indexed"):  # random access needs the shards' index
        from shardpipe import index_shards

        manifest = str(tmp_path / "indexed.json")
        index_shards(sorted(str(p) for p in Path(data[0]).parent.glob("shard-*.tar")), manifest, workers=1)
    program.write_text(source("killed", manifest, keys, guard=stdlib))  # that server imports __main__
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "WORKER_STALL_TIMEOUT": "100",
        "WORKER_PID_DIR": str(pids),
        MARKER: tag,
        **({f"KILLED_{variant.upper()}": "1"} if variant else {}),
        **({"WORKER_CONTEXT": "forkserver"} if stdlib else {}),
        **({"KILLED_INDEXED": "1"} if variant.startswith("indexed") else {}),
    }
    proc = subprocess.Popen(
        [sys.executable, str(program)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.txt").open("wb"),
        cwd=tmp_path,
        env=env,
        start_new_session=True,
    )
    try:
        ready = read_ready(proc, READY_WITHIN_S)
        want = "ForkServerContext" if stdlib else "CleanForkServerContext"
        assert ready["context"] == want
        assert len(ready["workers"]) == (4 if variant == "persistent" else 2)
        started = {*ready["workers"], ready["forkserver"], ready["tracker"]}
        assert all(alive(p) for p in started), describe(sorted(started))
        os.kill(proc.pid, sig)
        proc.wait(30)
        took, left = wait_gone(started, tag, GONE_WITHIN_S)
        assert not left, f"{len(left)} processes outlived the killed training process by {took:.1f} s:\n" + describe(
            left
        )
    finally:
        proc.kill()
        proc.wait(30)
        kill_all(marked(tag))
        proc.stdout.close()
        sys.stderr.write((tmp_path / "stderr.txt").read_text()[-3000:])  # shown when the test fails


PLAIN_PROGRAM = """
import json, sys, threading, time
from multiprocessing import forkserver
import shardpipe.workerstart
from shardpipe.workerstart import CLEAN_FORKSERVER, server_pid

if sys.argv[1] == "no_pidfd":
    shardpipe.workerstart._own_pidfd = lambda: None

def idle():
    # no DataLoader, so no torch watchdog: only shardpipe's watch can end this process
    print("RESULT " + json.dumps({"alive_fd": forkserver._forkserver._forkserver_alive_fd}), flush=True)
    time.sleep(3600)

threading.Thread(target=threading.Event().wait, daemon=True).start()
child = CLEAN_FORKSERVER.Process(target=idle)
child.start()
print("RESULT " + json.dumps({"ready": True, "child": child.pid, "forkserver": server_pid()}), flush=True)
time.sleep(3600)
"""


def kill_and_check_gone(tmp_path: Path, text: str, args: list[str], keys: tuple[str, ...], started) -> None:
    """Run ``text`` as a program with ``args`` (each of its processes marked), SIGKILL it once it printed
    ``keys``, and fail unless the processes ``started(ready)`` names and every marked one are gone within
    ``GONE_WITHIN_S``."""
    tag = uuid.uuid4().hex
    program = tmp_path / "program.py"
    program.write_text(text)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        MARKER: tag,
    }
    proc = subprocess.Popen(
        [sys.executable, str(program), *args], stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        pids = started(read_ready(proc, READY_WITHIN_S, keys=keys))
        assert all(alive(p) for p in pids), describe(sorted(pids))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        took, left = wait_gone(pids, tag, GONE_WITHIN_S)
        assert not left, f"{len(left)} processes outlived the killed process by {took:.1f} s:\n" + describe(left)
    finally:
        proc.kill()
        proc.wait(30)
        kill_all(marked(tag))
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["pidfd", "no_pidfd"])
def test_a_plain_process_from_the_forkserver_ends_with_its_trainer(tmp_path, variant):
    """The watch itself, without torch's worker loop (whose parent check would end a worker once the server is gone)."""

    def started(ready: dict) -> set[int]:
        assert ready["alive_fd"] is None  # the child closed its copy of the server's alive pipe
        return {ready["child"], ready["forkserver"]}

    kill_and_check_gone(tmp_path, PLAIN_PROGRAM, [variant], ("ready", "alive_fd"), started)


POOL_PROGRAM = """
import json, multiprocessing as mp, os, sys, time
import shardpipe.workerstart


def start(no_pidfd):
    if no_pidfd:  # the kernel gives no pidfd: the parent's start pipe is watched instead
        shardpipe.workerstart._pidfd = lambda pid: None
    shardpipe.workerstart.watch_parent()


def busy(seconds):
    time.sleep(seconds)  # mid-task: no queue read would notice the parent's death
    return os.getpid()


if __name__ == "__main__":
    method, no_pidfd = sys.argv[1], sys.argv[2] == "no_pidfd"
    pool = mp.get_context(method).Pool(1, start, (no_pidfd,))
    pool.apply_async(busy, (3600,))
    workers = [p.pid for p in pool._pool]
    time.sleep(0.5)
    print("RESULT " + json.dumps({"ready": True, "workers": workers}), flush=True)
    time.sleep(3600)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, variant", [("fork", "pidfd"), ("forkserver", "pidfd"), ("spawn", "pidfd"), ("forkserver", "no_pidfd")]
)
def test_a_pool_worker_watching_its_parent_ends_with_it_mid_task(tmp_path, method, variant):
    """``watch_parent`` (shardpipe write's prepare workers call it first): a worker busy in a task when its
    parent is killed exits at once, whoever started it, rather than when the task ends."""
    kill_and_check_gone(tmp_path, POOL_PROGRAM, [method, variant], ("ready",), lambda ready: set(ready["workers"]))


def test_the_watch_exits_the_process_when_its_pipe_closes():
    code = (
        "import os, time\n"
        "from shardpipe.workerstart import watch_trainer\n"
        "r, w = os.pipe()\n"
        "watch_trainer(r)\n"
        "os.close(w)\n"
        "time.sleep(30)\n"
        "raise SystemExit(7)\n"
    )
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], timeout=60, cwd=ROOT)
    assert done.returncode == 1  # ORPHAN_EXIT, long before the sleep ended
    assert time.monotonic() - t0 < 25


def test_the_watch_stops_without_exiting_when_its_fd_is_closed_under_it():
    """A worker_init_fn that closes fds must not end the worker: the watch just stops (in its own process)."""
    code = (
        "import os\n"
        "from shardpipe.workerstart import _exit_when_readable\n"
        "r, w = os.pipe()\n"
        "os.close(r)\n"
        "os.close(w)\n"
        "_exit_when_readable(r)\n"  # POLLNVAL: returns instead of os._exit
        "raise SystemExit(7)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=60, cwd=ROOT)
    assert done.returncode == 7
