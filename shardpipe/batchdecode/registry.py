"""Batch decoders by name, imported only when asked for (fsspec's ``known_implementations`` style).

Each entry maps a name to ``"module:Class"`` and the install hint shown when the
module's optional dependency is missing. Adding a backend is one entry here; nothing
imports DALI or torchvision until a user picks them.
"""

from __future__ import annotations

import logging
from typing import Any

from shardpipe.batchdecode.base import BatchDecoder
from shardpipe.registry import Entry, Registry

log = logging.getLogger("shardpipe")

BATCH_DECODERS = Registry(
    "batch decoder",
    {
        "cpu": Entry("shardpipe.batchdecode.cpu:CpuBatchDecoder", "pip install shardpipe"),
        "dali": Entry("shardpipe.batchdecode.dali:DaliBatchDecoder", "pip install shardpipe[gpu]"),
        "torchvision": Entry(
            "shardpipe.batchdecode.torchvision:TorchvisionGpuBatchDecoder",
            "pip install torchvision (the build matching your CUDA torch)",
        ),
    },
    also=("auto",),  # resolve_batch_decoder resolves it
)


def batch_decoder_class(name: str) -> type[BatchDecoder]:
    """The class registered as ``name`` (imported now)."""
    return BATCH_DECODERS.load(name)  # type: ignore[no-any-return]


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
    if decoder == "auto":
        reason = gpu_unavailable_reason(options.get("device_id", 0))
        if reason is not None:
            _announce_fallback(reason)
        decoder, device = ("dali", "gpu") if reason is None else ("cpu", device)
    return batch_decoder_class(decoder).from_options(device=device, cpu_decoder=cpu_decoder, **options)


def gpu_unavailable_reason(device_id: int = 0) -> str | None:
    """Why DALI GPU decode cannot run here (``None`` when it can)."""
    from shardpipe.batchdecode import dali

    try:
        dali.import_dali()
    except ImportError:
        return f"NVIDIA DALI is not installed ({BATCH_DECODERS.entry('dali').install})"
    return dali.cuda_unavailable_reason(device_id)
