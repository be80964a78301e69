"""How a ShardLoader worker's batch crosses to the main process without a file descriptor per tensor.

DataLoader sends every tensor of a batch through shared memory: the worker moves it into
a new shared segment and the main process fetches the segment's file descriptor over a
connection to the worker (~0.5 ms of CPU each side, per tensor). For a batch of 64
photos that is two segments, the images and a 512-byte label tensor. ``pack`` (in the
worker) and ``unpack`` (in the main process) replace both:

- tensors of at most ``INLINE_BYTES`` (labels, flags, scores; a single sample's image
  when the dataset does not batch) travel by value, in the message itself (``Inline``);
- an image batch in a recycled buffer whose segment the main process already holds
  travels as a ``SlotRef`` (``stages.buffers``): slot, segment id, shape and strides.

Everything else travels as before. Only the workers a ``ShardLoader`` pass started pack
(they took the pass's pool along with the dataset), and only that pass unpacks
(``receive``), so a plain DataLoader or a pinned-memory loader sees the batches torch
would send.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shardpipe.stages.buffers import BatchBuffers, SlotRef

#: tensors up to this size are copied into the message instead of a new shared segment: three
#: copies of 1 MiB (pickle, pipe, unpickle) cost less than a fresh segment's page faults and its
#: descriptor's round trip (samples without batching: 2.96 -> 2.27 CPU ms/img at 64 KiB -> 1 MiB)
INLINE_BYTES = 1 << 20


class Inline:
    """A small tensor's values, pickled by value; ``unpack`` makes it a tensor again, with
    the same memory layout (a channels_last batch stays channels_last)."""

    __slots__ = ("array", "order")

    def __init__(self, array: np.ndarray, order: tuple[int, ...] | None = None):
        self.array = array  # the values in memory order (C-contiguous when ``order`` is given)
        self.order = order  # the tensor's dimensions from outermost to innermost in memory

    def __getstate__(self) -> tuple[np.ndarray, tuple[int, ...] | None]:
        return self.array, self.order

    def __setstate__(self, state: tuple[np.ndarray, tuple[int, ...] | None]) -> None:
        self.array, self.order = state

    def tensor(self) -> torch.Tensor:
        t = torch.from_numpy(self.array)
        if self.order is None:
            return t
        return t.permute(tuple(self.order.index(dim) for dim in range(len(self.order))))  # the inverse order


def _inline(t: torch.Tensor) -> Inline | None:
    """``t`` by value, if it is small and numpy can hold it (not on a GPU, not sparse, bfloat16, float8,
    a conjugate view or a tensor that requires grad: ``numpy()`` refuses those)."""
    if t.nbytes > INLINE_BYTES:
        return None
    order = tuple(sorted(range(t.ndim), key=lambda d: -t.stride(d)))
    dense = t.permute(order)
    try:
        if order != tuple(range(t.ndim)) and dense.is_contiguous():  # e.g. channels_last: keep the layout
            return Inline(dense.numpy(), order)
        return Inline(t.numpy())
    except (TypeError, RuntimeError):  # numpy has no equivalent: it travels as a tensor
        return None


def pack(item: Any, buffers: BatchBuffers, worker: int) -> Any:
    """The item as a worker sends it: small tensors by value, held batch buffers by reference."""
    if not isinstance(item, dict):
        return item
    out = {}
    for name, value in item.items():
        if isinstance(value, torch.Tensor) and value.layout == torch.strided:  # (sparse ones travel as they are)
            slot = buffers.slot_of(value)
            if slot is not None:  # a recycled buffer: the main process tracks it, so it never goes inline
                value = buffers.reference(value, worker, slot) or value
            else:
                value = _inline(value) or value
        out[name] = value
    return out


def unpack(item: Any, buffers: BatchBuffers, worker: int) -> Any:
    """What ``pack`` made of an item, as tensors again (references resolved and tracked)."""
    if not isinstance(item, dict):
        return item
    out = {}
    for name, value in item.items():
        if isinstance(value, Inline):
            value = value.tensor()
        elif isinstance(value, SlotRef):
            value = buffers.resolve(worker, value)
        out[name] = value
    return out


def receive(item: Any, buffers: BatchBuffers, worker: int) -> Any:
    """In the main process, a batch just received from DataLoader worker ``worker``: the buffers
    the loop has let go go back to their workers, and the item comes back as the loop sees it."""
    buffers.release()
    buffers.track(worker, item)  # the buffers that came as tensors (references are tracked as resolved)
    return unpack(item, buffers, worker)
