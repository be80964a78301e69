"""Geometric transforms on RGB uint8 HWC arrays: crops, resizes, flips.

``RandomResizedCrop.get_params`` draws crop boxes with the same distribution as
torchvision's RandomResizedCrop (area scale and log-uniform aspect ratio, ten tries,
then a centre crop), so that models trained on either see the same statistics.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .base import Transform

Box = tuple[int, int, int, int]  # top, left, height, width


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize (PIL's, which filters over the whole source support)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Draw a crop box ``(top, left, h, w)`` as torchvision's RandomResizedCrop does."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # fallback: the largest centred crop whose aspect ratio lies within `ratio`
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomResizedCrop(Transform):
    """Crop a random box (see ``random_resized_crop_box``) and resize it to ``size``."""

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        self.size = _size2(size)
        self.scale = scale
        self.ratio = ratio

    def get_params(self, height: int, width: int, rng: np.random.Generator) -> Box:
        return random_resized_crop_box(height, width, rng, self.scale, self.ratio)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        top, left, h, w = self.get_params(img.shape[0], img.shape[1], rng)
        return resize(img[top : top + h, left : left + w], *self.size)


class RandomHorizontalFlip(Transform):
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return img[:, ::-1] if rng.random() < self.p else img


class RandomVerticalFlip(Transform):
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return img[::-1] if rng.random() < self.p else img


class Resize(Transform):
    """Resize the shorter side to ``size`` (int), or to exactly ``(h, w)``."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = size

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        if isinstance(self.size, int):
            if h <= w:
                nh, nw = self.size, max(1, int(round(w * self.size / h)))
            else:
                nh, nw = max(1, int(round(h * self.size / w))), self.size
        else:
            nh, nw = _size2(self.size)
        return resize(img, nh, nw)


class CenterCrop(Transform):
    """Crop the centre ``size`` box (zero-padded if the image is smaller)."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = _size2(size)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        th, tw = self.size
        h, w = img.shape[:2]
        if h < th or w < tw:
            padded = np.zeros((max(h, th), max(w, tw), img.shape[2]), dtype=img.dtype)
            oy, ox = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
            padded[oy : oy + h, ox : ox + w] = img
            img, h, w = padded, padded.shape[0], padded.shape[1]
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return img[top : top + th, left : left + tw]
