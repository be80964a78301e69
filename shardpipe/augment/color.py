"""Colour transforms on RGB uint8 HWC arrays: brightness, contrast, saturation, hue.

Semantics follow torchvision's ColorJitter: each factor is drawn uniformly from
``[max(0, 1 - x), 1 + x]`` (hue: ``[-h, h]`` of a full turn), the four adjustments are
applied in a random order, brightness scales the pixels, contrast blends with the mean
grey level, saturation blends with the per-pixel grey image, hue rotates the HSV hue.
Brightness and contrast are one 256-entry lookup table each; with OpenCV, saturation
is one weighted add and hue a lookup on the 8-bit HSV image (within a few grey levels
of the exact float result), without it numpy does the same in float.
"""

from __future__ import annotations

import numbers

import numpy as np

from shardpipe.augment.base import EITHER, Transform, bounds, number
from shardpipe.augment.resample import cv2

_GREY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL and OpenCV
_RAMP = np.arange(256, dtype=np.float32)


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    table = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    if cv2 is not None:
        return cv2.LUT(img, table).reshape(img.shape)
    return table[img]


def grey(img: np.ndarray) -> np.ndarray:
    """The HxW uint8 luma of an RGB image."""
    if cv2 is not None:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return np.rint(img.astype(np.float32) @ _GREY).astype(np.uint8)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Multiply every channel by ``factor`` (0 gives black, 1 the original)."""
    return _lut(img, _RAMP * factor)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's mean grey level (0 gives flat grey, 1 the original)."""
    mean = float(grey(img).mean())
    return _lut(img, _RAMP * factor + (1.0 - factor) * mean)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the grey image (0 gives grey, 1 the original, 2 doubles saturation)."""
    g = grey(img)
    if cv2 is not None:
        return cv2.addWeighted(img, factor, cv2.cvtColor(g, cv2.COLOR_GRAY2RGB), 1.0 - factor, 0.0)
    out = img.astype(np.float32) * factor + (1.0 - factor) * g[..., None].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    cc = np.maximum(c, 1e-12)
    h = np.where(v == r, (g - b) / cc, np.where(v == g, 2.0 + (b - r) / cc, 4.0 + (r - g) / cc))
    h = np.where(c > 0, (h / 6.0) % 1.0, 0.0)
    return h, s, v


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """Rotate the hue by ``factor`` of a full turn (``factor`` in [-0.5, 0.5])."""
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor}")
    if cv2 is not None:  # 8-bit HSV with the full hue circle; hue shifted by a table
        if abs(factor) * 256 <= 0.5:
            return img  # under half a step of 8-bit hue: the round trip would only add error
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
        # OpenCV's two 8-bit scales differ: RGB2HSV_FULL puts 256 hue steps in a turn, HSV2RGB_FULL
        # reads 255; the table turns each hue by the exact factor on the first and writes the second
        # (an unscaled table drifted up to a step further: 12 grey levels off, now 6 at most)
        ramp = np.arange(256)
        hue = np.rint((ramp + factor * 256) % 256 * (255 / 256))
        table = np.stack([hue, ramp, ramp], -1).astype(np.uint8).reshape(1, 256, 3)
        return cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2RGB_FULL)
    h, s, v = _rgb_to_hsv(img.astype(np.float32) / 255.0)
    rgb = _hsv_to_rgb((h + factor) % 1.0, s, v)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _range(
    value: float | tuple[float, float], name: str, centre: float, bound: float | None
) -> tuple[float, float] | None:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        amount = number(value, name)
        if amount < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        if amount == 0:
            return None
        lo, hi = centre - amount, centre + amount
        if bound is None:
            lo = max(lo, 0.0)
    else:
        lo, hi = bounds(value, name, EITHER)
    if bound is None:
        if lo < 0:  # as torchvision: a negative factor would invert contrast or saturation
            raise ValueError(f"{name} factors must be >= 0, got ({lo}, {hi})")
    elif not (-bound <= lo <= hi <= bound):
        raise ValueError(f"{name} must lie within [-{bound}, {bound}], got ({lo}, {hi})")
    return lo, hi


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue, as torchvision's ColorJitter.

    Each argument is a non-negative amount ``x`` (factor in ``[max(0, 1 - x), 1 + x]``; for
    hue, ``[-x, x]`` with ``x <= 0.5``) or an explicit ``(min, max)``. Draws, in order:
    the application order (a permutation of 4), then one factor per enabled adjustment.
    """

    def __init__(
        self,
        brightness: float | tuple[float, float] = 0,
        contrast: float | tuple[float, float] = 0,
        saturation: float | tuple[float, float] = 0,
        hue: float | tuple[float, float] = 0,
    ):
        self.brightness = _range(brightness, "brightness", 1.0, None)
        self.contrast = _range(contrast, "contrast", 1.0, None)
        self.saturation = _range(saturation, "saturation", 1.0, None)
        self.hue = _range(hue, "hue", 0.0, 0.5)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        order = rng.permutation(4)
        ops = (
            (self.brightness, adjust_brightness),
            (self.contrast, adjust_contrast),
            (self.saturation, adjust_saturation),
            (self.hue, adjust_hue),
        )
        factors = [None if r is None else float(rng.uniform(r[0], r[1])) for r, _ in ops]
        for i in order:
            if factors[i] is not None:
                img = ops[i][1](img, factors[i])
        return img
