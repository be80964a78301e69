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


def test_the_header_frame_is_compact_json_with_the_version_first():
    frames = pack({"type": "batch", "state": {"a": [1, 2]}}, {"k": ["x"], "raw": [b"ab", b"c"]})
    assert bytes(frames[0]) == (
        b'{"v":1,"type":"batch","state":{"a":[1,2]},"fields":'
        b'[{"key":"k","kind":"json","value":["x"]},{"key":"raw","kind":"bytes","lengths":[2,1]}]}'
    )
    assert [bytes(f) for f in frames[1:]] == [b"abc"]
    assert control("end", n=2) == [b'{"v":1,"type":"end","n":2}']


def test_field_descriptions_name_dtype_shape_and_layout():
    t = torch.arange(24, dtype=torch.int16).reshape(2, 3, 4)
    nhwc = (
        torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    )
    frames = pack({"type": "batch"}, {"t": t.transpose(1, 2), "c": nhwc, "a": np.zeros((0, 2), np.int32), "e": []})
    fields = json.loads(frames[0])["fields"]
    assert fields == [
        {"key": "t", "kind": "tensor", "dtype": "int16", "shape": [2, 4, 3], "layout": "contiguous"},
        {"key": "c", "kind": "tensor", "dtype": "uint8", "shape": [2, 2, 2, 3], "layout": "channels_last"},
        {"key": "a", "kind": "ndarray", "dtype": "int32", "shape": [0, 2]},
        {"key": "e", "kind": "json", "value": []},
    ]
    assert bytes(frames[1]) == t.transpose(1, 2).contiguous().numpy().tobytes()  # the transposed values, in order
    assert bytes(frames[2]) == nhwc.permute(0, 2, 3, 1).contiguous().numpy().tobytes()  # NHWC memory as it lies
    assert bytes(frames[3]) == b""
    _, got = unpack(frames)
    assert torch.equal(got["t"], t.transpose(1, 2)) and got["t"].is_contiguous()
    assert torch.equal(got["c"], nhwc) and got["c"].shape == (2, 3, 2, 2)
    assert got["a"].shape == (0, 2) and got["a"].dtype == np.int32 and got["e"] == []


def test_a_plain_4d_tensor_and_an_empty_tensor_travel_as_contiguous():
    plain = torch.arange(16, dtype=torch.float32).reshape(1, 2, 2, 4)
    empty = torch.zeros((0, 3, 2, 2), dtype=torch.uint8)
    grey = torch.arange(18, dtype=torch.uint8).reshape(2, 1, 3, 3)  # contiguous in both layouts: sent as is
    frames = pack({"type": "batch"}, {"p": plain, "e": empty, "g": grey})
    assert [f["layout"] for f in json.loads(frames[0])["fields"]] == ["contiguous"] * 3
    assert json.loads(frames[0])["fields"][2]["shape"] == [2, 1, 3, 3]
    _, got = unpack(frames)
    assert torch.equal(got["g"], grey) and got["g"].stride() == grey.stride()
    assert torch.equal(got["p"], plain) and got["p"].is_contiguous()
    assert got["e"].shape == (0, 3, 2, 2) and got["e"].dtype == torch.uint8


def test_numpy_arrays_come_back_as_arrays_of_the_same_bytes():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]  # not contiguous: sent as its values
    frames = pack({"type": "batch"}, {"a": a, "b": np.array([True, False])})
    _, got = unpack(frames)
    assert isinstance(got["a"], np.ndarray) and got["a"].dtype == np.float64
    np.testing.assert_array_equal(got["a"], a)
    assert got["b"].tolist() == [True, False] and got["b"].dtype == np.bool_
    with pytest.raises(WireError, match=r"^field 's': dtype <U1 cannot be sent \(allowed: uint8, int8, int16, "):
        pack({"type": "batch"}, {"s": np.array(["x"])})


def _one(spec: dict, *buffers: bytes) -> list:
    return [json.dumps({"v": 1, "type": "batch", "fields": [{"key": "x", **spec}]}).encode(), *buffers]


@pytest.mark.parametrize(
    "frames, message",
    [
        ([json.dumps({"v": 1, "type": "batch", "fields": {"x": 1}}).encode()], "header 'fields' is not a list"),
        ([json.dumps({"v": 1, "type": "batch", "fields": [7]}).encode()], "malformed field description '7'"),
        ([json.dumps({"v": 1, "type": "batch", "fields": [{"key": 3}]}).encode()], "malformed field description"),
        ([json.dumps({"v": 1, "type": 5}).encode()], "header has no message type"),
        ([json.dumps({"type": "batch"}).encode()], "wire version None is not supported"),
        (_one({"kind": "tensor", "dtype": "uint8", "shape": [1] * 9}, b"a"), r"field 'x': bad shape \[1, 1, 1"),
        (_one({"kind": "tensor", "dtype": "uint8", "shape": [True]}, b"a"), r"field 'x': bad shape \[True\]"),
        (_one({"kind": "tensor", "dtype": "uint8", "shape": [1.0]}, b"a"), r"field 'x': bad shape \[1.0\]"),
        (_one({"kind": "tensor", "dtype": "uint8", "shape": "1"}, b"a"), "field 'x': bad shape 1"),
        (_one({"kind": "ndarray", "dtype": "uint8", "shape": [2]}, b"a"), r"needs 2 bytes, the frame has 1"),
        (_one({"kind": "tensor", "dtype": "int32", "shape": [2]}, b"abcd"), r"\[2\] int32 needs 8 bytes"),
        (_one({"kind": "tensor", "dtype": "uint8", "shape": [2, 2], "layout": "channels_last"}, b"abcd"),
         "field 'x': channels_last needs 4 dimensions, not 2"),
        (_one({"kind": "bytes", "lengths": 3}, b"abc"), "field 'x': bad lengths"),
        (_one({"kind": "bytes", "lengths": [4, -1]}, b"abc"), "field 'x': bad lengths"),
        (_one({"kind": "bytes", "lengths": [1, "2"]}, b"abc"), "field 'x': bad lengths"),
        (_one({"kind": "bytes", "lengths": [1, 1]}, b"abc"), "lengths add up to 2 bytes, the frame has 3"),
    ],
)  # fmt: skip
def test_malformed_fields_are_refused_by_message(frames, message):
    with pytest.raises(WireError, match=message):
        unpack(frames)


def test_eight_dimensions_and_zero_lengths_are_fine():
    _, got = unpack(_one({"kind": "tensor", "dtype": "uint8", "shape": [1] * 7 + [2]}, b"ab"))
    assert got["x"].shape == (1,) * 7 + (2,) and got["x"].flatten().tolist() == [97, 98]
    _, got = unpack(_one({"kind": "bytes", "lengths": [0, 2, 0, 1]}, b"abc"))
    assert got["x"] == [b"", b"ab", b"", b"c"]
    _, got = unpack(_one({"kind": "json"}))
    assert got == {"x": None}


def test_size_limits_are_inclusive():
    frames = pack({"type": "batch"}, {"x": torch.zeros(100, dtype=torch.uint8)})
    total = sum(len(bytes(f)) for f in frames)
    assert unpack(frames, max_message=total)[1]["x"].shape == (100,)
    with pytest.raises(WireError, match=rf"^message of {total} bytes is over the limit of {total - 1} bytes$"):
        unpack(frames, max_message=total - 1)
    from shardpipe.serve.wire import MAX_HEADER_BYTES

    head = b'{"v":1,"type":"x","pad":"' + b"p" * (MAX_HEADER_BYTES - 27) + b'"}'
    assert len(head) == MAX_HEADER_BYTES and unpack([head])[0]["type"] == "x"
    with pytest.raises(
        WireError, match=rf"^header of {MAX_HEADER_BYTES + 1} bytes is over the limit of {MAX_HEADER_BYTES} bytes$"
    ):
        unpack([head[:-2] + b'p"}'])


def test_header_depth_is_bounded_before_anything_recurses():
    from shardpipe.serve.wire import MAX_DEPTH

    def nested(depth: int, inner: str = "[]") -> bytes:
        # depth levels of lists under the header object, which is level 0
        return ('{"v":1,"type":"x","d":' + "[" * (depth - 1) + inner + "]" * (depth - 1) + "}").encode()

    assert unpack([nested(MAX_DEPTH)])[0]["type"] == "x"
    with pytest.raises(WireError, match=rf"^header nests deeper than {MAX_DEPTH} levels$"):
        unpack([nested(MAX_DEPTH + 1)])
    deep = ('{"v":1,"type":"x","d":' + '{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH + "}").encode()
    with pytest.raises(WireError, match=rf"^header nests deeper than {MAX_DEPTH} levels$"):
        unpack([deep])
    with pytest.raises(WireError, match="^header nests too deeply to decode$"):
        unpack([b"[" * 100_000 + b"]" * 100_000])


def test_frames_may_be_any_bytes_like_object():
    frames = pack({"type": "batch"}, {"x": torch.arange(4, dtype=torch.uint8)})
    header, got = unpack([bytearray(frames[0]), memoryview(b"\x05\x06\x07\x08")])
    assert header["fields"][0]["key"] == "x" and got["x"].tolist() == [5, 6, 7, 8]


def test_long_text_is_clipped_saying_its_length_and_fits_a_header():
    from shardpipe.serve.wire import MAX_HEADER_BYTES, MAX_TEXT, clip_text

    assert clip_text("é" * MAX_TEXT) == "é" * MAX_TEXT  # up to the limit: as it is
    clipped = clip_text("x" * (MAX_TEXT + 1))
    assert clipped == "x" * MAX_TEXT + f" ... [truncated: the message was {MAX_TEXT + 1} characters]"
    worst = control("error", assignment=1, message=clip_text("\U0001f600" * 10**6))  # 12 JSON bytes each
    assert MAX_TEXT * 12 < len(worst[0]) < MAX_HEADER_BYTES // 4
