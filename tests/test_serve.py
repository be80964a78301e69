"""The decode fleet: real ``shardpipe serve`` processes on 127.0.0.1 feeding RemoteLoaders."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from shardpipe import RemoteError, RemoteLoader, ShardLoader  # noqa: E402
from shardpipe.config import load_config  # noqa: E402

from .fleet_helpers import COUNTS, ROOT, ServerProcess, start_servers, write_config  # noqa: E402
from .helpers import make_samples, process_groups  # noqa: E402

ALL_KEYS = {s["__key__"] for s in make_samples(sum(COUNTS))}


def batches_of(loader, limit: int | None = None) -> list[tuple[list[str], bytes, list[int]]]:
    """(keys, image bytes, labels) per batch: what must match byte for byte."""
    out = []
    for batch in loader:
        out.append((list(batch["__key__"]), batch["jpg"].contiguous().numpy().tobytes(), batch["cls"].tolist()))
        if limit is not None and len(out) == limit:
            break
    return out


def keys_of(batches) -> list[str]:
    return [k for keys, _, _ in batches for k in keys]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def fleet(config: Path):
    """Two servers with two workers each, shared by the tests that leave them running."""
    servers = start_servers(config, 2, workers=2)
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def local_epochs(config: Path) -> list[list]:
    """Epochs 0, 1 and 2 from a local ShardLoader with 4 workers: the reference for 2 servers x 2 workers."""
    dataset, _ = load_config(config)
    loader = ShardLoader(dataset, num_workers=4)
    return [batches_of(loader) for _ in range(3)]


def test_two_servers_by_two_workers_match_the_local_loader(fleet, local_epochs):
    with RemoteLoader([s.endpoint for s in fleet], timeout=10) as loader:
        epochs = [batches_of(loader), batches_of(loader)]
        assert loader.parts == 4
    for remote, local in zip(epochs, local_epochs):
        keys = keys_of(remote)
        assert len(keys) == len(set(keys)) and set(keys) == ALL_KEYS  # every sample exactly once
        assert remote == local  # the same batches, byte for byte, in the same order
    assert keys_of(epochs[0]) != keys_of(epochs[1])  # a new order each epoch


def test_resume_mid_epoch_with_everything_restarted(fleet, config, local_epochs):
    endpoints = [s.endpoint for s in fleet]
    with RemoteLoader(endpoints, timeout=10) as loader:
        loader.set_epoch(1)
        first = batches_of(loader, limit=7)
        state = json.loads(json.dumps(loader.state_dict()))  # it must survive a JSON checkpoint
    assert first == local_epochs[1][:7]
    fresh = start_servers(config, 1, workers=2)  # a new server (any number can run the 4 parts), a new loader
    try:
        with RemoteLoader([s.endpoint for s in fresh], timeout=10) as loader:
            loader.load_state_dict({**state, "fingerprint": "0" * 16})
            with pytest.raises(ValueError, match="saved for another dataset or config"):
                iter(loader)
        with RemoteLoader([s.endpoint for s in fresh], timeout=10) as loader:
            loader.load_state_dict(state)
            assert loader.state_dict() == state  # a checkpoint taken before iterating keeps the position
            rest = batches_of(loader)
    finally:
        for s in fresh:
            s.stop()
    assert rest == local_epochs[1][7:]


def test_a_state_saved_after_an_epoch_resumes_with_the_next(fleet, local_epochs):
    """A checkpoint taken after an epoch's last batch holds no positions and names the next epoch."""
    endpoints = [s.endpoint for s in fleet]
    with RemoteLoader(endpoints, timeout=10) as loader:
        assert batches_of(loader) == local_epochs[0]
        state = json.loads(json.dumps(loader.state_dict()))
    assert (state["epoch"], state["next_part"], state["states"], state["done"]) == (1, 0, None, None)
    with RemoteLoader(endpoints, timeout=10) as loader:
        loader.load_state_dict(state)
        assert batches_of(loader) == local_epochs[1]


def _signal_after(server, loader, n: int, sig: int) -> list:
    """An epoch's batches, sending ``sig`` to ``server`` after the ``n``-th."""
    out = []
    for batch in loader:
        out.append((list(batch["__key__"]), batch["jpg"].contiguous().numpy().tobytes(), batch["cls"].tolist()))
        if len(out) == n:
            os.kill(server.pid, sig)
    return out


def test_failover_killed_and_stopped_servers_rejoin_and_none_left(config, local_epochs, caplog):
    """SIGKILL, restart and rejoin, SIGSTOP, then no server left: each epoch still exactly once."""
    a, b = start_servers(config, 2, workers=2)
    restarted = None
    # each loss is noticed after ``timeout`` s of silence: long enough that a live server slowed down
    # by a busy machine is not dropped too; a rejoin takes as long as the hello, up to ``rejoin_wait``
    timeout = 4
    try:
        with RemoteLoader([a.endpoint, b.endpoint], timeout=timeout, rejoin_wait=10) as loader:
            # epoch 0: server a killed after 3 batches; its parts continue on b from the last batch received
            assert _signal_after(a, loader, 3, signal.SIGKILL) == local_epochs[0]
            assert loader.stats["servers_lost"] == 1 and loader.stats["reassigned"] == 2
            dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
            assert len(dropped) == 1 and dropped[0].startswith(f"server {a.endpoint} dropped: no message for 4s")
            assert re.search(r"; parts \[\d+, \d+\] continue elsewhere$", dropped[0]), dropped
            # a restarts on its port and rejoins at the next epoch; b stops (SIGSTOP) after 2 batches
            a.stop()
            restarted = ServerProcess(config, 2, a.endpoint).wait_ready()
            t0 = time.monotonic()
            assert _signal_after(b, loader, 2, signal.SIGSTOP) == local_epochs[1]
            assert time.monotonic() - t0 < timeout + 15  # detected after the timeout, not left hanging
            assert loader.stats["servers_lost"] == 2 and loader.servers[0].live and not loader.servers[1].live
            # epoch 2: the restarted server dies too: a clear error naming the servers
            loader.rejoin_wait = 0.5  # b is still stopped: do not wait long for it
            it = iter(loader)
            assert f"server {b.endpoint} did not answer; epoch 2 runs without it" in caplog.messages
            next(it)
            restarted.stop()
            with pytest.raises(
                RemoteError,
                # b, asked again at this epoch's start, is named by that: it did not answer
                match=rf"every server is lost: {a.endpoint} \(no message for {timeout}s.*; {b.endpoint} \(did not answer\)",
            ):
                for _ in it:
                    pass
            # the next epoch asks both again for rejoin_wait (not timeout) seconds, and says which it waited
            with pytest.raises(RemoteError, match=rf"no server answered within 0.5s: {a.endpoint}, {b.endpoint} "):
                iter(loader)
        with RemoteLoader([a.endpoint], timeout=0.5) as loader:
            with pytest.raises(RemoteError, match=rf"no server answered within 0.5s: {a.endpoint}"):
                iter(loader)
    finally:
        os.kill(b.pid, signal.SIGCONT)
        for s in (a, b, restarted):
            if s is not None:
                s.stop()


def test_two_gloo_ranks_with_their_own_servers(fleet, tmp_path: Path):
    servers = fleet  # rank r uses server r only (a server serves any number of trainers)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmds = [
        [sys.executable, "-m", "tests.serve_rank", str(r), "2", str(tmp_path / "store"), servers[r].endpoint,
         str(tmp_path / f"r{r}.json")]
        for r in range(2)
    ]  # fmt: skip
    with process_groups(*cmds, cwd=ROOT, env=env) as procs:
        codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0], "a rank failed or hung (see its output above)"
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert results[0]["steps"] == results[1]["steps"] > 0  # equal batch counts
    a, b = set(results[0]["keys"]), set(results[1]["keys"])
    assert not a & b and a | b == ALL_KEYS  # disjoint, and together the whole epoch (80 = 2 x 40)
    assert len(results[0]["keys"]) == len(a) == 40


def test_curve_round_trip_refused_keys_and_idle_expiry(config, tmp_path: Path):
    import zmq.auth

    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "trainer")
    _, intruder_secret = zmq.auth.create_certificates(keys, "intruder")
    Path(client_public).rename(allowed / "trainer.key")
    curve = ["--curve-secret", server_secret, "--curve-clients", str(allowed)]
    # idle timeout 3 s: a trainer also sends nothing while it waits for a batch, or while a busy machine
    # does not run it, and that must not count as the pause below (6 s: the server's check has time)
    server = ServerProcess(config, 1, "tcp://127.0.0.1:*", *curve, "--idle-timeout", "3").wait_ready()
    try:
        with RemoteLoader([server.endpoint], server_key=server_public, client_key=client_secret) as loader:
            got = keys_of(batches_of(loader))
            assert sorted(got) == sorted(ALL_KEYS)
            # a pause longer than the server's idle timeout: it cancels the part, and the loader's next
            # credit is answered "lost", so the part restarts from the last batch received
            got, before = [], 0
            for i, batch in enumerate(loader):
                got += batch["__key__"]
                if i == 0:
                    before = loader.stats["reassigned"]
                    time.sleep(6)
            assert sorted(got) == sorted(ALL_KEYS)
            assert loader.stats["reassigned"] - before == 1  # the part was cancelled and restarted once
        for kwargs in ({"server_key": server_public, "client_key": intruder_secret}, {}):
            with RemoteLoader([server.endpoint], timeout=1, **kwargs) as loader:
                with pytest.raises(RemoteError, match="no server answered.*CURVE"):
                    iter(loader)
    finally:
        server.stop()


def test_default_bind_is_loopback(config):
    import argparse

    from shardpipe.cli import serve
    from shardpipe.serve.server import DEFAULT_BIND

    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    assert p.parse_args([str(config)]).bind == DEFAULT_BIND == "tcp://127.0.0.1:5555"
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", 5555))
        except OSError:
            pytest.skip("port 5555 is in use here")
    server = ServerProcess(config, 1, "")  # no --bind
    try:
        server.wait_ready()
        assert server.endpoint == "tcp://127.0.0.1:5555"
        listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        local = {row[1] for row in listening if row[3] == "0A"}  # state LISTEN
        assert "0100007F:15B3" in local  # 127.0.0.1:5555
        assert "00000000:15B3" not in local  # not every interface
    finally:
        server.stop()


def test_malformed_requests_are_refused_and_counted(fleet):
    from shardpipe.serve.wire import control, unpack

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger, sock.rcvtimeo = 0, 20000
    sock.connect(fleet[0].endpoint)

    def ask(frames):
        sock.send_multipart(frames)
        return unpack(sock.recv_multipart())[0]

    try:
        before = ask(control("hello"))["rejected"]
        assign = {"assignment": 1, "epoch": 0, "rank": 0, "world_size": 1, "part": 0, "parts": 4, "state": None}
        bad = [
            ([b"\x80\x04pickle"], "header is not JSON"),
            (control("run", code="import os"), "unknown request type 'run'"),
            (control("assign", **assign), "credits must be a non-negative integer"),
            (control("assign", **{**assign, "credits": 1, "rank": 3}), "rank 3 is not below world_size 1"),
            (control("assign", **{**assign, "credits": 1, "part": "0; rm -rf /"}), "part must be a non-negative"),
            ([json.dumps({"v": 1, "type": "hello"}).encode(), b"x" * (2 << 20)], "over the limit"),
        ]
        for i, (frames, message) in enumerate(bad, 1):
            reply = ask(frames)
            assert reply["type"] == "rejected" and reply["rejected"] == before + i
            assert message in reply["message"]
        assert ask(control("hello"))["type"] == "hello"  # and it goes on serving
    finally:
        sock.close(0)


def test_a_server_sending_malformed_batches_is_refused_counted_and_dropped():
    """A fake server answers hello, then sends a batch whose frame does not match its header."""
    import threading

    from shardpipe.serve.wire import control, unpack

    ctx = zmq.Context.instance()
    fake = ctx.socket(zmq.ROUTER)
    fake.linger = 0
    fake.bind("tcp://127.0.0.1:*")
    endpoint = fake.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve_badly():
        for _ in range(2):
            if not fake.poll(20000):
                return
            client, *frames = fake.recv_multipart()
            header, _ = unpack(frames)
            if header["type"] == "hello":
                fake.send_multipart([client, *control("hello", workers=1, fingerprint="f", rejected=0)])
            elif header["type"] == "assign":
                bad = {
                    "type": "batch",
                    "assignment": header["assignment"],
                    "state": None,
                    "fields": [{"key": "jpg", "kind": "tensor", "dtype": "uint8", "shape": [64, 3, 224, 224]}],
                }
                fake.send_multipart([client, json.dumps({"v": 1, **bad}).encode(), b"short"])

    thread = threading.Thread(target=serve_badly, daemon=True)
    thread.start()
    try:
        with RemoteLoader([endpoint], timeout=5) as loader:
            with pytest.raises(
                RemoteError,
                match=rf"every server is lost: {endpoint} \(sent a malformed message: "
                r"field 'jpg': shape \[64, 3, 224, 224\] uint8 needs 9633792 bytes, the frame has 5",
            ):
                list(loader)
            assert loader.stats["rejected"] == 1
    finally:
        thread.join(5)
        fake.close(0)


def test_a_hung_worker_is_detected_by_the_part_timeout(fleet, local_epochs):
    """A stopped worker process (its server still sends heartbeats): the part times out and moves on."""
    os.kill(fleet[0].worker_pids[0], signal.SIGSTOP)
    try:
        # 5 s: more than a live part's slowest batch on a busy machine (its first: a new pipeline),
        # or that server is dropped too
        with RemoteLoader([s.endpoint for s in fleet], timeout=10, part_timeout=5) as loader:
            assert batches_of(loader) == local_epochs[0]
            assert loader.stats["servers_lost"] == 1 and not loader.servers[0].live
            assert loader.servers[0].reason == "part 0 made no progress for 5s"
    finally:
        os.kill(fleet[0].worker_pids[0], signal.SIGCONT)
