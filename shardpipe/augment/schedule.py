"""Sizes that change with the epoch (progressive resizing, as FFCV popularised).

``RandomResizedCrop(ramp(160, 224, end_epoch=30))`` trains on small crops first, when
the model learns coarse features, and on full-size crops at the end. The crop-aware
decode picks its DCT scale from the current size, so early epochs decode fewer pixels.
A transform with a schedule is resolved once per epoch (``at_epoch``); batch shapes
change between epochs only.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Ramp:
    """A size growing linearly from ``start`` (until ``start_epoch``) to ``end`` (from ``end_epoch``).

    Sizes are rounded down to a multiple of ``multiple`` (32 by default: the strides of
    common backbones), and never leave the ``[start, end]`` range.
    """

    start: int
    end: int
    start_epoch: int = 0
    end_epoch: int = 1
    multiple: int = 32

    def __post_init__(self) -> None:
        for field in fields(self):  # checked here, not when a later epoch reaches a bad size in the workers
            object.__setattr__(self, field.name, _integer(field.name, getattr(self, field.name)))
        if self.start < 1 or self.end < 1:
            raise ValueError(f"ramp sizes must be positive, got start={self.start}, end={self.end}")
        if self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"ramp needs end_epoch > start_epoch, got start_epoch={self.start_epoch}, end_epoch={self.end_epoch}"
            )
        if self.multiple < 1:
            raise ValueError(f"ramp multiple must be >= 1, got {self.multiple}")

    def at(self, epoch: int) -> int:
        """The size in epoch ``epoch``."""
        if epoch <= self.start_epoch:
            return self.start
        if epoch >= self.end_epoch:
            return self.end
        frac = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        size = self.start + frac * (self.end - self.start)
        rounded = int(size) // self.multiple * self.multiple
        lo, hi = min(self.start, self.end), max(self.start, self.end)
        return min(hi, max(lo, rounded))


def _integer(name: str, value: Any) -> int:
    """``value`` as an int: an integer (numpy's too); a float is refused, as sizes refuse it (``Resize(64.0)``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ramp {name} must be an integer, got {value!r}")
    return int(value)


def ramp(start: int, end: int, start_epoch: int = 0, end_epoch: int = 1, multiple: int = 32) -> Ramp:
    """A size schedule for ``RandomResizedCrop``, ``Resize`` and ``CenterCrop`` (see ``Ramp``)."""
    return Ramp(start, end, start_epoch, end_epoch, multiple)


def at_epoch(transform: Any, epoch: int) -> Any:
    """``transform`` with every size schedule inside it fixed to epoch ``epoch``.

    Transforms without a schedule come back unchanged (the same object), so this is free
    for the common case.
    """
    resolve = getattr(transform, "at_epoch", None)
    return resolve(epoch) if resolve is not None else transform


def has_schedule(transform: Any) -> bool:
    """True when ``transform`` (or a step of a ``Compose``) has a size that depends on the epoch."""
    inner = getattr(transform, "transforms", None)
    if inner is not None:
        return any(has_schedule(t) for t in inner)
    return isinstance(getattr(transform, "schedule", None), Ramp)


def with_size(transform: Any, size: Any) -> Any:
    """A shallow copy of ``transform`` with a new ``size`` (the schedule stays on it)."""
    out = copy.copy(transform)
    out.size = size
    return out
