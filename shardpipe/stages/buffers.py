"""Recycled shared-memory batch buffers: no page faults for a fresh batch in every worker step.

A DataLoader worker hands a batch to the main process in shared memory. Allocating a new
segment for every batch costs its page faults twice, in the worker that fills it and in
the main process that reads it (~8 ms for a 64x3x224x224 uint8 batch). ``BatchBuffers``
keeps a few segments per worker and reuses one once the consumer has let go of it:

- the worker (``take``) marks a slot busy in a small shared table, with the segment's
  identity (the inode of its shared-memory file), and fills it;
- the main process (``ShardLoader``) records each batch it receives (``track``) and keeps
  its own reference to the segment; once no tensor of the user's refers to it any more
  (torch's storage use count drops to our one reference), ``release`` marks the slot free.

The main process's mapping of a segment stays alive while the slot exists, and it says so
in the table (the segment id in the slot's ``mapped`` field): from then on the worker
sends that segment by reference (``reference``: slot, segment id, shape, strides), not
as a file descriptor through a connection to the worker (~0.5 ms of CPU each way), and
the main process rebuilds the tensor on its own mapping (``resolve``).

Nothing is reused unless the main process said so: each ShardLoader pass of fresh workers
makes its own pool (persistent workers keep theirs), and only the workers it starts take
it (not those of a plain DataLoader or of another loader over the same dataset, nor with
pinned memory, where the batch is copied before the loop sees it). A consumer that keeps
every batch keeps every slot busy: the worker then allocates fresh segments. A slot is
only freed when the identity recorded by the worker still matches.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shardpipe.workermemory import populate

#: slots per worker: the batches the DataLoader keeps in flight (prefetch_factor 4 by
#: default), the one being filled and the one the training step holds
SLOTS = 8
MAX_WORKERS = 256
_BUSY, _ID, _SIZE, _MAPPED = 0, 1, 2, 3


@dataclass(frozen=True)
class SlotRef:
    """A batch tensor in a pooled segment the main process already holds: sent instead of the tensor."""

    slot: int
    segment: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def _segment_id(storage: torch.UntypedStorage) -> int:
    """The inode of the shared-memory file behind ``storage`` (same in every process)."""
    fd, _ = storage._share_fd_cpu_()
    return os.fstat(fd).st_ino


def shared_storage(nbytes: int) -> torch.UntypedStorage:
    """A fresh shared-memory segment of ``nbytes``, its pages allocated up front where Linux can
    (``workermemory.populate``: one call instead of a fault per page as the decode writes it)."""
    storage = torch.UntypedStorage._new_shared(nbytes)
    populate(storage.data_ptr(), nbytes)
    return storage


def uint8_view(storage: torch.UntypedStorage, shape: tuple[int, ...]) -> torch.Tensor:
    """``storage`` as a uint8 tensor of ``shape`` (no copy)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class BatchBuffers:
    """A per-worker pool of shared-memory uint8 buffers, freed by the main process."""

    def __init__(self) -> None:
        # [worker, slot, (busy, segment id, bytes, segment id the main process holds mapped)];
        # made in the main process before workers start
        self.table = torch.zeros((MAX_WORKERS, SLOTS, 4), dtype=torch.int64).share_memory_()
        self._pool: dict[int, torch.UntypedStorage] = {}  # worker side: slot -> storage
        self._held: list[tuple[torch.UntypedStorage, int, int, int]] = []  # main: (storage, worker, slot, id)
        # main: (worker, slot) -> (storage, id): every segment received, kept mapped while this pool lives
        self._mapped: dict[tuple[int, int], tuple[torch.UntypedStorage, int]] = {}
        self._np: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # storages stay in their process
        return {"table": self.table, "_pool": {}, "_held": [], "_mapped": {}, "_np": None}

    def _rows(self) -> np.ndarray:
        """The table as numpy (the same shared memory): reading a field costs no tensor."""
        if self._np is None:
            self._np = self.table.numpy()
        return self._np

    # -- worker side ---------------------------------------------------------------------
    def take(self, shape: tuple[int, ...], worker: int) -> torch.Tensor:
        """An uninitialised uint8 tensor of ``shape`` in shared memory, recycled when possible."""
        nbytes = math.prod(shape)
        row = self._rows()[worker % MAX_WORKERS]
        for slot, storage in self._pool.items():
            if storage.nbytes() == nbytes and int(row[slot, _BUSY]) == 0:
                row[slot, _BUSY] = 1
                return uint8_view(storage, shape)
        storage = shared_storage(nbytes)
        if len(self._pool) < SLOTS:
            slot = len(self._pool)
        else:  # full: replace a free slot of another size, else hand out an unpooled buffer
            free = [s for s in self._pool if int(row[s, _BUSY]) == 0]
            if not free:
                return uint8_view(storage, shape)
            slot = free[0]
        self._pool[slot] = storage
        row[slot, _ID], row[slot, _SIZE], row[slot, _BUSY] = _segment_id(storage), nbytes, 1
        return uint8_view(storage, shape)

    def give_back(self, tensor: torch.Tensor, worker: int) -> None:
        """Free the slot of a tensor from :meth:`take` that was never sent (no-op for others)."""
        slot = self.slot_of(tensor)
        if slot is not None:
            self._rows()[worker % MAX_WORKERS][slot, _BUSY] = 0

    def slot_of(self, tensor: torch.Tensor) -> int | None:
        """The pool slot whose segment ``tensor`` lies in (``None``: not a pooled buffer)."""
        storage = tensor.untyped_storage()
        for slot, mine in self._pool.items():
            if mine.data_ptr() == storage.data_ptr() and mine.nbytes() == storage.nbytes():
                return slot
        return None

    def reference(self, tensor: torch.Tensor, worker: int, slot: int) -> SlotRef | None:
        """``tensor`` (in pool ``slot``) as a reference to its segment, if the main process holds that
        segment mapped (else ``None``: it must travel as a tensor)."""
        row = self._rows()[worker % MAX_WORKERS]
        seg = int(row[slot, _ID])
        if not seg or int(row[slot, _MAPPED]) != seg:
            return None
        return SlotRef(slot, seg, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset())

    # -- main side -----------------------------------------------------------------------
    def track(self, worker: int, item: Any) -> None:
        """Remember the pooled segments in a batch just received from ``worker``."""
        if not isinstance(item, dict):
            return
        row = self._rows()[worker % MAX_WORKERS]
        for value in item.values():
            if not (
                isinstance(value, torch.Tensor)
                and value.layout == torch.strided
                and value.dtype == torch.uint8
                and value.is_shared()
            ):
                continue
            storage = value.untyped_storage()
            seg = _segment_id(storage)
            for slot in range(SLOTS):
                if int(row[slot, _ID]) == seg and int(row[slot, _BUSY]) == 1:
                    self._hold(storage, worker, slot, seg)
                    break

    def _hold(self, storage: torch.UntypedStorage, worker: int, slot: int, seg: int) -> None:
        self._held.append((storage, worker, slot, seg))
        if self._mapped.get((worker, slot), (None, 0))[1] != seg:
            self._mapped[(worker, slot)] = (storage, seg)  # kept, so the segment can come by reference
            self._rows()[worker % MAX_WORKERS, slot, _MAPPED] = seg

    def resolve(self, worker: int, ref: SlotRef) -> torch.Tensor:
        """The tensor a worker sent by reference, on this process's mapping of its segment (tracked)."""
        storage, seg = self._mapped.get((worker, ref.slot), (None, 0))
        if storage is None or seg != ref.segment:
            raise RuntimeError(
                f"DataLoader worker {worker} sent a batch in its buffer slot {ref.slot} by reference, but this "
                f"process holds no mapping of that segment ({ref.segment}): the buffer table is out of step"
            )
        end = ref.offset + sum((n - 1) * st for n, st in zip(ref.shape, ref.stride)) + 1
        if ref.offset < 0 or min(ref.stride, default=0) < 0 or min(ref.shape, default=1) < 1 or end > storage.nbytes():
            raise RuntimeError(
                f"DataLoader worker {worker} sent a batch in its buffer slot {ref.slot} reaching past its "
                f"segment (shape {ref.shape}, strides {ref.stride}, offset {ref.offset}; {storage.nbytes()} bytes)"
            )
        tensor = torch.empty(0, dtype=torch.uint8).set_(storage, ref.offset, ref.shape, ref.stride)
        self._hold(storage, worker, ref.slot, seg)
        return tensor

    def free_unseen(self, item: Any) -> int:
        """Free the slots of a batch the loop never received (what persistent workers sent for a pass the
        loop left early: torch drops it at the next pass's start); returns how many."""
        if not isinstance(item, dict):
            return 0
        rows, freed = self._rows(), 0
        for value in item.values():
            if isinstance(value, SlotRef):
                seg = value.segment
            elif isinstance(value, torch.Tensor) and value.layout == torch.strided and value.is_shared():
                seg = _segment_id(value.untyped_storage())
            else:
                continue
            busy = (rows[:, :, _ID] == seg) & (rows[:, :, _BUSY] == 1)
            rows[busy, _BUSY] = 0
            freed += int(busy.sum())
        return freed

    def release(self) -> int:
        """Free the slots whose batches nobody uses any more; returns how many."""
        freed = 0
        for entry in list(self._held):
            storage, worker, slot, seg = entry
            if torch._C._storage_Use_Count(storage._cdata) == 1:  # only our reference is left
                row = self._rows()[worker % MAX_WORKERS]
                if int(row[slot, _ID]) == seg:
                    row[slot, _BUSY] = 0
                    freed += 1
                self._held.remove(entry)
        return freed
