"""A lazy registry of image decoders: a name maps to ``module:Class`` and an install hint.

Backends import their library only when first asked for, so a missing optional package
costs nothing until used, and then fails with the pip command that fixes it.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

#: Largest image (in pixels) any backend will decode; beyond it, a DecodeError.
MAX_PIXELS = 100_000_000


@runtime_checkable
class ImageDecoder(Protocol):
    """What a decoder backend provides. All outputs are RGB uint8 HWC arrays."""

    name: str

    def decode(self, data: bytes) -> np.ndarray:
        """Decode a whole image to RGB uint8 HWC."""
        ...

    def size(self, data: bytes) -> tuple[int, int]:
        """Return ``(width, height)`` from the header alone, without decoding pixels."""
        ...


@dataclass(frozen=True)
class _Entry:
    target: str  # "module:Class"
    install: str  # pip hint


_REGISTRY: dict[str, _Entry] = {}
_INSTANCES: dict[str, ImageDecoder] = {}
_LOCK = threading.Lock()
#: Preference order for decoder="auto": fastest first (see BENCHMARKS.md).
AUTO_ORDER: list[str] = []


def register_decoder(name: str, target: str, install: str, *, auto_rank: int | None = None) -> None:
    """Register ``name`` -> ``"module:Class"``; ``auto_rank`` places it in the auto order."""
    _REGISTRY[name] = _Entry(target, install)
    if auto_rank is not None and name not in AUTO_ORDER:
        AUTO_ORDER.insert(min(auto_rank, len(AUTO_ORDER)), name)


def available_decoders() -> list[str]:
    """Names of the registered decoders whose libraries import here."""
    out = []
    for name in _REGISTRY:
        try:
            get_decoder(name)
        except ImportError:
            continue
        out.append(name)
    return out


def get_decoder(name: str = "auto") -> ImageDecoder:
    """Return the (shared, thread-safe) decoder called ``name``; ``auto`` = fastest installed."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            try:
                return get_decoder(candidate)
            except ImportError:
                continue
        return get_decoder("pil")
    with _LOCK:
        if name in _INSTANCES:
            return _INSTANCES[name]
        entry = _REGISTRY.get(name)
        if entry is None:
            raise ValueError(f"unknown decoder {name!r}; registered: {sorted(_REGISTRY)}")
        module_name, cls_name = entry.target.split(":")
        try:
            module = importlib.import_module(module_name)
            decoder = getattr(module, cls_name)()
        except ImportError as e:
            raise ImportError(f"decoder {name!r} needs an optional package: {entry.install} ({e})") from e
        _INSTANCES[name] = decoder
        return decoder


register_decoder("pil", "shardpipe.decoders.pil:PilDecoder", "pip install pillow")
