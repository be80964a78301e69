"""Hugging Face Accelerate: prepare a ``ShardLoader`` without Accelerate re-splitting it.

``accelerator.prepare(loader)`` rebuilds a DataLoader from its attributes and then splits or
dispatches the batches of an IterableDataset across processes itself; a ``ShardDataset``
already gives every rank its own equal share, so that would read samples twice or drop them
(and the rebuilt loader is refused with ``SetupError``). Use instead::

    from shardpipe.integrations import accelerate as sp_accelerate

    model, optimizer, loader = sp_accelerate.prepare(accelerator, model, optimizer, ShardLoader(dataset, num_workers=4))

Everything but the loaders goes through ``accelerator.prepare``. Each ``ShardLoader`` comes back
wrapped in an ``AcceleratedShardLoader``: batches moved to ``accelerator.device``, the end of each
epoch told to Accelerate (so ``accelerator.accumulate`` syncs gradients on the last batch), and its
position registered for ``accelerator.save_state`` / ``load_state``, which then resume mid-epoch
exactly. Accelerate saves custom state from the main process only, so the wrapper's state holds
every rank's loader state (gathered as JSON over the process group) and each rank loads its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from shardpipe.errors import SetupError
from shardpipe.integrations.ranks_state import gather_json, pick_own
from shardpipe.loader import ShardLoader
from shardpipe.protocol import LoaderSource
from shardpipe.stages.base import State

try:
    from accelerate.data_loader import DataLoaderStateMixin
    from accelerate.state import GradientState
    from accelerate.utils import send_to_device
except ImportError as e:  # pragma: no cover - only without accelerate installed
    raise ImportError("shardpipe.integrations.accelerate needs Accelerate: pip install accelerate") from e


def _check_config(accelerator: Any) -> None:
    """Refuse Accelerate data-loader options that would re-split the ranks' already separate shares."""
    if getattr(accelerator, "dispatch_batches", None):
        raise SetupError(
            "Accelerator(dataloader_config=DataLoaderConfiguration(dispatch_batches=True)) has rank 0 read every "
            "batch and send slices to the others, but each rank's ShardDataset reads only its own share: the other "
            "ranks' samples would never be read. Leave dispatch_batches unset (or False)"
        )
    if getattr(accelerator, "split_batches", False):
        raise SetupError(
            "split_batches=True cuts each batch into one piece per process, but each rank's ShardDataset already "
            "makes its own batches of batch_size samples from its own share; leave split_batches=False and give "
            "ShardDataset(batch_size=...) the per-process batch size"
        )


def _check_plain_loaders(objects: tuple[Any, ...]) -> None:
    """Refuse a plain DataLoader over a shardpipe dataset: Accelerate would shard what each rank already reads."""
    for obj in objects:
        if isinstance(obj, DataLoader) and not isinstance(obj, ShardLoader) and isinstance(obj.dataset, LoaderSource):
            raise SetupError(
                f"a DataLoader over a {type(obj.dataset).__name__} would be split again by Accelerate (each rank "
                "would keep only part of its own share, or rank 0 would read for all): pass "
                "ShardLoader(dataset, num_workers=...) instead, which this prepare keeps whole and resumable"
            )


def _check_ranks(loader: ShardLoader, accelerator: Any) -> None:
    rank, world = loader.source.rank_and_world()
    if (rank, world) != (accelerator.process_index, accelerator.num_processes):
        raise SetupError(
            f"the ShardDataset reads as rank {rank} of {world}, but Accelerate runs this as process "
            f"{accelerator.process_index} of {accelerator.num_processes}: samples would be read twice or not at all. "
            "Drop ShardDataset's rank=/world_size= (they are taken from Accelerate's process group)"
        )


class AcceleratedShardLoader(DataLoaderStateMixin):
    """A ``ShardLoader`` as Accelerate sees a prepared DataLoader: device placement, epoch end, checkpoints.

    Iterating it iterates the loader (a new epoch each pass, like ``ShardLoader``).
    ``state_dict()`` is collective when several processes run (call it, like
    ``accelerator.save_state``, on every process).
    """

    def __init__(self, loader: ShardLoader, accelerator: Any, device_placement: bool = True):
        self.loader = loader
        self.device = accelerator.device if device_placement else None
        self.non_blocking = bool(getattr(accelerator, "non_blocking", False))
        self.gradient_state = GradientState()
        self._drop_last = True  # remainder stays -1: gather_for_metrics keeps every sample (no padding was added)
        self._position: State | None = None  # the loader's state after the batch last yielded (one is read ahead)

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def batch_size(self) -> int | None:
        """Samples per batch on each process (the dataset's ``batch_size``)."""
        return self.loader.source.batch_size

    @property
    def total_batch_size(self) -> int | None:
        """Samples per step over all processes."""
        size = self.batch_size
        return None if size is None else size * self.loader.source.rank_and_world()[1]

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        self.begin()
        try:
            batches = iter(self.loader)
            current = next(batches, None)
            while current is not None:
                self._position = self.loader.state_dict()  # before reading ahead
                following = next(batches, None)
                if following is None:
                    self.end_of_dataloader = True
                    self._position = None  # the loader's own state now says: epoch done
                yield current if self.device is None else send_to_device(current, self.device, self.non_blocking)
                current = following
        finally:
            self._position = None
            self.end()

    def local_state_dict(self) -> State:
        """This process's loader state, resuming right after the batch last yielded."""
        return self._position if self._position is not None else self.loader.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """Every rank's loader state (collective under a process group): what ``accelerator.save_state`` stores."""
        return gather_json(self.local_state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's entry of a ``state_dict()`` (one saved mid-epoch is refused when the number of ranks
        differs; one saved between epochs fits any)."""
        self.loader.load_state_dict(pick_own(state, self.loader))


def prepare(accelerator: Any, *objects: Any, device_placement: bool = True) -> Any:
    """``accelerator.prepare(*objects)``, with each ``ShardLoader`` kept whole and made resumable.

    Returns what ``accelerator.prepare`` returns (one object, or a tuple in the same order), with
    every ``ShardLoader`` replaced by an ``AcceleratedShardLoader`` that is registered for
    ``accelerator.save_state``. Raises ``SetupError`` for ``dispatch_batches=True`` or
    ``split_batches=True``, when the dataset's ranks differ from Accelerate's processes, or for a plain
    ``DataLoader`` over a ``ShardDataset`` (or ``MixedDataset``).
    """
    _check_plain_loaders(objects)
    if any(isinstance(obj, ShardLoader) for obj in objects):
        _check_config(accelerator)
    others = [obj for obj in objects if not isinstance(obj, ShardLoader)]
    prepared = accelerator.prepare(*others) if others else ()
    prepared = list(prepared) if isinstance(prepared, tuple) else [prepared]
    out: list[Any] = []
    for obj in objects:
        if isinstance(obj, ShardLoader):
            _check_ranks(obj, accelerator)
            wrapped = AcceleratedShardLoader(obj, accelerator, device_placement)
            accelerator.register_for_checkpointing(wrapped)
            out.append(wrapped)
        else:
            out.append(prepared.pop(0))
    return out[0] if len(out) == 1 else tuple(out)
