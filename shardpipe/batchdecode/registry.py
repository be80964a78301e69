"""Batch decoders by name, imported only when asked for (fsspec's ``known_implementations`` style).

Each entry maps a name to ``"module:Class"`` and the install hint shown when the
module's optional dependency is missing. Adding a backend is one entry here; nothing
imports DALI or torchvision until a user picks them.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from shardpipe.batchdecode.base import BatchDecoder

log = logging.getLogger("shardpipe")


@dataclass(frozen=True)
class Entry:
    target: str  #: "module:Class"
    install: str  #: what to install when the import fails


BATCH_DECODERS: dict[str, Entry] = {
    "cpu": Entry("shardpipe.batchdecode.cpu:CpuBatchDecoder", "pip install shardpipe"),
    "dali": Entry("shardpipe.batchdecode.dali:DaliBatchDecoder", "pip install shardpipe[gpu]"),
    "torchvision": Entry(
        "shardpipe.batchdecode.torchvision:TorchvisionGpuBatchDecoder",
        "pip install torchvision (the build matching your CUDA torch)",
    ),
}

#: options only DALI understands; the other decoders are built without them
_DALI_ONLY = ("device_id", "batch_size", "decoder_options")


def batch_decoder_class(name: str) -> type[BatchDecoder]:
    """The class registered as ``name`` (imported now)."""
    if name not in BATCH_DECODERS:
        choices = ", ".join(repr(n) for n in ("auto", *BATCH_DECODERS))
        raise ValueError(f"batch decoder must be one of {choices}, not {name!r}")
    entry = BATCH_DECODERS[name]
    module, _, attr = entry.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ImportError(f"batch decoder {name!r} is not available ({e}): {entry.install}") from e
    return cls  # type: ignore[no-any-return]


_announced = False


def _announce_fallback(reason: str) -> None:
    """Say once per process that GPU batch decode is not in use, and why."""
    global _announced
    if not _announced:
        _announced = True
        log.warning("GPU batch decode unavailable (%s): decoding batches on CPU threads instead", reason)


def resolve_batch_decoder(
    decoder: str = "auto", *, device: str | None = None, cpu_decoder: str = "auto", **options: Any
) -> BatchDecoder:
    """Pick a batch decoder: ``"auto"`` (DALI on the GPU if possible, else CPU) or a name of
    ``BATCH_DECODERS`` (``"dali"``, ``"torchvision"``, ``"cpu"``). ``options`` go to the
    decoder (size, train, dtype, ...); ``cpu_decoder`` names the image backend of the CPU
    path (``get_decoder`` name).

    ``"auto"`` never fails for lack of a GPU or of DALI: it logs once and uses the CPU.
    ``"dali"`` with ``device="gpu"`` (the default) raises if there is no usable GPU.
    """
    others = {k: v for k, v in options.items() if k not in _DALI_ONLY}
    if decoder == "auto":
        reason = gpu_unavailable_reason(options.get("device_id", 0))
        if reason is not None:
            _announce_fallback(reason)
        decoder, device = ("dali", "gpu") if reason is None else ("cpu", device)
    cls = batch_decoder_class(decoder)
    if decoder == "cpu":
        return cls(decoder=cpu_decoder, **others)
    if decoder == "dali":
        return cls(device=device or "gpu", **options)
    others.pop("num_threads", None)  # torchvision decodes in one batched call
    return cls(**others)


def gpu_unavailable_reason(device_id: int = 0) -> str | None:
    """Why DALI GPU decode cannot run here (``None`` when it can)."""
    from shardpipe.batchdecode import dali

    try:
        dali.import_dali()
    except ImportError:
        return f"NVIDIA DALI is not installed ({BATCH_DECODERS['dali'].install})"
    return dali.cuda_unavailable_reason(device_id)
