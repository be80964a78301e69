"""The fleet's wire format: a JSON header frame plus raw buffers, never pickle.

A message is a list of ZMQ frames. Frame 0 is a UTF-8 JSON object with at least
``{"v": WIRE_VERSION, "type": ...}``. A batch message describes its fields in
``header["fields"]``; each tensor or array field names its dtype and shape and owns the
next frame, which holds exactly ``prod(shape) * itemsize`` bytes. Lists of bytes travel
as one concatenated frame plus their lengths; everything else (keys, strings, small
metadata) is a JSON value in the header.

On receipt the tensor frames become tensors without a copy (``torch.frombuffer`` on the
frame's memory, which the tensor keeps alive). Anything that does not match the
description, or is larger than the receiver allows, is refused with ``WireError``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shardpipe.errors import ShardpipeError

WIRE_VERSION = 1
#: a header larger than this is refused before it is parsed
MAX_HEADER_BYTES = 4 << 20
#: default limit on one whole message (header and buffers)
DEFAULT_MAX_MESSAGE = 1 << 30
MAX_DIMS = 8
#: the largest one dimension may be (an empty field's other dimensions are not bounded by its frame)
MAX_DIM = 1 << 40
#: a header nests no deeper than this (a batch's state is about a dozen levels)
MAX_DEPTH = 64
#: the most characters of free text (an error message) one message carries: JSON-escaped at most 12
#: bytes a character, far below ``MAX_HEADER_BYTES``, so the trainer reads the notice, not a refusal
MAX_TEXT = 32 << 10
DTYPES = {
    name: (getattr(torch, name), np.dtype(name))
    for name in ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool")
}


class WireError(ShardpipeError):
    """A message that does not follow the wire format (or is too large); it was refused."""


def pack(header: dict[str, Any], batch: dict[str, Any] | None = None) -> list[Any]:
    """Frames for ``header`` (plus ``batch``'s fields, described in ``header["fields"]``)."""
    frames: list[Any] = [b""]
    if batch is not None:
        fields = []
        for key, value in batch.items():
            fields.append(_pack_field(key, value, frames))
        header = {**header, "fields": fields}
    frames[0] = json.dumps({"v": WIRE_VERSION, **header}, separators=(",", ":")).encode()
    return frames


def _pack_field(key: str, value: Any, frames: list[Any]) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        layout = "contiguous"
        t = value.detach().cpu()
        if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
            t, layout = t.permute(0, 2, 3, 1), "channels_last"  # send the NHWC memory as it lies
        t = t.contiguous()
        frames.append(memoryview(t.numpy()).cast("B") if t.numel() else b"")
        return {"key": key, "kind": "tensor", "dtype": _dtype_name(t.dtype), "shape": list(t.shape), "layout": layout}
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        if a.dtype.name not in DTYPES:
            raise WireError(f"field {key!r}: dtype {a.dtype} cannot be sent (allowed: {', '.join(DTYPES)})")
        frames.append(memoryview(a).cast("B") if a.size else b"")
        return {"key": key, "kind": "ndarray", "dtype": a.dtype.name, "shape": list(a.shape)}
    if isinstance(value, list) and value and all(isinstance(v, (bytes, bytearray, memoryview)) for v in value):
        frames.append(b"".join(value))
        return {"key": key, "kind": "bytes", "lengths": [len(v) for v in value]}
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise WireError(f"field {key!r} ({type(value).__name__}) cannot be sent: {e}") from None
    return {"key": key, "kind": "json", "value": value}


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise WireError(f"tensor dtype {name} cannot be sent (allowed: {', '.join(DTYPES)})")
    return name


def frame_bytes(frame: Any) -> memoryview:
    """The memory of a received frame (a ``zmq.Frame`` or any bytes-like object)."""
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf).cast("B")


def unpack(frames: Sequence[Any], max_message: int = DEFAULT_MAX_MESSAGE) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, batch)`` from received frames; ``WireError`` for anything malformed or oversized."""
    if not frames:
        raise WireError("empty message")
    sizes = [len(frame_bytes(f)) for f in frames]
    if sum(sizes) > max_message:
        raise WireError(f"message of {sum(sizes)} bytes is over the limit of {max_message} bytes")
    if sizes[0] > MAX_HEADER_BYTES:
        raise WireError(f"header of {sizes[0]} bytes is over the limit of {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(bytes(frame_bytes(frames[0])))
    except ValueError as e:  # not UTF-8, not JSON, or an integer of more than 4300 digits
        raise WireError(f"header is not JSON: {e}") from None
    except RecursionError:
        raise WireError("header nests too deeply to decode") from None
    _check_depth(header)
    if not isinstance(header, dict):
        raise WireError(f"header is a JSON {type(header).__name__}, not an object")
    if header.get("v") != WIRE_VERSION:
        raise WireError(f"wire version {header.get('v')!r} is not supported (this shardpipe speaks {WIRE_VERSION})")
    if not isinstance(header.get("type"), str):
        raise WireError("header has no message type")
    if "fields" not in header:
        if len(frames) != 1:
            raise WireError(f"{header['type']} message carries {len(frames) - 1} unexpected frames")
        return header, {}
    fields = header["fields"]
    if not isinstance(fields, list):
        raise WireError("header 'fields' is not a list")
    batch: dict[str, Any] = {}
    next_frame = 1
    for spec in fields:
        if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
            raise WireError(f"malformed field description {str(spec)[:80]!r}")
        kind = spec.get("kind")
        if kind == "json":
            batch[spec["key"]] = spec.get("value")
            continue
        if next_frame >= len(frames):
            raise WireError(f"field {spec['key']!r} has no frame (message has {len(frames)} frames)")
        buf = frame_bytes(frames[next_frame])
        next_frame += 1
        if kind in ("tensor", "ndarray"):
            batch[spec["key"]] = _unpack_array(spec, buf, kind)
        elif kind == "bytes":
            batch[spec["key"]] = _unpack_bytes(spec, buf)
        else:
            raise WireError(f"field {spec['key']!r} has unknown kind {kind!r}")
    if next_frame != len(frames):
        raise WireError(f"message has {len(frames) - next_frame} frames no field describes")
    return header, batch


def _check_depth(value: Any) -> None:
    """Refuse a header nested deeper than ``MAX_DEPTH`` (walked without recursion), before any
    code that recurses (a state check, a repr) meets it."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise WireError(f"header nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _unpack_array(spec: dict[str, Any], buf: memoryview, kind: str) -> Any:
    key, dtype, shape = spec["key"], spec.get("dtype"), spec.get("shape")
    if dtype not in DTYPES:
        raise WireError(f"field {key!r}: dtype {dtype!r} is not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape)
    ):
        raise WireError(f"field {key!r}: bad shape {str(shape)[:80]}")
    torch_dtype, np_dtype = DTYPES[dtype]
    expected = math.prod(shape) * np_dtype.itemsize
    if expected != len(buf):
        raise WireError(f"field {key!r}: shape {shape} {dtype} needs {expected} bytes, the frame has {len(buf)}")
    if not expected:  # an empty field: its other dimensions may still be too large to build
        return _empty(key, shape, torch_dtype, np_dtype, kind)
    if kind == "ndarray":
        return np.frombuffer(buf, dtype=np_dtype).reshape(shape)
    with warnings.catch_warnings():  # the frame is read-only memory; the batch is ours alone
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(buf, dtype=torch_dtype)
    if spec.get("layout") == "channels_last":
        if len(shape) != 4:
            raise WireError(f"field {key!r}: channels_last needs 4 dimensions, not {len(shape)}")
        return flat.view(shape).permute(0, 3, 1, 2)  # NCHW shape over the NHWC memory, as sent
    return flat.view(shape)


def _empty(key: str, shape: list[int], torch_dtype: torch.dtype, np_dtype: np.dtype, kind: str) -> Any:
    """An empty array or tensor of ``shape``; ``WireError`` where numpy or torch cannot build it
    (dimensions that multiply past their index type), never their own error."""
    try:
        return np.empty(shape, dtype=np_dtype) if kind == "ndarray" else torch.empty(shape, dtype=torch_dtype)
    except (ValueError, TypeError, RuntimeError, OverflowError):
        raise WireError(f"field {key!r}: empty shape {str(shape)[:80]} is too large to build") from None


def _unpack_bytes(spec: dict[str, Any], buf: memoryview) -> list[bytes]:
    lengths = spec.get("lengths")
    if not isinstance(lengths, list) or not all(isinstance(n, int) and n >= 0 for n in lengths):
        raise WireError(f"field {spec['key']!r}: bad lengths")
    if sum(lengths) != len(buf):
        raise WireError(f"field {spec['key']!r}: lengths add up to {sum(lengths)} bytes, the frame has {len(buf)}")
    out, pos = [], 0
    for n in lengths:
        out.append(bytes(buf[pos : pos + n]))
        pos += n
    return out


def clip_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, cut to ``limit`` characters with a note of its length where longer (an exception's
    text can hold a whole sample key or field list: it must not make the message oversized)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... [truncated: the message was {len(text)} characters]"


def control(kind: str, **fields: Any) -> list[bytes]:
    """A header-only message (requests, credits, heartbeats, end and error notices)."""
    return pack({"type": kind, **fields})
