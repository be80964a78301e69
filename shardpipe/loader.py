"""``ShardLoader``: a DataLoader for ``ShardDataset`` that advances the epoch by itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from .dataset import ShardDataset


class ShardLoader(DataLoader):
    """DataLoader over a ``ShardDataset`` (which batches itself, so ``batch_size=None`` here).

    Each new iteration moves the dataset to the next epoch, unless ``set_epoch`` was
    called since the last one, so the order changes every epoch with no extra code.
    """

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, pin_memory: bool = False, **kwargs: Any):
        if not isinstance(dataset, ShardDataset):
            raise TypeError(f"ShardLoader needs a ShardDataset, not {type(dataset).__name__}")
        kwargs.setdefault("prefetch_factor", 4 if num_workers else None)
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,  # workers must see the new epoch
            **kwargs,
        )
        self._iterations = 0
        self._epoch_seen = dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self._epoch_seen = epoch

    def __iter__(self) -> Iterator[Any]:
        ds: ShardDataset = self.dataset  # type: ignore[assignment]
        if self._iterations > 0 and ds.epoch == self._epoch_seen:
            ds.set_epoch(ds.epoch + 1)
        self._epoch_seen = ds.epoch
        self._iterations += 1
        return super().__iter__()
