"""Batch samples and collate them straight into uint8 NCHW tensors.

Images (RGB uint8 HWC arrays) are copied once, into a preallocated ``(N, C, H, W)``
uint8 tensor: no per-image float conversion, no intermediate list of tensors. Labels
become an int64 tensor; everything else is collated as a list.

Inside a DataLoader worker the batch tensor is allocated in shared memory from the
start, so handing it to the main process copies nothing; with ``ShardLoader`` those
buffers are recycled once the training loop has let go of them (``stages.buffers``). ``channels_last=True`` keeps
the NCHW shape but lays the memory out as NHWC (torch's channels_last format): each
image is then one contiguous copy instead of a transposing one, about 15x cheaper,
and convolutions on the GPU prefer that layout anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from shardpipe.augment.resample import cv2
from shardpipe.format.sample import Sample
from shardpipe.stages.base import Stage
from shardpipe.stages.buffers import BatchBuffers, shared_storage, uint8_view
from shardpipe.stages.decode import Decode


def empty_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in shared memory inside DataLoader workers."""
    if get_worker_info() is not None:
        return uint8_view(shared_storage(math.prod(shape)), shape)
    return torch.empty(shape, dtype=torch.uint8)


Alloc = Callable[[tuple[int, ...]], torch.Tensor]


def collate_images(
    images: list[Any],
    out: torch.Tensor | None = None,
    channels_last: bool = False,
    alloc: Alloc = empty_uint8,
    placed: Collection[int] = (),
) -> torch.Tensor:
    """Stack HWC uint8 arrays (or CHW uint8 tensors) into one NCHW uint8 tensor (from ``alloc``);
    other tensors are stacked by torch. ``placed``: the indices of images already in their
    row of ``out`` (decoded there), left as they are."""
    first = images[0]
    if isinstance(first, torch.Tensor):
        if not all(_is_image_tensor(t) for t in images):
            return torch.stack(images) if out is None else torch.stack(images, out=out)
        images = [t.permute(1, 2, 0).numpy() for t in images]  # HWC views of the same memory
        first = images[0]
    h, w = first.shape[:2]
    c = first.shape[2] if first.ndim == 3 else 1
    for img in images:
        if img.shape[:2] != (h, w):
            raise ValueError(
                f"cannot batch images of different sizes ({h}x{w} and {img.shape[0]}x{img.shape[1]}): "
                "add a transform that crops or resizes to a fixed size, or set batch_size=None"
            )
    if out is None:
        if channels_last:
            out = alloc((len(images), h, w, c)).permute(0, 3, 1, 2)
        else:
            out = alloc((len(images), c, h, w))
    # write through an NHWC view of the tensor's memory: one copy per image (a plain one for
    # channels_last; for contiguous NCHW, OpenCV's split straight into the image's channel
    # planes, ~3.5x numpy's strided copy, else that strided copy)
    nhwc = out.permute(0, 2, 3, 1).numpy()
    planes = out.numpy() if not channels_last and c > 1 and cv2 is not None and out.is_contiguous() else None
    for i, img in enumerate(images):
        if i in placed:  # decoded straight into its row (``Batch``): nothing to copy
            continue
        if planes is None or img.ndim != 3 or not _split_into(img, planes[i]):
            nhwc[i] = img if img.ndim == 3 else img[:, :, None]
    return out


def _lies_in(value: Any, rows: np.ndarray) -> bool:
    """True when ``value`` (an array or a CPU tensor) shares memory with ``rows``."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or value.layout != torch.strided or value.requires_grad:
            return False
        value = value.numpy()
    return isinstance(value, np.ndarray) and np.may_share_memory(value, rows)


def _split_into(img: np.ndarray, planes: np.ndarray) -> bool:
    """Copy HWC ``img`` into the contiguous (C, H, W) ``planes`` with ``cv2.split``; False if it cannot."""
    if img.shape[2] != planes.shape[0] or img.shape[2] > 4 or not img.flags.c_contiguous:
        return False
    dst = list(planes)
    got = cv2.split(img, dst)
    # OpenCV writes into arrays it was given only when they fit; anything else would be a new array
    return all(g.ctypes.data == d.ctypes.data for g, d in zip(got, dst))


def _is_image_tensor(value: Any) -> bool:
    """A CHW uint8 CPU tensor (``decode="torchrgb8"``): collated like an HWC array."""
    return (
        isinstance(value, torch.Tensor)
        and value.dtype == torch.uint8
        and value.ndim == 3
        and value.device.type == "cpu"
        and value.layout == torch.strided
        and not value.requires_grad
    )


def collate(
    samples: list[Sample],
    channels_last: bool = False,
    alloc: Alloc = empty_uint8,
    into: dict[str, torch.Tensor] | None = None,
    placed: Collection[int] = (),
) -> dict[str, Any]:
    """Collate a list of samples field by field (see the module docstring); ``alloc`` makes
    the image tensors (a ``BatchBuffers`` pool inside DataLoader workers), except those of
    the fields in ``into``, which are written into the tensor given; in it, the images of
    the samples in ``placed`` are in their row already and stay as they are.

    A field that only some samples have becomes a list with ``None`` for the others (use
    ``ShardDataset(require=...)`` to insist on fields); nothing is dropped.
    """
    fields: dict[str, None] = {}
    for s in samples:
        fields.update(dict.fromkeys(s))
    out: dict[str, Any] = {}
    for field in fields:
        if not all(field in s for s in samples):
            out[field] = [s.get(field) for s in samples]
            continue
        values = [s[field] for s in samples]
        first = values[0]
        if (isinstance(first, np.ndarray) and first.dtype == np.uint8 and first.ndim in (2, 3)) or isinstance(
            first, torch.Tensor
        ):  # tensors: CHW uint8 images into ``alloc``, others stacked by torch
            given = into.get(field) if into else None
            done = placed if given is not None else ()
            out[field] = collate_images(values, given, channels_last=channels_last, alloc=alloc, placed=done)
        elif isinstance(first, (bool, np.bool_)):
            out[field] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, (int, np.integer)) and not field.startswith("__"):
            out[field] = torch.tensor(values, dtype=torch.int64)
        elif isinstance(first, (float, np.floating)):
            out[field] = torch.tensor(values, dtype=torch.float32)
        else:
            out[field] = values
    return out


class Batch(Stage[dict[str, Any]]):
    """Group ``batch_size`` samples and collate them; the last, short batch is kept unless ``drop_last``.

    Stateless between batches (a batch is only returned whole), so its state is its
    source's. Inside a DataLoader worker, image tensors come from ``buffers`` (recycled
    shared memory, see ``stages.buffers``) when given.

    With ``channels_last`` and a ``Decode`` source that decodes on this thread, each image is
    decoded straight into its row of the batch (``Decode.next_into``), so its pixels are
    written once: the batch tensor is taken before the samples, in the previous batch's
    layout; an image that did not land in its row is copied as before.
    """

    def __init__(
        self,
        batch_size: int,
        *,
        drop_last: bool = False,
        channels_last: bool = False,
        buffers: BatchBuffers | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.buffers = buffers
        #: (field, (h, w, c)) of the last batch's images: the rows offered to the decode
        self._layout: tuple[str, tuple[int, int, int]] | None = None

    def _alloc(self, shape: tuple[int, ...]) -> torch.Tensor:
        info = get_worker_info()
        if self.buffers is not None and info is not None:
            # by DataLoader worker id, which a process keeps for life (the logical ctx.worker
            # can change between passes of persistent workers after a resume)
            return self.buffers.take(shape, info.id)
        return empty_uint8(shape)

    def _target(self) -> torch.Tensor | None:
        """The next batch's image tensor (NHWC memory) for the decode to write rows into, if it can."""
        source = self.source
        if self._layout is None or not self.channels_last or not isinstance(source, Decode) or not source.writes_into:
            return None
        return self._alloc((self.batch_size, *self._layout[1]))

    def next(self) -> dict[str, Any]:
        target = self._target()
        rows = target.numpy() if target is not None else None
        samples: list[Sample] = []
        try:
            while len(samples) < self.batch_size:
                if rows is None:
                    samples.append(self.pull())
                else:
                    samples.append(self.source.next_into(rows[len(samples)]))  # type: ignore[union-attr]
        except StopIteration:
            if not samples or self.drop_last:
                self._give_back(target)
                raise
        except BaseException:
            self._give_back(target)
            raise
        self.ctx.where("batch")
        t0 = time.perf_counter()
        if target is None:
            batch = collate(samples, self.channels_last, self._alloc)
        else:
            batch = self._collate_into(samples, target)
        self._layout = _layout_of(batch)
        self.ctx.add_time("batch", time.perf_counter() - t0, len(samples))
        return batch

    def _give_back(self, tensor: torch.Tensor | None) -> None:
        info = get_worker_info()
        if tensor is not None and self.buffers is not None and info is not None:
            self.buffers.give_back(tensor, info.id)

    def _collate_into(self, samples: list[Sample], target: torch.Tensor) -> dict[str, Any]:
        """Collate, with ``target`` as the layout field's tensor when every sample's image is in
        its row or apart from the rows; else (irregular batches) copy out what lies in the rows,
        give ``target`` back and collate as usual."""
        assert self._layout is not None
        field, rows, n = self._layout[0], target.numpy(), len(samples)
        start, step = rows.__array_interface__["data"][0], rows.strides[0]
        placed = []
        for i, s in enumerate(samples):
            where = _placement(s, field, rows, start + i * step)
            if where is None:
                break
            if where:
                placed.append(i)
        else:
            into = {field: target[:n].permute(0, 3, 1, 2)}
            return collate(samples, self.channels_last, self._alloc, into=into, placed=frozenset(placed))
        self._give_back(target)
        samples = [{k: _detached(v, rows) for k, v in s.items()} for s in samples]
        return collate(samples, self.channels_last, self._alloc)


def _placement(sample: Sample, field: str, rows: np.ndarray, address: int) -> bool | None:
    """Where ``sample``'s ``field`` is: True exactly in its row (the one at ``address``), laid out
    as the row; False apart from the rows; None when the batch cannot keep the rows (no ``field``,
    an image of another size than the rows', anything else in them)."""
    image = sample.get(field)
    if type(image) is not np.ndarray:
        image = _hwc(image)
        if not isinstance(image, np.ndarray):
            return None
    if image.shape != rows.shape[1:]:
        return None
    for key, value in sample.items():  # (only arrays and tensors can lie in the rows)
        if key != field and isinstance(value, (np.ndarray, torch.Tensor)) and _lies_in(value, rows):
            return None
    if (
        image.strides == rows.strides[1:]
        and image.dtype == rows.dtype
        and image.__array_interface__["data"][0] == address
    ):
        return True  # exactly in its row (and so in the rows)
    return None if _lies_in(image, rows) else False


def _hwc(value: Any) -> Any:
    """An image tensor (CHW) as the HWC array of its memory; anything else as it is."""
    return value.permute(1, 2, 0).numpy() if _is_image_tensor(value) else value


def _detached(value: Any, rows: np.ndarray) -> Any:
    """``value``, copied if it shares memory with ``rows`` (a buffer that goes back to the pool)."""
    if not _lies_in(value, rows):
        return value
    return value.clone() if isinstance(value, torch.Tensor) else value.copy()


def _layout_of(batch: dict[str, Any]) -> tuple[str, tuple[int, int, int]] | None:
    """(field, (h, w, c)) of the batch's first channels_last uint8 image tensor, if any."""
    for field, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.ndim == 4:
            _, c, h, w = value.shape
            if value.permute(0, 2, 3, 1).is_contiguous():
                return field, (h, w, c)
    return None
