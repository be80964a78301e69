"""The fleet server under hostile clients: every malformed message is refused and counted, and
an honest ``RemoteLoader`` beside them still receives every batch exactly once."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

zmq = pytest.importorskip("zmq")

from shardpipe import RemoteLoader, ShardpipeError  # noqa: E402
from shardpipe.serve.coordination import MAX_CREDITS, check_request  # noqa: E402
from shardpipe.serve.wire import MAX_DEPTH, WireError, control, unpack  # noqa: E402

from .fleet_helpers import COUNTS, start_servers, write_config  # noqa: E402
from .helpers import make_samples  # noqa: E402

ALL_KEYS = sorted(s["__key__"] for s in make_samples(sum(COUNTS)))
ASSIGN = {"assignment": 1, "epoch": 0, "rank": 0, "world_size": 1, "part": 0, "parts": 2, "state": None, "credits": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet-trust")
    servers = start_servers(write_config(root), 1, workers=2)
    yield servers[0], root
    servers[0].stop()


def _deep(n: int) -> bytes:
    return (
        json.dumps({"v": 1, "type": "credit", "assignment": 1, "n": 1})[:-1].encode()
        + b',"x":'
        + b"[" * n
        + b"]" * n
        + b"}"
    )


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([_deep(200_000)], "header nests too deeply to decode"),
        ([_deep(MAX_DEPTH + 5)], f"header nests deeper than {MAX_DEPTH} levels"),
        (control("credit", assignment=[1, 2], n=1), "credit: assignment must be an integer"),
        (control("credit", assignment=1, n="many"), "credit: n must be an integer from 1 to"),
        (control("credit", assignment=1, n=10**18), f"credit: n must be an integer from 1 to {MAX_CREDITS}"),
        (control("credit", assignment=1, n=True), "credit: n must be an integer"),
        (control("cancel", assignment={"a": 1}), "cancel: assignment must be an integer"),
        (control("credit", assignment=1, n=1, extra=1), "credit: unknown field(s) 'extra'"),
        (control("assign", **{**ASSIGN, "credits": 10**9}), f"assign: credits must be at most {MAX_CREDITS}"),
        (control("assign", **{**ASSIGN, "state": [1]}), "assign: state must be an object or null"),
        (
            control("assign", **{**ASSIGN, "state": {"version": 1, "epoch": -1, "stages": None}}),
            "['epoch']: must be >= 0",
        ),
        (
            control("assign", **{**ASSIGN, "state": {"version": 1, "epoch": 0, "stages": None, "url": "/x"}}),
            "unknown key(s) 'url'",
        ),
    ],
)
def test_each_malformed_request_is_a_wire_error(frames, message):
    with pytest.raises(WireError) as info:
        check_request(unpack(frames)[0])
    assert message in str(info.value)


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "str", "none", "bool", "float", "bigint", "neg"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == "dict":
        return {
            rng.choice(["url", "pos", "shard", "n", "x"]): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))
        }
    return {
        "int": rng.randrange(5),
        "str": rng.choice(["many", "", "../../etc/passwd", "0; rm -rf /"]),
        "none": None,
        "bool": rng.random() < 0.5,
        "float": rng.random() * 1e9,
        "bigint": 10 ** rng.randrange(10, 30),
        "neg": -rng.randrange(1, 10**6),
    }[kind]


def hostile_messages(rng: random.Random, count: int):
    """Random bytes, random JSON of wrong shapes, wrong types in the right places, deep nesting."""
    for i in range(count):
        roll = i % 6
        if roll == 0:
            yield [rng.randbytes(rng.randrange(1, 200))]
        elif roll == 1:
            yield [json.dumps(_random_value(rng)).encode()]
        elif roll == 2:
            kind = rng.choice(["credit", "cancel", "assign", "hello", "run", "batch"])
            fields = {k: _random_value(rng) for k in rng.sample(list(ASSIGN) + ["n", "zz"], rng.randrange(1, 5))}
            yield [json.dumps({"v": 1, "type": kind, **fields}).encode()]
        elif roll == 3:
            yield [_deep(rng.choice([MAX_DEPTH + 1, 5000, 100_000]))]
        elif roll == 4:
            bad = rng.choice([[1], "x", 1.5, None, True, 10**20, -1, {"n": 1}])
            yield control("credit", assignment=bad, n=bad) if rng.random() < 0.5 else control("cancel", assignment=bad)
        else:  # well-formed frames, nonsense states
            state = {"version": 1, "epoch": 0, "stages": _random_value(rng)}
            yield control("assign", **{**ASSIGN, "assignment": 10**6 + i, "state": state, "credits": 0})


def test_a_flood_of_malformed_messages_leaves_an_honest_loader_exact(server):
    srv, _ = server
    ctx = zmq.Context.instance()
    stop = threading.Event()
    sent = [0]
    replies: list[dict] = []

    def flood() -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(srv.endpoint)
        rng = random.Random(21)
        try:
            for frames in hostile_messages(rng, 3000):
                if stop.is_set():
                    break
                sock.send_multipart(frames)
                sent[0] += 1
                while sock.poll(0):
                    replies.append(unpack(sock.recv_multipart())[0])
            deadline = time.monotonic() + 30
            while len(replies) < sent[0] and time.monotonic() < deadline:
                if sock.poll(200):
                    replies.append(unpack(sock.recv_multipart())[0])
        finally:
            sock.close(0)

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        with RemoteLoader([srv.endpoint], timeout=20) as loader:
            epochs = []
            for _ in range(2):
                keys = [k for batch in loader for k in batch["__key__"]]
                epochs.append(keys)
    finally:
        thread.join(60)
        stop.set()
    for keys in epochs:
        assert sorted(keys) == ALL_KEYS  # every sample once: none lost, none repeated, none foreign
    assert sent[0] == 3000
    kinds = {r["type"] for r in replies}
    # refused in the main process ("rejected"), or by a worker against its own plan ("error"); a
    # credit for an assignment this client never had is answered "lost"
    assert kinds <= {"rejected", "error", "heartbeat", "lost"}, kinds
    rejected = [r for r in replies if r["type"] == "rejected"]
    assert len(rejected) >= 2000
    assert srv.proc.poll() is None  # still serving
    with RemoteLoader([srv.endpoint], timeout=20) as loader:
        assert sorted(k for batch in loader for k in batch["__key__"]) == ALL_KEYS


def _find_shard(state: dict | None) -> dict | None:
    while state is not None and "shard" not in state:
        state = state.get("source")
    return state["shard"] if state else None


def test_a_state_naming_a_file_outside_the_configuration_is_refused(server, tmp_path):
    """A real mid-shard state whose shard URL was changed: the server refuses it (its own plan's
    shard is what it would open) and says which field differs."""
    from shardpipe.config import load_config
    from shardpipe.serve.coordination import Part, part_pipeline

    srv, root = server
    dataset, _ = load_config(root / "serve.yaml")
    pipeline = part_pipeline(dataset, Part.from_header({**ASSIGN, "parts": 1}))
    for _ in pipeline:  # to a state inside a shard
        state = pipeline.get_state()
        if _find_shard(state["stages"]) is not None:
            break
    pipeline.close()
    outside = tmp_path / "outside.tar"
    outside.write_bytes(b"\0" * 1024)
    _find_shard(state["stages"])["url"] = str(outside)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger, sock.rcvtimeo = 0, 20000
    sock.connect(srv.endpoint)
    try:
        sock.send_multipart(control("assign", **{**ASSIGN, "parts": 1, "state": state}))
        while (reply := unpack(sock.recv_multipart())[0])["type"] == "heartbeat":
            pass
        assert reply["type"] == "error"
        assert "['shard']['url']: is '" + str(outside) + "', but the plan's shard there" in reply["message"]
    finally:
        sock.close(0)


def test_a_remote_loader_refuses_a_malformed_state_before_use(server):
    srv, _ = server
    with RemoteLoader([srv.endpoint], timeout=20) as loader:
        good = loader.state_dict()
        for bad, message in [
            (
                {**good, "parts": 2, "next_part": 5, "states": [None, None], "done": [False, False]},
                "['next_part']: must be <= 1",
            ),
            ({**good, "parts": 2, "states": [None, None], "done": [0, False]}, "['done'][0]: must be true or false"),
            ({**good, "epoch": True}, "['epoch']: must be an integer, got bool True"),
            ({**good, "extra": 1}, "unknown key(s) 'extra'"),
        ]:
            with pytest.raises(ShardpipeError) as info:  # a ShardpipeError
                loader.load_state_dict(bad)
            assert type(info.value).__name__ == "StateError" and message in str(info.value)
