"""Turn uint8 image batches into normalised float tensors on the device they live on.

Loaders hand over uint8 NCHW batches (4x less to copy to the GPU than float32); the
training loop converts them after the copy, where it is cheap:

    batch = batch.to("cuda", non_blocking=True)
    x = normalize(batch, dtype=torch.half, channels_last=True)

``(x / 255 - mean) / std`` is folded into one multiply-add per element.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_LOCK = threading.Lock()


def _scale_shift(
    mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale = 1 / (255 std)`` and ``shift = -mean / std``, shaped (1, C, 1, 1)."""
    key = (tuple(mean), tuple(std), channels, str(device), dtype)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    if not all(math.isfinite(v) for v in (*mean, *std)):  # NaN slips past the sign test: NaN batches
        raise ValueError(f"mean and std must be finite, got {tuple(mean)} and {tuple(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(dtype).view(1, channels, 1, 1).to(device)
    shift = (-m / s).to(dtype).view(1, channels, 1, 1).to(device)
    with _LOCK:
        _CACHE[key] = (scale, shift)
    return scale, shift


def normalize(
    batch: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """``(batch / 255 - mean) / std`` as ``dtype``, on ``batch``'s device.

    ``batch`` is uint8 NCHW (or CHW for one image). ``channels_last=True`` returns the
    NHWC memory format (same NCHW shape) that convolutions on tensor cores prefer.
    On CPU, half and bfloat16 are computed in float32 and rounded once.
    """
    if batch.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 tensor, got {batch.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point type, got {dtype}")
    single = batch.dim() == 3
    if single:
        batch = batch.unsqueeze(0)
    if batch.dim() != 4:
        raise ValueError(f"expected an NCHW (or CHW) batch, got shape {tuple(batch.shape)}")
    # half is too coarse for the multiply-add on CPU; compute in float32 there
    work = dtype if batch.is_cuda or dtype in (torch.float32, torch.float64) else torch.float32
    scale, shift = _scale_shift(mean, std, batch.shape[1], batch.device, work)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = batch.to(dtype=work, memory_format=fmt).mul_(scale).add_(shift)  # in place keeps the format
    if x.dtype != dtype:
        x = x.to(dtype=dtype, memory_format=fmt)
    return x[0] if single else x
