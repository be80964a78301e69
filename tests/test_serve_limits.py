"""The decode fleet's limits, against real ``shardpipe serve`` processes on 127.0.0.1: socket folders
of killed servers, oversized worker errors, queued batches per client, and clients per server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

zmq = pytest.importorskip("zmq")

from shardpipe import RemoteError, RemoteLoader  # noqa: E402
from shardpipe.serve.coordination import MAX_CREDITS  # noqa: E402
from shardpipe.serve.server import MAX_CLIENTS, MAX_QUEUED, Server  # noqa: E402
from shardpipe.serve.wire import MAX_TEXT, control  # noqa: E402

from .fleet_helpers import Peer, ServerProcess, start_servers, wait_idle, write_config  # noqa: E402
from .helpers import small_jpeg, write_manifest_dataset  # noqa: E402

PART = {"epoch": 0, "rank": 0, "world_size": 1, "part": 0, "parts": 1, "state": None}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("fleet-limits"))


@pytest.fixture(scope="module")
def server(config: Path) -> Iterator[ServerProcess]:
    servers = start_servers(config, 1, workers=2)
    yield servers[0]
    servers[0].stop()


def test_a_killed_servers_socket_folder_is_removed_by_the_next_server(config):
    """SIGKILL leaves the folder behind; the next server removes it (only that one: a live server's
    folder, a symlink of the same pattern and a name of another shape stay)."""
    tmp = tempfile.mkdtemp(prefix="sp-dirs-", dir="/tmp")  # short: an ipc path must fit 107 bytes
    env = {"TMPDIR": tmp}
    servers = [ServerProcess(config, 1, env=env).wait_ready()]
    try:
        [killed_folder] = os.listdir(tmp)
        servers.append(ServerProcess(config, 1, env=env).wait_ready())
        [live_folder] = set(os.listdir(tmp)) - {killed_folder}
        killed, live = servers
        os.kill(killed.pid, signal.SIGKILL)
        killed.proc.wait(10)
        target = Path(tmp, "target")
        target.mkdir()
        (target / "keep").write_text("x")
        decoys = [f"shardpipe-serve-{killed.pid}-abcdefgh", f"shardpipe-serve-{killed.pid}-x"]
        os.symlink(target, Path(tmp, decoys[0]))  # a dead server's name, but a link
        Path(tmp, decoys[1]).mkdir()  # a dead server's pid, but not mkdtemp's suffix
        assert killed_folder in os.listdir(tmp)  # SIGKILL: nothing removed it
        servers.append(ServerProcess(config, 1, env=env).wait_ready())
        left = set(os.listdir(tmp))
        assert killed_folder not in left
        assert {live_folder, "target", *decoys} <= left and (target / "keep").read_text() == "x"
        [fresh_folder] = left - {live_folder, "target", *decoys}
        assert live_folder.startswith(f"shardpipe-serve-{live.pid}-")  # each named by its server's pid
        assert fresh_folder.startswith(f"shardpipe-serve-{servers[2].pid}-")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_folder_is_stale_when_nobody_holds_its_lock_whatever_its_pid_says(tmp_path):
    """Its lock, not the pid in its name, says whether a server uses a folder: a server in another pid
    namespace (same /tmp) has a pid that names nothing here, or another process, and keeps its folder."""
    import fcntl
    import subprocess
    import sys

    from shardpipe.serve.socketdir import LOCK, remove_stale_folders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(dead.stdout)  # a pid that ran and exited
    locked, released, unlocked_dead, unlocked_live = (
        tmp_path / f"shardpipe-serve-{gone}-aaaaaaaa",
        tmp_path / f"shardpipe-serve-{os.getpid()}-bbbbbbbb",  # a live pid, but its lock released
        tmp_path / f"shardpipe-serve-{gone}-cccccccc",
        tmp_path / f"shardpipe-serve-{os.getpid()}-dddddddd",
    )
    for folder in (locked, released, unlocked_dead, unlocked_live):
        folder.mkdir()
    fd = os.open(locked / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a server elsewhere holds it
    (released / LOCK).write_text("")
    try:
        removed = remove_stale_folders(str(tmp_path))
    finally:
        os.close(fd)
    assert sorted(removed) == sorted([str(released), str(unlocked_dead)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([locked.name, unlocked_live.name])
    assert remove_stale_folders(str(tmp_path)) == [str(locked)]  # once its lock is let go


def _write_error_config(root: Path) -> Path:
    """One sample without its required ``cls`` whose five field names are 900,000 characters each:
    the worker's MissingFieldError lists them, a message of 4.5 MB (over a request's 1 MiB and over
    a header's 4 MiB)."""
    sample = {"__key__": "k" * 1000, "jpg": small_jpeg(0), **{c * 900_000: b"1" for c in "abcde"}}
    manifest = write_manifest_dataset(root, [sample], [1])
    config = {
        "dataset": {"urls": manifest, "batch_size": 4, "require": ["jpg", "cls"]},
        "transform": [{"CenterCrop": {"size": 32}}],
        "loader": {"num_workers": 1},
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_oversized_worker_error_is_truncated_and_releases_its_part(tmp_path):
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - the server writes it until stopped
    server = ServerProcess(_write_error_config(tmp_path), 1, stderr=log).wait_ready()
    peer = Peer(server.endpoint)
    prefix = "part 0/1 of rank 0/1, epoch 0: MissingFieldError: sample 'kkk"
    tail = r" \.\.\. \[truncated: the message was (\d+) characters\]$"
    try:
        reply = peer.ask(control("assign", assignment=1, credits=1, **PART))
        assert reply["type"] == "error" and reply["message"].startswith(prefix)
        assert len(reply["message"]) < MAX_TEXT + 100
        assert int(re.search(tail, reply["message"])[1]) > 4_500_000
        # released: no heartbeat for it, and its id may run again (it fails again the same way)
        assert peer.next(timeout=1) is None
        again = peer.ask(control("assign", assignment=1, credits=1, **PART))
        assert again["type"] == "error" and again["message"] == reply["message"]
        with RemoteLoader([server.endpoint], timeout=10) as loader:
            with pytest.raises(RemoteError) as info:
                list(loader)
        assert str(info.value).startswith(f"server {server.endpoint}: {prefix}")
        assert re.search(tail, str(info.value))
    finally:
        peer.close()
        server.stop()
        log.close()
    # the server's log has each failure's traceback with the text clipped, not 4.5 MB three times over
    text = (tmp_path / "server.log").read_text()
    failures = text.count("MissingFieldError: sample 'kkk")
    assert failures == 3 and text.count("[truncated: the message was") == failures
    assert len(text) < failures * (MAX_TEXT + 10_000), len(text)


def test_a_client_that_stops_reading_gets_at_most_credits_batches_per_part(server):
    """Credits bound what an honest trainer has queued: nothing more comes until it grants again."""
    peer = Peer(server.endpoint)
    parts = {**PART, "parts": 2, "credits": 3}
    try:
        for part in (0, 1):
            peer.send(control("assign", assignment=10 + part, **{**parts, "part": part}))
        got = Counter(peer.next()["assignment"] for _ in range(6))
        assert got == {10: 3, 11: 3}
        assert peer.next(timeout=1.5) is None  # only heartbeats while it takes nothing
        peer.send(control("credit", assignment=10, n=1))
        reply = peer.next()
        assert (reply["type"], reply["assignment"], reply["seq"]) == ("batch", 10, 3)
        assert peer.next(timeout=1.5) is None
    finally:
        for assignment in (10, 11):
            peer.send(control("cancel", assignment=assignment))
        peer.ask(control("hello"))
        peer.close()


def test_a_client_that_grants_without_reading_is_cut_off_at_the_queue_limit(tmp_path):
    """A grant is no receipt: a peer that grants credits and never reads would make the server queue
    every batch (here 26 parts x 20 batches of 196 KB). At ``MAX_QUEUED`` its parts are cancelled; it
    holds its place among ``--max-clients`` (and its queue) until it reads again."""
    config = write_config(tmp_path, crop=128)
    log = tmp_path / "server.log"
    with open(log, "w") as stderr:
        server = ServerProcess(config, 1, "tcp://127.0.0.1:*", "--max-clients", "1", stderr=stderr).wait_ready()
    peer = Peer(server.endpoint, rcvhwm=1, rcvbuf=1 << 14)  # takes in as little as the kernel allows
    batch_bytes, assigns = 4 * 3 * 128 * 128, 26
    send_buffer = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    most = MAX_QUEUED + (send_buffer + (1 << 16)) // batch_bytes + 4  # the queue plus what TCP holds
    assert assigns * 20 > most + 100
    try:
        assert peer.ask(control("hello"))["type"] == "hello"
        for i in range(assigns):
            peer.send(control("assign", assignment=1 + i, credits=MAX_CREDITS, **PART))
        wait_idle([server.pid, *server.worker_pids])  # produced all it could
        assert log.read_text().count(f"is not reading ({MAX_QUEUED} messages wait): cancelling its 26 parts") == 1
        refused = "assign: this server already serves 1 trainers, the most it takes at once"
        with RemoteLoader([server.endpoint], timeout=10) as loader:  # the full queue still holds its place
            with pytest.raises(RemoteError, match=rf"\({re.escape('refused a request: ' + refused)}\)"):
                list(loader)
        kinds = Counter()
        while (reply := peer.next(timeout=3)) is not None:
            kinds[reply["type"]] += 1
        assert 0 < kinds["batch"] <= most and kinds["end"] < assigns, kinds
        lost = peer.ask(control("credit", assignment=1, n=1))  # how a RemoteLoader learns to restart
        assert (lost["type"], lost["message"]) == ("lost", "assignment expired or unknown here")
        with RemoteLoader([server.endpoint], timeout=10) as loader:  # it read: the next trainer is served
            assert len([k for batch in loader for k in batch["__key__"]]) == 80
    finally:
        peer.close()
        server.stop()


def test_a_server_serves_at_most_max_clients_trainers(server):
    assign = {**PART, "credits": 0}
    peers = [Peer(server.endpoint) for _ in range(MAX_CLIENTS)]
    try:
        for p in peers:
            p.send(control("assign", assignment=1, **assign))
            assert p.ask(control("hello"))["type"] == "hello"  # its assign was taken before this
        peers[0].send(control("assign", assignment=2, **assign))  # not a new trainer: it may add a part
        assert peers[0].ask(control("hello"))["type"] == "hello"
        refused = f"assign: this server already serves {MAX_CLIENTS} trainers, the most it takes at once"
        newcomer = Peer(server.endpoint)
        reply = newcomer.ask(control("assign", assignment=1, **assign))
        newcomer.close()
        assert (reply["type"], reply["message"]) == ("rejected", refused)
        with RemoteLoader([server.endpoint], timeout=10) as loader:
            with pytest.raises(
                RemoteError, match=rf"every server is lost: {server.endpoint} \(refused a request: {refused}\)"
            ):
                list(loader)
        peers[-1].send(control("cancel", assignment=1))  # one trainer leaves: the next one is served
        assert peers[-1].ask(control("hello"))["type"] == "hello"
        with RemoteLoader([server.endpoint], timeout=10) as loader:
            assert len([k for batch in loader for k in batch["__key__"]]) == 80
    finally:
        for p in peers:
            for assignment in (1, 2):
                p.send(control("cancel", assignment=assignment))
            p.ask(control("hello"))  # the cancels were taken: the server is left as it was
            p.close()


def test_the_parts_of_a_trainer_that_disconnects_are_freed_at_the_next_heartbeat(config, tmp_path):
    """A trainer gone without a word (its socket closed, no cancel) holds no part past the next
    heartbeat: its slot goes to the next trainer long before ``--idle-timeout`` (here 600 s)."""
    log = tmp_path / "server.log"
    with open(log, "w") as stderr:
        server = ServerProcess(
            config, 1, "tcp://127.0.0.1:*", "--max-clients", "2", "--idle-timeout", "600", stderr=stderr
        ).wait_ready()
    peers = [Peer(server.endpoint) for _ in range(2)]
    try:
        for p in peers:
            p.send(control("assign", assignment=1, **PART, credits=0))
            assert p.ask(control("hello"))["type"] == "hello"  # its part is running
        refused = "assign: this server already serves 2 trainers, the most it takes at once"
        newcomer = Peer(server.endpoint)
        reply = newcomer.ask(control("assign", assignment=1, **PART, credits=0))
        newcomer.close()
        assert (reply["type"], reply["message"]) == ("rejected", refused)
        for p in peers:
            p.close()  # gone, as a killed trainer is: no cancel
        deadline = time.monotonic() + 30
        while log.read_text().count("disconnected: cancelling its 1 parts") < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        with RemoteLoader([server.endpoint], timeout=10) as loader:
            assert len([k for batch in loader for k in batch["__key__"]]) == 80
    finally:
        server.stop()
    text = log.read_text()
    assert "silent for" not in text and text.count("disconnected: cancelling its 1 parts") == 2, text[-2000:]


def test_max_clients_must_be_positive(config):
    with pytest.raises(ValueError, match="^--max-clients must be at least 1, not 0$"):
        Server(config, max_clients=0)
