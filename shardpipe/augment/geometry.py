"""Geometric transforms on RGB uint8 HWC arrays: crops, resizes, flips, rotation.

``RandomResizedCrop.get_params`` draws crop boxes with the same distribution as
torchvision's RandomResizedCrop (area scale and log-uniform aspect ratio, ten tries,
then a centre crop), so that models trained on either see the same statistics.
Pixels move with OpenCV when it is installed (see ``resample``), else with PIL.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from PIL import Image

from shardpipe.augment.base import EITHER, Transform, bounds, number
from shardpipe.augment.resample import band, cv2, fits, resize, split_channels, stack
from shardpipe.augment.schedule import Ramp, with_size

Box = tuple[int, int, int, int]  # top, left, height, width


Size = int | tuple[int, int]


def _size_error(size: Any) -> TypeError:
    return TypeError(f"size must be an int or a (height, width) pair of ints, got {size!r}")


def _side(value: Any, size: Any) -> int:
    """One side of ``size`` as a positive int: any integer (numpy's too), or an integral float in a pair."""
    integral = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise _size_error(size)
    if value < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(value)


def _check_size(size: Any) -> Size:
    """``size`` with plain int sides: a positive integer (numpy integers too), or a pair of them."""
    if isinstance(size, numbers.Integral):
        return _side(size, size)
    pair = isinstance(size, (tuple, list)) or (isinstance(size, np.ndarray) and size.ndim == 1)
    if not pair or len(size) != 2:
        raise _size_error(size)
    return _side(size[0], size), _side(size[1], size)


def _size2(size: Any) -> tuple[int, int]:
    """``size`` as ``(height, width)`` (an int is a square)."""
    size = _check_size(size)
    return (size, size) if isinstance(size, int) else size


class _Sized(Transform):
    """A transform whose output ``size`` may follow a per-epoch schedule (``shardpipe.augment.ramp``)."""

    size: Any

    def _init_size(self, size: Size | Ramp, square: bool) -> None:
        self.schedule = size if isinstance(size, Ramp) else None
        self._square = square
        self.size = self._fix(size.at(0) if isinstance(size, Ramp) else size)

    def _fix(self, size: Size) -> Any:
        return _size2(size) if self._square else _check_size(size)

    def at_epoch(self, epoch: int) -> Transform:
        """This transform with its size fixed for epoch ``epoch`` (itself when there is no schedule)."""
        if self.schedule is None:
            return self
        return with_size(self, self._fix(self.schedule.at(epoch)))


def _flip(img: np.ndarray, code: int, out: np.ndarray | None) -> np.ndarray:
    # OpenCV's copy is ~30x numpy's; it flips in place too (``out`` may be ``img``)
    if cv2 is not None and img.ndim == 3 and img.shape[2] in (1, 3, 4):
        dst = out if fits(out, *img.shape) else None
        return cv2.flip(img, code, dst=dst).reshape(img.shape)
    return np.ascontiguousarray(img[:, ::-1] if code == 1 else img[::-1])


def hflip(img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mirror left-right, as a contiguous array (into ``out`` when it fits; it may be ``img``)."""
    return _flip(img, 1, out)


def vflip(img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mirror top-bottom, as a contiguous array (into ``out`` when it fits; it may be ``img``)."""
    return _flip(img, 0, out)


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


class RandomResizedCrop(_Sized):
    """Crop a random box (see ``random_resized_crop_box``) and resize it to ``size``.

    ``size`` may be a schedule (``shardpipe.augment.ramp``) for progressive resizing; ``scale``
    and ``ratio`` are ``(min, max)`` pairs, checked here (torchvision only warns on reversed ones).
    """

    def __init__(
        self,
        size: Size | Ramp,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        self._init_size(size, square=True)
        self.scale = bounds(scale, "scale")
        if self.scale[0] < 0 or self.scale[1] <= 0:
            raise ValueError(f"scale must be fractions of the area, >= 0 with a max > 0, got {self.scale}")
        self.ratio = bounds(ratio, "ratio")
        if self.ratio[0] <= 0:
            raise ValueError(f"ratio must be aspect ratios (width / height) > 0, got {self.ratio}")

    def get_params(self, height: int, width: int, rng: np.random.Generator) -> Box:
        return random_resized_crop_box(height, width, rng, self.scale, self.ratio)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        top, left, h, w = self.get_params(img.shape[0], img.shape[1], rng)
        return resize(img[top : top + h, left : left + w], *self.size)


def _probability(p: Any) -> float:
    p = number(p, "p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    return p


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p`` (one ``rng.random()`` draw)."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return hflip(img) if rng.random() < self.p else img

    def into(self, img: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        return hflip(img, out) if rng.random() < self.p else img


class RandomVerticalFlip(Transform):
    """Mirror top-bottom with probability ``p`` (one ``rng.random()`` draw)."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return vflip(img) if rng.random() < self.p else img

    def into(self, img: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        return vflip(img, out) if rng.random() < self.p else img


class Resize(_Sized):
    """Resize the shorter side to ``size`` (int), or to exactly ``(h, w)``; ``size`` may be a schedule."""

    def __init__(self, size: Size | Ramp):
        self._init_size(size, square=False)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` an image of ``(height, width)`` is resized to."""
        if isinstance(self.size, int):
            if height <= width:
                return self.size, max(1, int(self.size * width / height))
            return max(1, int(self.size * height / width)), self.size
        return self.size  # a (height, width) pair of ints, checked when it was set

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return resize(img, *self.output_size(img.shape[0], img.shape[1]))


class CenterCrop(_Sized):
    """Crop the centre ``size`` box (zero-padded if the image is smaller); ``size`` may be a schedule."""

    def __init__(self, size: Size | Ramp):
        self._init_size(size, square=True)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        th, tw = self.size
        h, w = img.shape[:2]
        if h < th or w < tw:
            padded = np.zeros((max(h, th), max(w, tw), *img.shape[2:]), dtype=img.dtype)
            oy, ox = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
            padded[oy : oy + h, ox : ox + w] = img
            img, h, w = padded, padded.shape[0], padded.shape[1]
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return img[top : top + th, left : left + tw]


def rotate(img: np.ndarray, angle: float, fill: float | tuple[float, ...] = 0) -> np.ndarray:
    """Rotate by ``angle`` degrees counter-clockwise about the centre (same size, bilinear).

    Corners that come from outside the image take the value ``fill`` (one number for every
    channel, or one per channel: missing ones are 0, as in OpenCV).
    """
    h, w = img.shape[:2]
    channels = img.shape[2] if img.ndim == 3 else 1
    fills = (fill,) * channels if isinstance(fill, numbers.Real) else (*fill, *(0,) * channels)[:channels]
    if cv2 is None:
        return _pil_rotate(img, angle, fills)
    m = cv2.getRotationMatrix2D(((w - 1) * 0.5, (h - 1) * 0.5), angle, 1.0)
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fills)
    return out.reshape(img.shape)


def _rotation(angle: float, width: int, height: int, pad: int) -> tuple[float, ...]:
    """PIL's affine data (output to input position) for ``rotate``, with the image ``pad`` pixels inside its input."""
    t = -math.radians(angle)
    cos, sin = round(math.cos(t), 15), round(math.sin(t), 15)  # as PIL's rotate: exact quarter turns
    cx, cy = width / 2, height / 2
    return cos, sin, cx + pad - cos * cx - sin * cy, -sin, cos, cy + pad + sin * cx - cos * cy


def _pil_rotate(img: np.ndarray, angle: float, fills: tuple[float, ...]) -> np.ndarray:
    """``rotate`` without OpenCV: each channel as a float32 image (no premultiplied alpha), rounded at the end.

    A one-pixel frame of the fill around each channel makes the edges blend into the fill as
    OpenCV's constant border does (PIL alone would stretch the edge pixels out half a pixel).
    float64 images come back within float32's precision.
    """
    h, w = img.shape[:2]
    data = _rotation(angle, w, h, pad=1)
    bands = [
        band(_framed(channel, fill), np.float32).transform(
            (w, h), Image.AFFINE, data, Image.BILINEAR, fillcolor=float(fill)
        )
        for channel, fill in zip(split_channels(img), fills)
    ]
    return stack(bands, img)


def _framed(channel: np.ndarray, fill: float) -> np.ndarray:
    """An HxW channel as float32 inside a one-pixel frame of ``fill``."""
    out = np.full((channel.shape[0] + 2, channel.shape[1] + 2), fill, np.float32)
    out[1:-1, 1:-1] = channel
    return out


class RandomRotation(Transform):
    """Rotate by an angle drawn uniformly from ``degrees`` (a bound ``d`` means ``(-d, d)``)."""

    def __init__(self, degrees: float | tuple[float, float], fill: int | tuple[int, ...] = 0):
        if isinstance(degrees, numbers.Real) and not isinstance(degrees, (bool, np.bool_)):
            d = number(degrees, "degrees")
            if d < 0:
                raise ValueError(f"degrees must be >= 0 when a single number, got {degrees}")
            self.degrees = (-d, d)
        else:
            self.degrees = bounds(degrees, "degrees", EITHER)
        self.fill = fill

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = float(rng.uniform(self.degrees[0], self.degrees[1]))
        return rotate(img, angle, self.fill)
