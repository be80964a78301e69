"""Audit of the decode fleet as a user and as a hostile peer: real ``shardpipe serve`` processes on
127.0.0.1, refused messages answered by type and message, clean exits and shutdowns."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from shardpipe import RemoteError, RemoteLoader  # noqa: E402
from shardpipe.serve.coordination import MAX_PARTS  # noqa: E402
from shardpipe.serve.wire import WireError, control, unpack  # noqa: E402

from .fleet_helpers import ROOT, Peer, ServerProcess, start_servers, write_config  # noqa: E402
from .helpers import alive, kill_group, run_in_group, spawn  # noqa: E402

ASSIGN = {"assignment": 7, "epoch": 0, "rank": 0, "world_size": 1, "part": 0, "parts": 2, "state": None, "credits": 0}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("fleet-audit"))


@pytest.fixture(scope="module")
def server(config: Path) -> Iterator[ServerProcess]:
    servers = start_servers(config, 1, workers=2)
    yield servers[0]
    servers[0].stop()


@pytest.fixture
def peer(server: ServerProcess) -> Iterator[Peer]:
    p = Peer(server.endpoint)
    yield p
    p.close()


def _header(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        # an empty field whose other dimensions overflow torch's / numpy's index type
        (
            [
                _header(type="hello", fields=[{"key": "a", "kind": "tensor", "dtype": "uint8", "shape": [0, 2**70]}]),
                b"",
            ],
            "field 'a': bad shape [0, 1180591620717411303424]",
        ),
        (
            [
                _header(
                    type="hello", fields=[{"key": "a", "kind": "ndarray", "dtype": "uint8", "shape": [0] + [2**40] * 4}]
                ),
                b"",
            ],
            "field 'a': empty shape [0, 1099511627776, 1099511627776, 1099511627776, 1099511627776] is too large",
        ),
        (
            [b'{"v":1,"type":"credit","assignment":1' + b"0" * 5000 + b',"n":1}'],
            "header is not JSON: Exceeds the limit",
        ),
    ],
)
def test_oversized_numbers_are_wire_errors_at_the_server_and_the_loader(peer, frames, message):
    with pytest.raises(WireError) as info:  # what a RemoteLoader meets from a hostile server
        unpack(frames)
    assert message in str(info.value)
    reply = peer.ask(frames)  # and what the server answers a hostile client
    assert reply["type"] == "rejected" and reply["message"].startswith(message)
    assert peer.ask(control("hello"))["type"] == "hello"  # still serving


def test_a_reused_assignment_id_is_refused(peer):
    """A second ``assign`` with a running id would leave the first pipeline in its worker for good."""
    peer.send(control("assign", **ASSIGN))  # credits 0: it runs, and nothing is sent back
    reply = peer.ask(control("assign", **ASSIGN))
    assert reply["type"] == "rejected"
    assert reply["message"] == "assign: assignment 7 is already running for this client"
    peer.send(control("cancel", assignment=7))
    assert peer.ask(control("hello"))["type"] == "hello"


def test_one_client_runs_at_most_max_parts_parts(peer):
    """Each assign holds a pipeline in a worker: one connection must not hold them without bound."""
    assign = {**ASSIGN, "credits": 0}
    for i in range(MAX_PARTS):
        peer.send(control("assign", **{**assign, "assignment": 100 + i}))
    reply = peer.ask(control("assign", **{**assign, "assignment": 99}))
    assert reply["type"] == "rejected"
    assert reply["message"] == f"assign: this client already runs {MAX_PARTS} parts here, the most one trainer may"
    for i in range(MAX_PARTS):
        peer.send(control("cancel", assignment=100 + i))
    with RemoteLoader([peer.endpoint], timeout=20) as loader:  # the others are served as before
        assert len([k for batch in loader for k in batch["__key__"]]) == 80


def _fake_server(answer: Callable[[dict], list | None]) -> tuple[str, Callable[[], None]]:
    """A ROUTER that answers each request with ``answer(header)``; returns its endpoint and a stop function."""
    fake = zmq.Context.instance().socket(zmq.ROUTER)
    fake.linger = 0
    fake.bind("tcp://127.0.0.1:*")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if fake.poll(100):
                client, *frames = fake.recv_multipart()
                reply = answer(unpack(frames)[0])
                if reply is not None:
                    fake.send_multipart([client, *reply])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(5)
        fake.close(0)

    return fake.getsockopt_string(zmq.LAST_ENDPOINT), close


@pytest.mark.parametrize(
    ("hello", "message"),
    [
        ({"workers": "many", "fingerprint": "f"}, "hello: workers must be an integer from 0 to 4096, not 'many'"),
        ({"workers": 5000, "fingerprint": "f"}, "hello: workers must be an integer from 0 to 4096, not '5000'"),
        ({"workers": 1, "fingerprint": {"a": 1}}, "hello: fingerprint must be a string of at most 128 characters"),
    ],
)
def test_a_server_with_a_malformed_hello_is_named_and_sizes_nothing(hello, message):
    """The worker count in a hello sizes the trainer's split: an absurd one must not become ``parts``."""
    endpoint, close = _fake_server(lambda h: control("hello", **hello) if h["type"] == "hello" else None)
    try:
        # 30 s: room for a TCP connect, the ZMTP handshake and this process's fake server thread on a
        # loaded machine; the refusal comes with the answer, long before
        with RemoteLoader([endpoint], timeout=30) as loader:
            t0 = time.monotonic()
            with pytest.raises(RemoteError, match=rf"no server answered within 30s: {endpoint} \(sent a malformed"):
                iter(loader)
            assert time.monotonic() - t0 < 20  # refused at its answer, not waited for until the timeout
            assert loader.parts is None and loader.stats["rejected"] == 1
            assert loader.servers[0].reason.startswith(f"sent a malformed message: {message}")
    finally:
        close()


def test_a_batch_without_a_state_drops_its_server_with_a_named_error():
    def answer(h: dict) -> list | None:
        if h["type"] == "hello":
            return control("hello", workers=1, fingerprint="f")
        if h["type"] == "assign":
            return control("batch", assignment=h["assignment"], seq=0)
        return None

    endpoint, close = _fake_server(answer)
    try:
        with RemoteLoader([endpoint], timeout=5) as loader:
            with pytest.raises(
                RemoteError, match=rf"every server is lost: {endpoint} \(sent a malformed message: batch: no state\)"
            ):
                list(loader)
    finally:
        close()


def _serve_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "shardpipe.cli", "serve", str(config), *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "-2"], "--workers must be at least 1, not -2"),
        (["--heartbeat", "-1"], "--heartbeat must be a positive number of seconds, not -1.0"),
        (["--idle-timeout", "0"], "--idle-timeout must be a positive number of seconds, not 0.0"),
        (["--max-clients", "0"], "--max-clients must be at least 1, not 0"),
        (["--bind", "tcp://127.0.0.1:70000"], "cannot listen on tcp://127.0.0.1:70000: port '70000' is not a port"),
        (
            ["--curve-secret", "missing.key_secret", "--curve-clients", "."],
            "Invalid certificate file: missing.key_secret",
        ),
    ],
)
def test_bad_settings_exit_2_with_a_message(config, args, message):
    """Before: these served with no worker, never beat, listened on port 70000 - 65536, or crashed (exit 1)."""
    result = run_in_group(_serve_cmd(config, "--bind", "tcp://127.0.0.1:*", *args), timeout=90, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def _start(config: Path, tmp: str) -> tuple[subprocess.Popen, dict]:
    """A server whose socket folder goes under ``tmp`` (to see that it is removed); its start-up line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": tmp}
    cmd = _serve_cmd(config, "--bind", "tcp://127.0.0.1:*", "--workers", "2")
    proc = spawn(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        kill_group(proc)
        raise RuntimeError(f"shardpipe serve did not start: {proc.stderr.read()[-2000:]}")
    return proc, json.loads(line)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_and_ctrl_c_shut_down_cleanly(config, how):
    """Exit 0, no worker left, no socket folder left, no traceback (Ctrl-C reaches the whole group)."""
    tmp = tempfile.mkdtemp(prefix="sp-audit-", dir="/tmp")  # short: an ipc path must fit 107 bytes
    proc, info = _start(config, tmp)
    try:
        assert os.listdir(tmp)  # its socket folder
        if how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        else:  # at once: a worker may not have started running yet (see the test below)
            assert all(any(_sigint(w) or ()) for w in info["worker_pids"])  # ignored or (starting) blocked
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(30)
        err = proc.stderr.read()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in info["worker_pids"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == 0, err[-2000:]
        assert not any(alive(w) for w in info["worker_pids"])
        assert os.listdir(tmp) == [] and "Traceback" not in err and "KeyboardInterrupt" not in err
    finally:
        kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _sigint(pid: int) -> tuple[bool, bool] | None:
    """Whether process ``pid`` ignores SIGINT and whether it blocks it (/proc/PID/status); None if gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    bit = 1 << (signal.SIGINT - 1)
    return bool(int(fields["SigIgn"], 16) & bit), bool(int(fields["SigBlk"], 16) & bit)


#: ``shardpipe serve`` whose workers wait for a file (argv[1]) before they run: a slow start, as on a
#: busy machine, where the server is ready and a Ctrl-C can come before a worker ignores SIGINT
_GATED_SERVE = """
import os, sys, time
import shardpipe.serve.server as server
from shardpipe.cli import main

run_worker, gate = server.run_worker, sys.argv[1]

def gated(*args):
    while not os.path.exists(gate):
        time.sleep(0.01)
    run_worker(*args)

server.run_worker = gated
sys.exit(main(sys.argv[2:]))
"""


def test_a_ctrl_c_while_workers_start_waits_and_is_dropped(config, tmp_path: Path):
    """Before: a worker set SIGINT ignored only after its imports, and a Ctrl-C to the group just after
    the ready line raised KeyboardInterrupt there (a traceback from multiprocessing). Now workers start
    with SIGINT blocked; run_worker ignores it, which drops one that came meanwhile, then unblocks it."""
    gate = tmp_path / "gate"
    cmd = [sys.executable, "-c", _GATED_SERVE, str(gate), "serve", str(config)]
    cmd += ["--bind", "tcp://127.0.0.1:*", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = spawn(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line, f"shardpipe serve did not start (exit code {proc.poll()})"
        workers = json.loads(line)["worker_pids"]
        # not running yet, so not ignoring SIGINT: it must be blocked (it was not: the bug)
        assert [_sigint(w) for w in workers] == [(False, True)] * 2
        for w in workers:
            os.kill(w, signal.SIGINT)  # a Ctrl-C now waits in each worker
        gate.touch()
        deadline = time.monotonic() + 30
        while any(_sigint(w) != (True, False) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        # running: SIGINT ignored and no longer blocked, and the one that waited did not stop them
        assert [_sigint(w) for w in workers] == [(True, False)] * 2
        os.killpg(proc.pid, signal.SIGINT)  # a Ctrl-C now: the server stops them and exits
        code = proc.wait(30)
        err = proc.stderr.read()
        assert code == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    finally:
        kill_group(proc)
