"""``ShardDataset``: the whole pipeline as a ``torch.utils.data.IterableDataset``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import ErrorHandler, Policy
from .stages.base import Context, Pipeline, Stage, State
from .stages.batch import Batch
from .stages.decode import Decode
from .stages.fields import RequireFields
from .stages.samples import GroupSamples, SplitSamples
from .stages.shards import Shard, ShardList, SplitShards, expand_urls
from .stages.shuffle import Shuffle
from .stages.untar import Untar
from .stats import SharedStats

log = logging.getLogger("shardpipe")


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else RANK/WORLD_SIZE."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _fusable(transform: Any) -> bool:
    """True when the transform starts with a RandomResizedCrop (crop-aware decode applies)."""
    from .augment import Compose, RandomResizedCrop

    if isinstance(transform, Compose):
        return bool(transform.transforms) and isinstance(transform.transforms[0], RandomResizedCrop)
    return isinstance(transform, RandomResizedCrop)


class ShardDataset(IterableDataset):
    """Stream samples (or batches) from tar shards: local paths, ``file://`` or fsspec URLs.

    Every sample of every shard comes out exactly once per epoch, for any number of
    DataLoader workers and ranks: shards are split across consumers, or, when there are
    fewer shards than consumers, samples are. ``set_epoch(n)`` selects a different,
    deterministic order per epoch from one ``seed``.

    Args:
        urls: brace pattern (``"train-{000..127}.tar"``), list, or ``manifest.json`` URL.
        shuffle: ``False``, ``True`` (a buffer of 1000 samples) or a buffer size;
            shard order is shuffled per epoch too when shuffling is on.
        seed: the seed of every random choice (shard order, buffer, augmentation).
        decode: ``"rgb8"`` (numpy HWC), ``"torchrgb8"`` (torch CHW), ``"pil"``,
            ``"encoded"`` (images stay bytes, e.g. for GPU decode; labels and JSON are
            decoded), or ``None`` (every field stays bytes, as stored).
        decoder: image decoder backend (``"auto"`` = fastest installed, ``"pil"``, ...).
        transform: ``transform(img, rng) -> img`` on RGB uint8 arrays, or a plain callable.
        threads: decode threads inside each consumer process (0 = inline).
        batch_size: collate into batches of this size (``None`` yields samples).
        partial: keep the last, smaller batch.
        require: fields every sample must have (``"jpg;png"`` accepts either).
        split: ``"auto"``, ``"shards"`` or ``"samples"`` (see above).
        handler: error policy for bad data: ``"raise"``, ``"warn"`` or ``"skip"``.
        storage_options: passed to fsspec for remote URLs.
        rank, world_size: override the distributed rank (default: torch.distributed/env).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        shuffle: bool | int = False,
        seed: int = 0,
        decode: str | None = "rgb8",
        decoder: str = "auto",
        transform: Callable[..., Any] | None = None,
        threads: int = 0,
        batch_size: int | None = None,
        partial: bool = True,
        require: Sequence[str] = (),
        split: str = "auto",
        handler: Policy = "raise",
        allow_pickle: bool = False,
        storage_options: dict[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        if split not in ("auto", "shards", "samples"):
            raise ValueError(f"split must be 'auto', 'shards' or 'samples', not {split!r}")
        ErrorHandler(handler)  # validate the policy name early
        self.shards: list[Shard] = expand_urls(urls, storage_options)
        self.buffer_size = (1000 if shuffle is True else int(shuffle)) if shuffle else 0
        self.seed = seed
        self.decode = decode
        self.decoder = decoder
        self.transform = transform
        self.threads = threads
        self.batch_size = batch_size
        self.partial = partial
        self.require = tuple(require)
        self.split = split
        self.handler = handler
        self.allow_pickle = allow_pickle
        self.storage_options = storage_options
        self._rank = rank
        self._world = world_size
        self.epoch = 0
        self.stats = SharedStats()
        self._resume: State | None = None
        self._live: Pipeline | None = None

    # -- configuration ------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` from the next iteration on."""
        self.epoch = epoch

    def _context(self) -> Context:
        rank, world = distributed_rank()
        rank = self._rank if self._rank is not None else rank
        world = self._world if self._world is not None else world
        info = get_worker_info()
        return Context(
            seed=self.seed,
            epoch=self.epoch,
            rank=rank,
            world_size=world,
            worker=info.id if info else 0,
            num_workers=info.num_workers if info else 1,
            errors=ErrorHandler(self.handler),
            storage_options=self.storage_options,
        )

    def _split_mode(self, ctx: Context) -> str:
        if self.split != "auto":
            if self.split == "shards" and len(self.shards) < ctx.split_count and ctx.split_index == 0:
                log.warning(
                    "%d shards for %d consumers (ranks x workers): %d will get no data; "
                    "use split='samples' or write more shards",
                    len(self.shards),
                    ctx.split_count,
                    ctx.split_count - len(self.shards),
                )
            return self.split
        if len(self.shards) >= ctx.split_count:
            return "shards"
        if ctx.split_index == 0:
            log.warning(
                "%d shards for %d consumers (ranks x workers): splitting by sample instead, so "
                "every consumer reads all shards; write at least %d shards for best throughput",
                len(self.shards),
                ctx.split_count,
                ctx.split_count,
            )
        return "samples"

    def build_pipeline(self, ctx: Context | None = None) -> Pipeline:
        """The stage chain this dataset runs (also useful to inspect or extend)."""
        ctx = ctx or self._context()
        mode = self._split_mode(ctx)
        stages: list[Stage[Any]] = [ShardList(self.shards, shuffle=self.buffer_size > 0)]
        if mode == "shards" and ctx.split_count > 1:
            stages.append(SplitShards("all"))
        stages += [Untar(), GroupSamples()]
        if mode == "samples" and ctx.split_count > 1:
            stages.append(SplitSamples())
        if self.require:
            stages.append(RequireFields(self.require))
        if self.buffer_size:
            stages.append(Shuffle(self.buffer_size))
        if self.decode is not None:
            stages.append(
                Decode(
                    self.decode,
                    self.decoder,
                    self.transform,
                    threads=self.threads,
                    allow_pickle=self.allow_pickle,
                    fuse=_fusable(self.transform),
                )
            )
        if self.batch_size:
            stages.append(Batch(self.batch_size, self.partial))
        return Pipeline(stages, ctx)

    # -- iteration ----------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        ctx = self._context()
        pipeline = self.build_pipeline(ctx)
        pipeline.reset(self._resume)
        self._resume = None
        self._live = pipeline
        row = 0 if get_worker_info() is None else 1 + ctx.worker
        flusher = _StatsFlusher(self.stats, row, ctx)
        flush_every = 1 if self.batch_size else 64
        try:
            for n, item in enumerate(pipeline, 1):
                if n % flush_every == 0:
                    flusher.flush()
                yield item
        finally:
            flusher.flush()
            for stage in pipeline.stages:
                close = getattr(stage, "close", None)
                if close is not None:
                    close()

    # -- resume (in-process; see ShardLoader for DataLoader workers) -----------
    def state_dict(self) -> State:
        """The position of the live iteration in this process (num_workers=0)."""
        if self._live is None:
            return {"version": Pipeline.STATE_VERSION, "epoch": self.epoch, "stages": None}
        return self._live.get_state()

    def load_state_dict(self, state: State) -> None:
        """Continue from ``state`` on the next iteration."""
        self.epoch = int(state["epoch"])
        self._resume = state if state.get("stages") is not None else None


class _StatsFlusher:
    """Adds what a pipeline measured since the last flush into the shared stats."""

    def __init__(self, stats: SharedStats, row: int, ctx: Context):
        self.stats, self.row, self.ctx = stats, row, ctx
        self._timers: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}

    def flush(self) -> None:
        c = self.ctx
        dt = {k: v - self._timers.get(k, 0.0) for k, v in c.timers.items()}
        dc = {k: v - self._counts.get(k, 0) for k, v in c.counts.items()}
        de = {k: v - self._errors.get(k, 0) for k, v in c.errors.counts.items()}
        self.stats.add(self.row, dt, dc, de)
        self._timers, self._counts, self._errors = dict(c.timers), dict(c.counts), dict(c.errors.counts)
