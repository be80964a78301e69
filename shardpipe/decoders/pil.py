"""The PIL decoder: handles every format Pillow reads; the always-available fallback."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .registry import MAX_PIXELS

Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a clear error


def open_image(data: bytes) -> Image.Image:
    """Open ``data`` with PIL, refusing decompression bombs before decoding pixels."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ValueError(f"image of {w}x{h} pixels exceeds the limit of {MAX_PIXELS} pixels")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (L, P, CMYK, RGBA, I;16, ...) to RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (0, 0, 0))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


class PilDecoder:
    """Decode with Pillow (which bundles libjpeg-turbo, but runs its pipeline in Python)."""

    name = "pil"

    def decode(self, data: bytes) -> np.ndarray:
        img = open_image(data)
        return np.asarray(to_rgb(img))

    def decode_pil(self, data: bytes) -> Image.Image:
        return to_rgb(open_image(data))

    def size(self, data: bytes) -> tuple[int, int]:
        return open_image(data).size
