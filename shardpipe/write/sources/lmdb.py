"""LMDB stores as a source for ``shardpipe write`` (see ``shardpipe.write.sources``)."""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from typing import Any

from shardpipe.format.sample import control_character
from shardpipe.write.sources.base import (
    IMAGE_SUFFIXES,
    Loaded,
    Record,
    Scan,
    Source,
    ValueDecoder,
    make_key,
    strip_suffix,
    suffix_of,
    unique_keys,
)
from shardpipe.write.sources.registry import SOURCES, is_lmdb


def resolve_callable(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj


def resolve_decoder(spec: str) -> ValueDecoder:
    """The LMDB value decoder ``"module:function"`` names; ``ValueError`` naming ``spec`` when it cannot be used."""
    try:
        return resolve_callable(spec)
    except Exception as e:  # a missing module or attribute, or the module failing as it is imported
        raise ValueError(f"LMDB value decoder {spec!r} cannot be used: {type(e).__name__}: {e}") from None


_LMDB_LOCK = threading.Lock()
#: what :func:`~shardpipe.write.sources.registry.is_lmdb` accepts, for messages
LMDB_LAYOUT = "an LMDB store is a folder holding data.mdb, or an LMDB data file"


def lmdb_key(raw: bytes) -> tuple[str, str]:
    """The sample key of LMDB key ``raw`` and the name messages give it.

    A text key (UTF-8 without control characters) is read as a path: ``train/0001.jpg`` is
    ``train/0001``. Any other key is binary (packed integers, as many LMDB image data sets use:
    ``struct.pack(">I", 5)``): its sample key is ``0x`` and its bytes in hex (``0x00000005``),
    unique and the same in every run, and messages name it as Python writes the bytes.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"0x{raw.hex()}", repr(raw)
    if control_character(text) is not None:
        return f"0x{raw.hex()}", repr(raw)
    return make_key(strip_suffix(text) if suffix_of(text) in IMAGE_SUFFIXES else text), text


class LmdbSource(Source):
    """Every entry of an LMDB store, in key order; the key (minus an image extension) is the sample key,
    or, for a binary key, ``0x`` and its bytes in hex (:func:`lmdb_key`).

    Values are raw image bytes by default. ``decoder`` turns another value format into
    ``image bytes``, ``(image bytes, label)`` or ``(image bytes, label, extra dict)``; it
    may be a callable or a ``"module:function"`` string (imported in each worker).
    """

    kind = "lmdb"
    path_options = ("value_decoder",)

    def __init__(self, path: str | os.PathLike[str], value_decoder: ValueDecoder | str | None = None):
        self.path = os.fspath(path)
        self.value_decoder = value_decoder
        self._env: Any = None
        # resolved now, so that a mistyped "module:function" fails the write before it starts
        self._decode: ValueDecoder | None = self._resolved()

    def _resolved(self) -> ValueDecoder | None:
        """The value decoder, a ``"module:function"`` name resolved (``ValueError`` naming it if it cannot be)."""
        spec = self.value_decoder
        return resolve_decoder(spec) if isinstance(spec, str) else spec

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None, "_decode": None}

    def _open(self) -> Any:
        with _LMDB_LOCK:  # reader threads share one environment per process
            return self._open_locked()

    def _open_locked(self) -> Any:
        if self._env is None:
            try:
                import lmdb
            except ImportError as e:
                raise ImportError(f"LMDB sources need the lmdb package: {SOURCES.entry('lmdb').install} ({e})") from e

            if not os.path.exists(self.path):
                raise FileNotFoundError(f"LMDB store not found: {self.path}")
            if not is_lmdb(self.path):
                raise ValueError(f"not an LMDB store: {self.path} ({LMDB_LAYOUT})")
            subdir = os.path.isdir(self.path)
            try:
                self._env = lmdb.open(self.path, subdir=subdir, readonly=True, lock=False, max_readers=512)
            except lmdb.Error as e:
                raise ValueError(f"cannot open the LMDB store {self.path}: {e}") from None
        return self._env

    def scan(self) -> Scan:
        env = self._open()
        records = []
        with env.begin(buffers=False) as txn:
            for raw in txn.cursor().iternext(keys=True, values=False):
                key, name = lmdb_key(bytes(raw))
                records.append(Record(key, bytes(raw), None, None, name))
        return Scan(unique_keys(records))

    def load(self, record: Record) -> Loaded:
        env = self._open()
        with env.begin(buffers=False) as txn:
            value = txn.get(record.ref)
        if value is None:
            raise KeyError(f"LMDB key {record.name!r} vanished")
        if self.value_decoder is None:
            return Loaded(value, None, None)
        if self._decode is None:  # in a worker process: __getstate__ dropped it
            self._decode = self._resolved()
        out = self._decode(value)
        if isinstance(out, (bytes, bytearray, memoryview)):
            return Loaded(bytes(out), None, None)
        if isinstance(out, tuple) and len(out) in (2, 3):
            data, label = out[0], out[1]
            extra = out[2] if len(out) == 3 else None
            return Loaded(bytes(data), None if label is None else int(label), extra)
        raise TypeError(
            f"LMDB value decoder returned {type(out).__name__}; expected image bytes, "
            "(bytes, label) or (bytes, label, extra)"
        )

    def describe(self) -> dict[str, Any]:
        dec = self.value_decoder
        name = dec if isinstance(dec, str) or dec is None else f"{dec.__module__}:{dec.__qualname__}"
        return {"type": self.kind, "path": self.path, "decoder": name}
