"""The decode fleet: real ``shardpipe serve`` processes on 127.0.0.1 feeding RemoteLoaders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

zmq = pytest.importorskip("zmq")

from shardpipe import RemoteError, RemoteLoader, ShardLoader  # noqa: E402
from shardpipe.config import load_config  # noqa: E402

from .fleet_helpers import COUNTS, ROOT, ServerProcess, start_servers, write_config  # noqa: E402
from .helpers import make_samples  # noqa: E402

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
    """Epochs 0 and 1 from a local ShardLoader with 4 workers: the reference for 2 servers x 2 workers."""
    dataset, _ = load_config(config)
    loader = ShardLoader(dataset, num_workers=4)
    return [batches_of(loader), batches_of(loader)]


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
    fresh = start_servers(config, 2, workers=2)  # new servers, a new loader
    try:
        with RemoteLoader([s.endpoint for s in fresh], timeout=10) as loader:
            loader.load_state_dict(state)
            rest = batches_of(loader)
    finally:
        for s in fresh:
            s.stop()
    assert rest == local_epochs[1][7:]


def _kill_after(servers, loader, n: int, sig: int) -> list:
    out = []
    for batch in loader:
        out.append((list(batch["__key__"]), batch["jpg"].contiguous().numpy().tobytes(), batch["cls"].tolist()))
        if len(out) == n:
            os.kill(servers[0].pid, sig)
    return out


def test_a_killed_server_is_replaced_and_can_rejoin(config, local_epochs):
    servers = start_servers(config, 2, workers=2)
    try:
        with RemoteLoader([s.endpoint for s in servers], timeout=2) as loader:
            got = _kill_after(servers, loader, 3, signal.SIGKILL)
            assert got == local_epochs[0]  # the epoch completed exactly once, in the same order
            assert loader.stats["servers_lost"] == 1 and loader.stats["reassigned"] >= 1
            # restart it on the same port: the next epoch brings it back
            port_bind = servers[0].endpoint
            servers[0].stop()
            servers[0] = ServerProcess(config, 2, port_bind).wait_ready()
            assert batches_of(loader) == local_epochs[1]
            assert all(s.live for s in loader.servers)
    finally:
        for s in servers:
            s.stop()


def test_a_stopped_server_is_detected_and_its_parts_reassigned(config, local_epochs):
    servers = start_servers(config, 2, workers=2)
    try:
        with RemoteLoader([s.endpoint for s in servers], timeout=1.5) as loader:
            t0 = time.monotonic()
            got = _kill_after(servers, loader, 2, signal.SIGSTOP)
            elapsed = time.monotonic() - t0
        assert got == local_epochs[0]
        assert loader.stats["servers_lost"] == 1
        assert elapsed < 1.5 + 10  # detected after the timeout, not left hanging
    finally:
        os.kill(servers[0].pid, signal.SIGCONT)
        for s in servers:
            s.stop()


def test_no_server_left_is_a_clear_error(config):
    (server,) = start_servers(config, 1, workers=1)
    with RemoteLoader([server.endpoint], timeout=1) as loader:
        it = iter(loader)
        next(it)
        server.stop()
        with pytest.raises(RemoteError, match=rf"every server is lost \({server.endpoint}\)"):
            for _ in it:
                pass
    with RemoteLoader([server.endpoint], timeout=0.5) as loader:
        with pytest.raises(RemoteError, match=rf"no server answered within 0.5s: {server.endpoint}"):
            iter(loader)


def test_two_gloo_ranks_with_their_own_servers(config, tmp_path: Path):
    servers = start_servers(config, 2, workers=2)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.serve_rank",
                    str(r),
                    "2",
                    str(tmp_path / "store"),
                    servers[r].endpoint,
                    str(tmp_path / f"r{r}.json"),
                ],
                cwd=ROOT,
                env=env,
            )
            for r in range(2)
        ]
        try:
            codes = [p.wait(timeout=120) for p in procs]
        finally:
            for p in procs:
                p.kill()
    finally:
        for s in servers:
            s.stop()
    assert codes == [0, 0], "a rank failed or hung (see its output above)"
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert results[0]["steps"] == results[1]["steps"] > 0  # equal batch counts
    a, b = set(results[0]["keys"]), set(results[1]["keys"])
    assert not a & b and a | b == ALL_KEYS  # disjoint, and together the whole epoch (80 = 2 x 40)
    assert len(results[0]["keys"]) == len(a) == 40


def test_curve_round_trip_and_refused_keys(config, tmp_path: Path):
    import zmq.auth

    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "trainer")
    _, intruder_secret = zmq.auth.create_certificates(keys, "intruder")
    Path(client_public).rename(allowed / "trainer.key")
    server = ServerProcess(
        config, 1, "tcp://127.0.0.1:*", "--curve-secret", server_secret, "--curve-clients", str(allowed)
    ).wait_ready()
    try:
        with RemoteLoader([server.endpoint], server_key=server_public, client_key=client_secret) as loader:
            got = keys_of(batches_of(loader))
        assert sorted(got) == sorted(ALL_KEYS)
        for kwargs in ({"server_key": server_public, "client_key": intruder_secret}, {}):
            with RemoteLoader([server.endpoint], timeout=1, **kwargs) as loader:
                with pytest.raises(RemoteError, match="no server answered.*CURVE"):
                    iter(loader)
    finally:
        server.stop()


def test_default_bind_is_loopback(config):
    from shardpipe.cli import serve
    from shardpipe.serve.server import DEFAULT_BIND

    import argparse

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
