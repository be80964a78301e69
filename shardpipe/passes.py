"""Where each pass (one iteration over an epoch) of a ``ShardDataset`` consumer starts.

A DataLoader pickles the dataset into its workers once, when they start. Persistent
workers keep that copy for many epochs, so anything the main process decides later
(the next epoch, a resume state loaded into an already-running loader) must reach them
another way: ``SharedPlan`` is a small shared-memory block that the main process writes
and every worker reads when the DataLoader starts its next pass (torch calls
``iter(dataset)`` in each worker at each new epoch, persistent or not).

It holds two things:

* the dataset's epoch (``ShardDataset.set_epoch``), for plain ``DataLoader`` and
  ``StatefulDataLoader`` workers;
* an optional ``WorkerPlan`` (``ShardLoader`` writes one before each pass): the epoch,
  which worker is due first, and each worker's resume state.

Writes are guarded by a sequence number (odd while a write is under way), so a worker
never reads half of an update.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch

from shardpipe.errors import StateError

State = dict[str, Any]

_HEADER = 8  # int64 slots
_SEQ, _EPOCH, _HAS_PLAN, _PLAN_EPOCH, _FIRST, _LENGTH = range(6)


@dataclass(frozen=True)
class WorkerPlan:
    """What every DataLoader worker runs at its next pass.

    ``states[k]`` is logical worker ``k``'s ``ShardDataset.state_dict()`` (``None``: from
    the start of the epoch); DataLoader worker ``i`` plays logical worker
    ``(i + first_worker) % num_workers``, so that a resumed round robin continues with the
    worker that was due.
    """

    epoch: int
    first_worker: int = 0
    states: list[State | None] | None = None


class SharedPlan:
    """The epoch and ``WorkerPlan`` in shared memory: written by the main process, read by workers."""

    def __init__(self, capacity: int = 1 << 20):
        self._buf = torch.zeros(_HEADER * 8 + capacity, dtype=torch.uint8).share_memory_()

    @property
    def capacity(self) -> int:
        return self._buf.numel() - _HEADER * 8

    def _head(self) -> torch.Tensor:
        return self._buf[: _HEADER * 8].view(torch.int64)

    def _write(self, values: dict[int, int], body: bytes | None = None) -> None:
        head = self._head()
        head[_SEQ] += 1  # odd: a write is under way
        for slot, value in values.items():
            head[slot] = value
        if body:
            self._buf[_HEADER * 8 : _HEADER * 8 + len(body)] = torch.frombuffer(bytearray(body), dtype=torch.uint8)
        head[_SEQ] += 1

    def set_epoch(self, epoch: int) -> None:
        self._write({_EPOCH: epoch})

    def set_plan(self, plan: WorkerPlan | None) -> None:
        """Publish ``plan`` for the next pass of every worker (``None`` withdraws it)."""
        if plan is None:
            self._write({_HAS_PLAN: 0})
            return
        body = json.dumps(plan.states, separators=(",", ":")).encode() if plan.states is not None else b""
        if len(body) > self.capacity:
            raise ValueError(
                f"the workers' resume states take {len(body)} bytes, more than the {self.capacity} bytes "
                "shared with the workers; resume from a state saved at an epoch boundary"
            )
        values = {_HAS_PLAN: 1, _PLAN_EPOCH: plan.epoch, _FIRST: plan.first_worker, _LENGTH: len(body)}
        self._write(values, body)

    def read(self) -> tuple[int, WorkerPlan | None]:
        """(the epoch, the published plan or None), as one consistent snapshot."""
        head = self._head()
        for _ in range(10_000):
            seq = int(head[_SEQ])
            if seq % 2 == 0:
                values = head[:_HEADER].tolist()
                body = (
                    bytes(self._buf[_HEADER * 8 : _HEADER * 8 + values[_LENGTH]].numpy()) if values[_HAS_PLAN] else b""
                )
                if int(head[_SEQ]) == seq:
                    break
            time.sleep(0.0001)
        else:
            raise RuntimeError("the shared worker plan was being rewritten for over a second; cannot start the pass")
        if not values[_HAS_PLAN]:
            return values[_EPOCH], None
        states = json.loads(body) if body else None
        return values[_EPOCH], WorkerPlan(values[_PLAN_EPOCH], values[_FIRST], states)


def pass_start(plan: SharedPlan, resume: State | None, epoch: int) -> tuple[int, int, list | None, State | None]:
    """(epoch, first worker, every worker's state, this process's resume) for a pass starting here."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return (int(resume["epoch"]) if resume else epoch), 0, None, resume
    shared_epoch, published = plan.read()
    if published is not None:  # a ShardLoader pass: its plan wins over anything pickled in
        return published.epoch, published.first_worker, published.states, None
    return (int(resume["epoch"]) if resume else shared_epoch), 0, None, resume


def consumer_of(ctx: Any) -> dict[str, int]:
    """Which part of the data a pipeline with context ``ctx`` reads (saved with its state)."""
    return {"rank": ctx.rank, "world_size": ctx.world_size, "worker": ctx.worker, "num_workers": ctx.num_workers}


def check_consumer(state: State, ctx: Any) -> None:
    """Refuse to continue a mid-epoch state in another consumer's place (it would repeat or skip samples)."""
    saved = state.get("consumer")
    if state.get("stages") is None or saved is None:
        return
    here = consumer_of(ctx)
    if saved != here:
        raise StateError(
            f"cannot resume mid-epoch as worker {here['worker']} of {here['num_workers']} on rank "
            f"{here['rank']} of {here['world_size']}: the state was saved by worker {saved['worker']} of "
            f"{saved['num_workers']} on rank {saved['rank']} of {saved['world_size']}, and each consumer's "
            "position only holds for its own part of the data; resume with the same ranks and workers, or "
            "from a state saved at an epoch boundary"
        )
