"""The collate steps a ``ShardLoader`` runs: in each worker, the batch with its worker's resume
state (packed into the pass's recycled buffers); without workers, a plain conversion. Both refuse to
run in a DataLoader a framework rebuilt from the loader's attributes, which would split the ranks'
data again and yield (state, batch) pairs."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_convert

from shardpipe.errors import SetupError
from shardpipe.handover import pack
from shardpipe.stages.base import State

_pass_checked = False  # this worker has seen the plan of a ShardLoader pass

#: why the collate step of a DataLoader rebuilt from a ShardLoader's attributes refuses to run
REBUILT_LOADER = (
    "ShardLoader's collate step runs in a DataLoader that ShardLoader did not start: a framework "
    "rebuilt the loader from its attributes (accelerator.prepare() does), which would yield "
    "(state, batch) pairs and split the ranks' data again; with Accelerate, use "
    "shardpipe.integrations.accelerate.prepare(accelerator, model, optimizer, loader)"
)


#: the element types ``default_convert`` returns as they are
_PLAIN = frozenset((str, int, float, bool, bytes, type(None)))


def convert(item: Any) -> Any:
    """What ``default_convert(item)`` returns (numpy arrays anywhere inside become tensors), without its
    walk over every element of a batch shardpipe made: a plain dict of tensors and lists of plain values
    (keys, urls, shard numbers) comes back as it is, where ``default_convert`` would copy it element by
    element (~130 us a batch of 64, in every worker)."""
    if type(item) is dict and all(
        isinstance(v, torch.Tensor) or (type(v) is list and all(type(x) in _PLAIN for x in v)) for v in item.values()
    ):
        return item
    return default_convert(item)


def with_state(item: Any) -> tuple[State, Any]:
    """Collate step in each worker: the item, with its worker's dataset state right after it."""
    global _pass_checked
    info = get_worker_info()
    assert info is not None, "ShardLoader's collate step runs in DataLoader workers"
    if not _pass_checked:
        if not info.dataset.worker_plan_published():
            raise SetupError(REBUILT_LOADER)
        _pass_checked = True
    item = convert(item)
    buffers = getattr(info.dataset, "buffers", None)
    if buffers is not None:  # the pool of the ShardLoader pass that started this worker, which unpacks
        item = pack(item, buffers, info.id)
    return info.dataset.state_dict(), item


class InlineCollate:
    """Collate step of a ShardLoader without workers: ``default_convert``, but only inside that
    loader's own passes, so a DataLoader a framework rebuilt from the loader's attributes (which
    copies ``collate_fn``) fails at its first item with ``SetupError``, as with workers."""

    def __init__(self) -> None:
        self.passes = 0  # the loader's inline passes under way

    def __call__(self, item: Any) -> Any:
        if not self.passes:
            raise SetupError(REBUILT_LOADER)
        return convert(item)
