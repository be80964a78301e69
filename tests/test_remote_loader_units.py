"""``RemoteLoader`` (serve/client.py) where no server is needed, or none answers: the refusals
of its arguments, the rank it runs as, its state before a pass, and a fleet that is not there.

tests/test_serve.py runs it against real ``shardpipe serve`` processes.
"""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("zmq")

from shardpipe import RemoteError, RemoteLoader  # noqa: E402
from shardpipe.state import STATE_VERSION  # noqa: E402


@pytest.fixture
def silent() -> str:
    """An endpoint on 127.0.0.1 where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("servers", ["tcp://127.0.0.1:5555", [], ()])
def test_servers_must_be_a_list_of_endpoints(servers):
    with pytest.raises(ValueError) as e:
        RemoteLoader(servers)
    assert str(e.value) == "RemoteLoader needs a list of server endpoints, e.g. ['tcp://127.0.0.1:5555']"


def test_credits_must_be_at_least_one(silent):
    with pytest.raises(ValueError, match=r"^credits must be >= 1, not 0$"):
        RemoteLoader([silent], credits=0)
    RemoteLoader([silent], credits=1).close()


@pytest.mark.parametrize("keys", [{"server_key": "server.key"}, {"client_key": "client.key_secret"}])
def test_curve_needs_both_keys(silent, keys):
    with pytest.raises(ValueError) as e:
        RemoteLoader([silent], **keys)
    assert str(e.value) == "CURVE needs both server_key (public key file) and client_key (secret key file)"


def test_the_rank_given_overrides_the_environment(silent, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with RemoteLoader([silent]) as loader:
        assert loader.rank_and_world() == (2, 4)
    with RemoteLoader([silent], rank=1) as loader:
        assert loader.rank_and_world() == (1, 4)
    with RemoteLoader([silent], world_size=3) as loader:
        assert loader.rank_and_world() == (2, 3)
    with RemoteLoader([silent], rank=0, world_size=1) as loader:
        assert loader.rank_and_world() == (0, 1)


def test_the_state_before_any_pass_starts_at_the_epoch_set(silent):
    with RemoteLoader([silent], rank=1, world_size=2, parts=3) as loader:
        assert loader.state_dict() == {
            "version": STATE_VERSION,
            "fingerprint": None,
            "epoch": 0,
            "rank": 1,
            "world_size": 2,
            "parts": 3,
            "next_part": 0,
            "states": None,
            "done": None,
        }
        loader.set_epoch(5)
        assert loader.state_dict()["epoch"] == 5


def test_no_server_answering_is_an_error_naming_them(silent):
    with RemoteLoader([silent, silent], timeout=0.2) as loader:
        with pytest.raises(RemoteError) as e:
            loader.fingerprint()
        assert str(e.value) == f"no server answered within 0.2s: {silent}, {silent}, so no fingerprint is known"
        with pytest.raises(RemoteError) as e:
            iter(loader)
        assert str(e.value) == (
            f"no server answered within 0.2s: {silent}, {silent} (are they running, and with CURVE, do the keys match?)"
        )
