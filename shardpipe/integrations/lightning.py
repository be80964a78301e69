"""PyTorch Lightning: a ``LightningDataModule`` whose loaders resume mid-epoch from Lightning's checkpoint.

::

    datamodule = ShardDataModule(train=ShardDataset("data/manifest.json", batch_size=64, ...), num_workers=4)
    trainer.fit(model, datamodule=datamodule)                            # checkpoints hold the loader position
    trainer.fit(model, datamodule=datamodule, ckpt_path="last.ckpt")     # resumes mid-epoch, exactly

Lightning saves the state of every train loader that has ``state_dict`` / ``load_state_dict``
in its checkpoint (the fit loop's ``combined_loader`` entry) and loads it back before the loader
is iterated again. Lightning also reads one batch ahead (to know which batch is the last), so a
``ShardLoader``'s own state would be one batch past the step being checkpointed and a resume
would skip that batch. ``LightningShardLoader`` therefore keeps the state after each batch it
handed over and reports the one after the last batch the trainer has processed; under DDP the
state holds every rank's position (Lightning writes rank 0's checkpoint) and each rank loads its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shardpipe.dataset import ShardDataset
from shardpipe.integrations.ranks_state import gather_json, pick_own
from shardpipe.loader import ShardLoader
from shardpipe.stages.base import State

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError("shardpipe.integrations.lightning needs Lightning: pip install lightning") from e


class LightningShardLoader:
    """A ``ShardLoader`` whose ``state_dict()`` matches the training step the trainer last processed."""

    def __init__(self, loader: ShardLoader, datamodule: pl.LightningDataModule):
        self.loader = loader
        self.datamodule = datamodule
        self._after: dict[int, State] = {}  # batches handed over this pass -> the loader's state after them
        self._base = 0  # the trainer's processed-batch count when this pass started
        self._started_by: Any = None  # the trainer of the latest pass
        self._loaded_by: Any = None  # the trainer that loaded this loader's state from its checkpoint

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def _processed(self) -> int:
        trainer = getattr(self.datamodule, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)

    def _resume_trainer_epoch(self) -> None:
        """On the first pass under a trainer that restored a checkpoint without this loader's state (Lightning
        loads it only into a run restarted mid-epoch: not after a checkpoint made at an epoch's end), start at
        the trainer's epoch, not at epoch 0 again."""
        trainer = getattr(self.datamodule, "trainer", None)
        if trainer is None or trainer is self._started_by:
            return
        self._started_by = trainer
        if trainer.ckpt_path is not None and self._loaded_by is not trainer:
            self.loader.set_epoch(trainer.current_epoch)

    def __iter__(self) -> Iterator[Any]:
        self._after = {}
        self._base = self._processed()
        self._resume_trainer_epoch()
        handed = 0
        for handed, batch in enumerate(self.loader, start=1):
            self._after[handed] = self.loader.state_dict()
            self._after.pop(handed - 8, None)  # the trainer is never more than a batch or two behind
            yield batch
        # the epoch is over (Lightning reads one batch ahead, so before its last step is processed): a
        # checkpoint after that step resumes at the next epoch, not at the end of this one
        self._after[handed] = self.loader.state_dict()

    def local_state_dict(self) -> State:
        """This rank's loader state right after the last batch the trainer processed."""
        done = self._processed() - self._base
        return self._after.get(done) or self.loader.state_dict()

    def state_dict(self) -> dict:
        """Every rank's ``local_state_dict()`` (collective under DDP; Lightning saves rank 0's checkpoint)."""
        return gather_json(self.local_state_dict())

    def load_state_dict(self, state: dict) -> None:
        self._after = {}
        self._loaded_by = getattr(self.datamodule, "trainer", None)
        self.loader.load_state_dict(pick_own(state, self.loader))


class ShardDataModule(pl.LightningDataModule):
    """Train (and optionally validation) ``ShardDataset`` s behind ``ShardLoader`` s, resumable mid-epoch.

    ``loader_options`` go to each ``ShardLoader`` (``pin_memory``, ``persistent_workers``, ...).
    The loaders are built once and kept, so each Lightning epoch is the next shardpipe epoch (a fit resumed
    from a checkpoint starts at the checkpoint's epoch).
    """

    def __init__(
        self, train: ShardDataset, val: ShardDataset | None = None, num_workers: int = 0, **loader_options: Any
    ):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.num_workers = num_workers
        self.loader_options = loader_options
        self._train: LightningShardLoader | None = None
        self._val: ShardLoader | None = None
        if val is not None:  # only then: Lightning runs a validation loop when the hook is overridden
            self.val_dataloader = self._val_dataloader  # type: ignore[method-assign]

    def train_dataloader(self) -> LightningShardLoader:
        if self._train is None:
            loader = ShardLoader(self.train_set, num_workers=self.num_workers, **self.loader_options)
            self._train = LightningShardLoader(loader, self)
        return self._train

    def _val_dataloader(self) -> ShardLoader:
        if self._val is None:
            self._val = ShardLoader(self.val_set, num_workers=self.num_workers, **self.loader_options)
        return self._val
