"""The fleet's wire format: round trips without pickle or copies, and malformed messages refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

zmq = pytest.importorskip("zmq")

from shardpipe.serve.wire import WireError, control, pack, unpack  # noqa: E402


def _batch() -> dict:
    images = torch.randint(0, 256, (3, 3, 8, 6), dtype=torch.uint8)
    return {
        "__key__": ["a", "b", "c"],
        "jpg": images,
        "nhwc": images.contiguous(memory_format=torch.channels_last),
        "cls": torch.tensor([1, 2, 3]),
        "__pad__": torch.tensor([False, True, False]),
        "depth": np.arange(6, dtype=np.float32).reshape(2, 3),
        "raw": [b"x", b"", b"yz"],
        "json": [{"i": 1}, None, {"i": 3}],
        "empty": torch.zeros((0, 4), dtype=torch.float32),
    }


def _over_zmq(frames: list) -> list:
    """Send frames through a real inproc PAIR and receive them without copies, as the loader does."""
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wire-test")
    b.connect("inproc://wire-test")
    try:
        a.send_multipart(frames, copy=False)
        return b.recv_multipart(copy=False)
    finally:
        a.close(0)
        b.close(0)


def test_round_trip_is_exact_and_zero_copy():
    batch = _batch()
    frames = _over_zmq(pack({"type": "batch", "state": {"epoch": 2}}, batch))
    header, got = unpack(frames)
    assert header["type"] == "batch" and header["state"] == {"epoch": 2} and header["v"] == 1
    assert set(got) == set(batch)
    for key in ("jpg", "nhwc", "cls", "__pad__", "empty"):
        assert got[key].dtype == batch[key].dtype and torch.equal(got[key], batch[key]), key
    assert got["nhwc"].is_contiguous(memory_format=torch.channels_last)  # the layout travels too
    np.testing.assert_array_equal(got["depth"], batch["depth"])
    assert got["raw"] == batch["raw"] and got["json"] == batch["json"] and got["__key__"] == batch["__key__"]
    # the image tensor is a view of the received frame's memory: no copy was made
    frame = frames[1 + [f["key"] for f in header["fields"] if f["kind"] != "json"].index("jpg")]
    assert got["jpg"].data_ptr() == np.frombuffer(frame.buffer, dtype=np.uint8).ctypes.data


def _header(**over) -> bytes:
    h = {"v": 1, "type": "batch", "fields": [{"key": "x", "kind": "tensor", "dtype": "uint8", "shape": [2, 2]}]}
    h.update(over)
    return json.dumps(h).encode()


@pytest.mark.parametrize(
    "frames, message",
    [
        ([], "empty message"),
        ([b"\xff\xfe"], "header is not JSON"),
        ([b"[1, 2]"], "header is a JSON list"),
        ([json.dumps({"v": 9, "type": "batch"}).encode()], "wire version 9 is not supported"),
        ([json.dumps({"v": 1}).encode()], "no message type"),
        ([_header()], "field 'x' has no frame"),
        ([_header(), b"abc"], r"shape \[2, 2\] uint8 needs 4 bytes, the frame has 3"),
        ([_header(), b"abcd", b"more"], "1 frames no field describes"),
        ([_header(fields=[{"key": "x", "kind": "tensor", "dtype": "object", "shape": [1]}]), b"a"], "not allowed"),
        ([_header(fields=[{"key": "x", "kind": "tensor", "dtype": "uint8", "shape": [-1]}]), b"a"], "bad shape"),
        ([_header(fields=[{"key": "x", "kind": "pickle"}]), b"a"], "unknown kind 'pickle'"),
        ([_header(fields=[{"key": "x", "kind": "bytes", "lengths": [5]}]), b"abc"], "lengths add up to 5"),
        ([json.dumps({"v": 1, "type": "heartbeat"}).encode(), b"x"], "1 unexpected frames"),
    ],
)
def test_malformed_messages_are_refused(frames, message):
    with pytest.raises(WireError, match=message):
        unpack(frames)


def test_oversized_messages_are_refused():
    frames = pack({"type": "batch"}, {"x": torch.zeros(1000, dtype=torch.uint8)})
    with pytest.raises(WireError, match=r"message of \d+ bytes is over the limit of 512 bytes"):
        unpack(frames, max_message=512)
    with pytest.raises(WireError, match="header of .* bytes is over the limit"):
        unpack([b" " * (5 << 20)])


def test_values_that_cannot_travel_are_refused_at_the_sender():
    with pytest.raises(WireError, match=r"field 'obj' \(object\) cannot be sent"):
        pack({"type": "batch"}, {"obj": object()})
    with pytest.raises(WireError, match="dtype complex64 cannot be sent"):
        pack({"type": "batch"}, {"z": torch.zeros(2, dtype=torch.complex64)})
    assert unpack(control("credit", assignment=3, n=1))[0] == {"v": 1, "type": "credit", "assignment": 3, "n": 1}
