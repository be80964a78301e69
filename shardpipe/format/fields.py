"""Field codecs: how a sample's non-image fields are stored as bytes and read back.

The one place that knows which extensions hold integers, JSON or text. The writer
encodes with :func:`encode_field`, the decode stage and ``shardpipe verify`` read with
:func:`decode_field`. Pickled members (``.pyd``, ``.pickle``, ``.pth``) are *never*
unpickled unless the caller passes ``allow_pickle=True``: unpickling runs the data's code.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

#: extensions holding an ASCII integer (class labels, indices)
INT_EXTENSIONS = frozenset({"cls", "cls2", "index", "id"})
#: extensions holding pickled objects (read only with allow_pickle=True)
PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth"})


def last_extension(ext: str) -> str:
    """The part of a field name that says its type: ``"seg.png"`` -> ``"png"``."""
    return ext.rpartition(".")[2]


def encode_field(ext: str, value: Any) -> bytes:
    """Serialise one field by its extension: bytes pass through untouched."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    last = last_extension(ext)
    if last in INT_EXTENSIONS and isinstance(value, int):
        return str(value).encode()
    if last == "json":
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int):
        return str(value).encode()
    raise TypeError(
        f"cannot write field {ext!r} of type {type(value).__name__}: pass bytes, str, int, or a dict/list for .json"
    )


def decode_field(ext: str, data: bytes, allow_pickle: bool = False) -> Any:
    """Decode one non-image field by its extension."""
    last = last_extension(ext)
    if last in INT_EXTENSIONS:
        return int(data.decode("ascii"))  # the format: an ASCII integer (whitespace allowed)
    if last == "json":
        return json.loads(data)
    if last == "txt":
        return data.decode("utf-8")
    if last in PICKLE_EXTENSIONS and allow_pickle:
        if last == "pth":
            import io

            import torch

            return torch.load(io.BytesIO(data), weights_only=True)
        return pickle.loads(data)
    return data
