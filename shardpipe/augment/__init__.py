"""Augmentations on RGB uint8 HWC arrays, with per-sample seeded randomness."""

from .base import Compose, Transform, as_transform, sample_rng
from .geometry import (
    CenterCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    Resize,
    random_resized_crop_box,
    resize,
)

__all__ = [
    "CenterCrop",
    "Compose",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomVerticalFlip",
    "Resize",
    "Transform",
    "as_transform",
    "random_resized_crop_box",
    "resize",
    "sample_rng",
]
