"""Batch decode with ``torchvision.io.decode_jpeg(device="cuda")`` (nvJPEG through torchvision).

Optional and lazy: used only when torchvision with CUDA support is importable; shardpipe
never depends on torchvision. Decode runs batched on the GPU; crops and resizes run per
image with torch ops on the GPU (full decode, then crop: no region-of-interest decode, so
DALI is faster for random-resized crops). Crop boxes come from shardpipe's own
``random_resized_crop_box`` with per-key generators, as in the CPU path. Images that are
not JPEG are decoded on the CPU by shardpipe's PIL decoder and moved to the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shardpipe.batchdecode.base import BatchDecoder, Encoded, as_array
from shardpipe.batchdecode.registry import BATCH_DECODERS

INSTALL_HINT = BATCH_DECODERS.entry("torchvision").install


def import_torchvision_io() -> Any:
    """Import ``torchvision.io`` and check that a GPU is usable, with clear errors."""
    try:
        import torchvision.io as tvio
    except ImportError as e:
        raise ImportError(f"the torchvision GPU decoder needs torchvision: {INSTALL_HINT} ({e})") from e
    if not torch.cuda.is_available():
        raise RuntimeError(
            "the torchvision GPU decoder needs a usable NVIDIA GPU, but torch.cuda.is_available() "
            "is False; use resolve_batch_decoder('cpu') or ('auto') instead"
        )
    return tvio


class TorchvisionGpuBatchDecoder(BatchDecoder):
    """Batched nvJPEG decode via torchvision, then crop/resize/flip with torch on the GPU."""

    name = "torchvision"

    @classmethod
    def from_options(cls, *, device: str | None, cpu_decoder: str, **options: Any) -> BatchDecoder:
        options.pop("num_threads", None)  # one batched call: no threads to size
        return super().from_options(device=device, cpu_decoder=cpu_decoder, **options)

    def __init__(self, size: int | tuple[int, int] = 224, *, device: str = "cuda", **options: Any):
        super().__init__(size, **options)
        self._io = import_torchvision_io()
        self.device = torch.device(device)

    def _decode_all(self, arrays: list[np.ndarray], keys: Sequence[str] | None) -> list[torch.Tensor | None]:
        """Decode every image (``None`` for bad ones, reported through on_error)."""
        from shardpipe.image.decoders import get_decoder
        from shardpipe.image.decoders.jpeg import read_header
        from shardpipe.image.decoders.registry import check_scans, check_size

        rgb = self._io.ImageReadMode.RGB
        out: list[torch.Tensor | None] = [None] * len(arrays)
        jpeg = []
        for i, a in enumerate(arrays):
            if a[:3].tobytes() != b"\xff\xd8\xff":
                continue
            try:  # the limits of the CPU decoders hold for nvJPEG too
                data = a.tobytes()
                check_scans(data)
                try:
                    header = read_header(data)
                except ValueError:
                    header = None  # nvJPEG reports the damage
                if header is not None:
                    check_size(header.width, header.height)
            except Exception as e:  # noqa: BLE001 - this image's problem
                self._bad(i, keys, f"{type(e).__name__}: {e}")
                continue
            jpeg.append(i)
        inputs = [torch.from_numpy(arrays[i].copy()) for i in jpeg]
        try:
            for i, img in zip(jpeg, self._io.decode_jpeg(inputs, mode=rgb, device=self.device)):
                out[i] = img
        except RuntimeError:  # one bad JPEG fails the batched call: decode one by one
            for i, data in zip(jpeg, inputs):
                try:
                    out[i] = self._io.decode_jpeg(data, mode=rgb, device=self.device)
                except RuntimeError as e:
                    self._bad(i, keys, f"torchvision: {e}")
        pil = get_decoder("pil")
        for i in sorted(set(range(len(arrays))) - set(jpeg)):
            try:
                out[i] = torch.from_numpy(pil.decode(arrays[i].tobytes())).permute(2, 0, 1).to(self.device)
            except Exception as e:  # noqa: BLE001 - any decoder failure is this image's problem
                self._bad(i, keys, f"{type(e).__name__}: {e}")
        return out

    def _resize(self, img: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return x[0].round_().clamp_(0, 255).to(torch.uint8)

    def _transform(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        from shardpipe.augment import random_resized_crop_box

        th, tw = self.size
        _, h, w = img.shape
        if self.train:
            top, left, ch, cw = random_resized_crop_box(h, w, rng, self.scale, self.ratio)
            img = self._resize(img[:, top : top + ch, left : left + cw], th, tw)
            return img.flip(-1) if rng.random() < self.flip_p else img
        short = self.resize_short
        nh, nw = (short, max(1, round(w * short / h))) if h <= w else (max(1, round(h * short / w)), short)
        img = self._resize(img, nh, nw)
        if nh < th or nw < tw:  # zero-pad, as CenterCrop does
            dh, dw = max(th - nh, 0), max(tw - nw, 0)
            img = F.pad(img, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
            nh, nw = img.shape[1:]
        top, left = round((nh - th) / 2), round((nw - tw) / 2)
        return img[:, top : top + th, left : left + tw]

    def decode(self, encoded: Sequence[Encoded], keys: Sequence[str] | None = None) -> tuple[torch.Tensor, list[int]]:
        decoded = self._decode_all([as_array(x) for x in encoded], keys)
        kept = [i for i, img in enumerate(decoded) if img is not None]
        images = [img for img in decoded if img is not None]
        if not kept:
            return self._empty(self.device), kept
        rngs = self.rngs(None if keys is None else [keys[i] for i in kept], len(kept))
        out = torch.stack([self._transform(img, r) for img, r in zip(images, rngs)])
        return self.finish(out), kept
