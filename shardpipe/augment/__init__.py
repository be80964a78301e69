"""Augmentations on RGB uint8 HWC arrays, with per-sample seeded randomness."""

from shardpipe.augment.base import Compose, Transform, as_transform, sample_rng
from shardpipe.augment.color import ColorJitter, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation
from shardpipe.augment.geometry import (
    CenterCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomVerticalFlip,
    Resize,
    hflip,
    random_resized_crop_box,
    resize,
    rotate,
    vflip,
)
from shardpipe.augment.resample import resized_crop
from shardpipe.augment.schedule import Ramp, at_epoch, ramp

__all__ = [
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomRotation",
    "RandomVerticalFlip",
    "Ramp",
    "Resize",
    "Transform",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "as_transform",
    "at_epoch",
    "hflip",
    "ramp",
    "random_resized_crop_box",
    "resize",
    "resized_crop",
    "rotate",
    "sample_rng",
    "vflip",
]
