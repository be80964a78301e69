"""Build the per-image function that turns JPEG bytes into an augmented RGB array.

``build_image_fn(decoder, transform)`` returns ``fn(data, rng) -> np.ndarray``. This is
where decode and augment may be fused (crop-aware decode); the plain version decodes
the whole image, then applies the transform.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..decoders import get_decoder
from .base import Transform, as_transform

ImageFn = Callable[[bytes, np.random.Generator], np.ndarray]


def build_image_fn(decoder: str = "auto", transform: Callable | None = None) -> ImageFn:
    """Return ``fn(data, rng)``: decode ``data`` to RGB uint8 HWC and apply ``transform``."""
    dec = get_decoder(decoder)
    if transform is None:
        return lambda data, rng: dec.decode(data)
    t: Transform = as_transform(transform)
    return lambda data, rng: t(dec.decode(data), rng)
