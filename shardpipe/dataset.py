"""``ShardDataset``: the whole pipeline as a ``torch.utils.data.IterableDataset``."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from shardpipe.augment.base import as_transform
from shardpipe.errors import ErrorHandler, OnError
from shardpipe.format.manifest import load_manifest
from shardpipe.image.decoders.registry import DECODERS
from shardpipe.image.fused import fusable
from shardpipe.indexed import block_shuffle_source
from shardpipe.io.deferred import DEFER_FROM
from shardpipe.io.opener import ShardOpener
from shardpipe.io.urls import single_manifest
from shardpipe.options import BatchOptions, DecodeOptions, OpenOptions, SplitOptions, build_groups
from shardpipe.passes import SharedPlan, WorkerPlan, check_consumer, consumer_of, pass_start
from shardpipe.protocol import ShardsFingerprint, WorkerPassHooks
from shardpipe.ranks import distributed_rank
from shardpipe.split.plan import plan_segments
from shardpipe.stages.base import Context, Pipeline, Stage, State
from shardpipe.stages.batch import Batch
from shardpipe.stages.block import BlockShuffleSamples
from shardpipe.stages.buffers import BatchBuffers
from shardpipe.stages.decode import Decode
from shardpipe.stages.epochs import EpochRequest, epoch_stages
from shardpipe.stages.fields import RequireFields
from shardpipe.stages.shards import Shard, expand_urls, manifest_shards
from shardpipe.stages.shuffle import Shuffle
from shardpipe.stages.untar import Untar
from shardpipe.state import STATE_VERSION, StateError, validate_dataset_state
from shardpipe.stats import SharedStats, StatsFlusher
from shardpipe.workermemory import tune_worker_allocator
from shardpipe.workers import ProgressMarker, WorkerProgress

log = logging.getLogger("shardpipe")


def read_options_of(io: OpenOptions) -> Any:
    """``io.read_options`` (or the defaults) with ``io.memory_limit`` applied."""
    if io.memory_limit is None:
        return io.read_options
    import dataclasses

    from shardpipe.io.remote import ReadOptions

    return dataclasses.replace(io.read_options or ReadOptions(), memory_limit=io.memory_limit)


class ShardDataset(IterableDataset, WorkerPassHooks):
    """Stream samples (or batches) from tar shards: local paths, ``file://`` or fsspec URLs.

    Each epoch, every consumer (rank x DataLoader worker) reads its own part of the data,
    and no sample is read twice: with a manifest (sample counts), contiguous sample
    ranges of equal length per rank (see ``epoch_policy``: ``drop`` leaves out fewer than
    ``world_size`` samples, ``pad`` repeats a few, marked); without one, on a single
    rank, whole shards dealt round-robin, or samples when there are fewer shards than
    consumers (``split``), so every sample comes out exactly once. ``set_epoch(n)``
    selects a different, deterministic order per epoch from one ``seed``.

    Loaders use only the loader protocol (``shardpipe.protocol.LoaderSource``): ``epoch``/
    ``set_epoch``; ``state_dict()`` / ``load_state_dict()``, this process's position (in a
    DataLoader worker, that worker's part: torchdata's ``StatefulDataLoader`` calls them
    there); ``fingerprint()``; ``set_worker_plan()``, what every worker's next pass starts
    from; and the calls around a pass of workers. The epoch and the worker plan live in
    shared memory, so running persistent workers see them.

    Options come in four groups (``shardpipe.options``), passed as objects after
    ``urls`` or as flat keywords of the same names (keywords replace fields of a group
    given as an object)::

        ShardDataset(urls, SplitOptions(shuffle=5000, seed=1), BatchOptions(256))
        ShardDataset(urls, shuffle=5000, seed=1, batch_size=256)  # the same

    Args:
        urls: brace pattern (``"train-{000..127}.tar"``), list, or ``manifest.json`` URL.
        require: fields every sample must have (``"jpg;png"`` accepts either).
        on_error: what bad data does: ``"raise"``, ``"warn"`` (log and skip) or ``"skip"``.

    Every other keyword is a field of one options group, documented there (``shardpipe.options``):

    * :class:`~shardpipe.options.SplitOptions`: ``shuffle`` (``False``, ``True`` or a window of
      samples), ``shuffle_algo`` (``"window"``/``"auto"``, or ``"block"``: a seeded permutation of the
      epoch read by random access through the manifest's index, which mixes class-ordered shards like
      a true shuffle), ``shuffle_block_size``, ``seed``, ``split``, ``epoch_policy``,
      ``samples_per_epoch``, ``rank``, ``world_size``;
    * :class:`~shardpipe.options.DecodeOptions`: ``decode`` (``"rgb8"``, ``"torchrgb8"``, ``"pil"``,
      ``"encoded"`` or None), ``decoder``, ``transform``, ``num_threads``, ``allow_pickle``;
    * :class:`~shardpipe.options.BatchOptions`: ``batch_size``, ``drop_last``, ``channels_last``;
    * :class:`~shardpipe.options.OpenOptions`: ``storage_options``, ``cache_dir``, ``cache_size``,
      ``read_options``, ``prefetch``, ``memory_limit``, ``allow_pipe``, ``max_member_size``,
      ``verify``, ``manifest_paths``.

    A value an option refuses is an error here, naming it, not mid-epoch in a worker.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *groups: OpenOptions | SplitOptions | DecodeOptions | BatchOptions,
        require: Sequence[str] = (),
        on_error: OnError = "raise",
        **options: Any,
    ):
        super().__init__()
        built = build_groups(groups, options)
        self.open_options: OpenOptions = built[OpenOptions]
        self.split_options: SplitOptions = built[SplitOptions]
        self.decode_options: DecodeOptions = built[DecodeOptions]
        self.batch_options: BatchOptions = built[BatchOptions]
        ErrorHandler(on_error)  # validate the policy name early
        if self.decode_options.transform is not None:
            as_transform(self.decode_options.transform)  # a wrong signature fails here, not as every sample
        if self.decode_options.decode is not None and self.decode_options.decoder not in DECODERS.also:
            DECODERS.entry(self.decode_options.decoder)  # an unknown name fails here, not in a worker
        self.require = tuple(require)
        self.on_error = on_error
        storage = self.open_options.storage_options
        storage = dict(storage) if storage is not None else None
        paths = self.open_options.manifest_paths
        manifest = single_manifest(urls) if self.split_options.shuffle_algo == "block" else None
        reading = read_options_of(self.open_options)
        # (manifests, their indexes and a glob's listing are read under the read options' retries and timeout)
        loaded = load_manifest(manifest, storage, paths, reading) if manifest is not None else None  # read once
        if loaded is not None:
            self.shards: list[Shard] = manifest_shards(loaded)
        else:
            self.shards = expand_urls(urls, storage, paths, reading)
        self.has_counts = all(s.samples is not None for s in self.shards)
        policy = self.split_options.epoch_policy
        if policy in ("drop", "pad") and not self.has_counts:
            raise ValueError(
                f"epoch_policy={policy!r} needs sample counts per shard: pass the shards' manifest.json "
                "(written by ShardWriter and `shardpipe write`; `shardpipe index SHARDS -o manifest.json` makes one "
                "for existing shards) instead of a URL pattern"
            )
        o = self.open_options
        #: the indexed shards when the block shuffle applies (else None: the windowed shuffle)
        self.indexed = block_shuffle_source(
            urls, self.split_options.shuffle, self.split_options.shuffle_algo,
            storage_options=storage, cache_dir=o.cache_dir, cache_size=o.cache_size, read_options=reading,
            loaded=loaded, manifest_paths=o.manifest_paths,
        )  # fmt: skip
        self._main_rank = distributed_rank(strict=False)  # asked again, strictly, when a pass starts
        self.stats = SharedStats()
        #: a ShardLoader's recycled shared-memory batch buffers, set while its workers start
        self.buffers: BatchBuffers | None = None
        self.progress = WorkerProgress()  # where each DataLoader worker is (the loader's stall watchdog)
        self._plan = SharedPlan()  # the epoch and worker plan, seen by running (persistent) workers
        self._epoch = 0
        self.epoch_generation = 0  # set_epoch calls in this process (the loader protocol's)
        self._shards_hash: ShardsFingerprint | None = None  # the shard list's hash, kept for fingerprint()
        self._resume: State | None = None  # loaded here: where this process's next pass starts
        self._pass: _Pass | None = None  # the latest pass started in this process

    # the options most code asks for, by name
    @property
    def seed(self) -> int:
        return self.split_options.seed

    @property
    def epoch_policy(self) -> str:
        """The configured epoch policy (``auto`` unresolved; see :meth:`resolved_policy`)."""
        return self.split_options.epoch_policy

    @property
    def buffer_size(self) -> int:
        return self.split_options.buffer_size

    @property
    def shuffle_block_size(self) -> int | None:
        return self.split_options.shuffle_block_size

    @property
    def batch_size(self) -> int | None:
        return self.batch_options.batch_size

    #: each pass starts afresh from its epoch (or a loaded state): nothing to hand over between passes
    carries_state = False

    # -- configuration ------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch whose order the next pass uses (the current one, inside a pass)."""
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` from the next pass on, in this process and in its
        DataLoader workers (running persistent workers included)."""
        self._epoch = int(epoch)
        self.epoch_generation += 1
        if get_worker_info() is None:
            self._plan.set_epoch(self._epoch)

    def set_worker_plan(self, plan: WorkerPlan | None) -> None:
        """Fix the epoch, round-robin start and resume states of every DataLoader worker's next
        pass (``ShardLoader`` does this before each pass); ``None`` withdraws the plan, and
        workers follow ``epoch`` again."""
        if get_worker_info() is not None:
            raise RuntimeError("set_worker_plan is for the main process (the one that starts the DataLoader)")
        if plan is not None and plan.states is not None:
            for state in plan.states:
                if state is not None:
                    validate_dataset_state(state)
                    self._check_fingerprint(state)
        self._plan.set_plan(plan)

    def worker_plan_published(self) -> bool:
        """True while a ``ShardLoader`` pass has published its worker plan (read in workers too)."""
        return self._plan.read()[1] is not None

    def rank_and_world(self) -> tuple[int, int]:
        """This process's (rank, world_size): the constructor's override, else torch.distributed/env.

        DataLoader workers use what the main process saw last (the process group does
        not carry over into worker processes).
        """
        if get_worker_info() is None:
            self._main_rank = distributed_rank()
        rank, world = self._main_rank
        split = self.split_options
        return (
            split.rank if split.rank is not None else rank,
            split.world_size if split.world_size is not None else world,
        )

    def warm(self) -> None:
        """Import and resolve what the pipeline needs (decoder backend, transforms) in this process.

        Called before workers start, so that forked workers find it done instead of
        importing it themselves (an import in a forked child can wait on a lock another
        parent thread held at the fork).
        """
        dec = self.decode_options
        if dec.decode is not None and dec.decode != "encoded":
            from shardpipe.image.decoders import get_decoder

            get_decoder(dec.decoder)
        if dec.transform is not None:
            fusable(dec.transform)  # imports the transform's modules

    def fingerprint(self) -> str:
        """A short hash of what a resume state depends on: shards, sample counts and options."""
        if self._shards_hash is None:
            self._shards_hash = ShardsFingerprint(self.shards)
        # hashed as keep-last (not drop_last): the text is part of every saved state's fingerprint
        keep_last = not self.batch_options.drop_last
        options = f"{self.seed}|{self.buffer_size}|{self.batch_size}|{keep_last}|{self.epoch_policy}"
        # the block shuffle is another order: a window state must not load here (nor the reverse)
        block = f"|block|{self.shuffle_block_size}" if self.indexed is not None else ""
        return self._shards_hash.of(options, block)

    def pass_context(
        self, epoch: int | None = None, rotation: int = 0, progress: WorkerProgress | None = None
    ) -> Context:
        """The context a pass in this process runs with: seed, ``epoch`` (default: ``self.epoch``),
        rank, and the DataLoader worker (its id moved by ``rotation``, so that a resumed round robin
        continues). In a worker, the pass marks where it is in ``progress`` (default: this
        dataset's table; a ``MixedDataset`` gives one table for all its sources)."""
        rank, world = self.rank_and_world()
        info = get_worker_info()
        marker = None
        if info is not None:
            tune_worker_allocator()  # a worker's image buffers stay mapped from one image to the next
            from shardpipe.workerstart import watch_trainer_from_worker  # (workers only)

            watch_trainer_from_worker()  # a forkserver's child would outlive a killed trainer
            table = self.progress if progress is None else progress
            marker = ProgressMarker(table, info.id, {s.url: s.index for s in self.shards})
            marker("worker set-up")
        return Context(
            progress=marker,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=rank,
            world_size=world,
            # the logical worker: rotated so that a resumed loader continues its round robin
            worker=(info.id + rotation) % info.num_workers if info else 0,
            num_workers=info.num_workers if info else 1,
            errors=ErrorHandler(self.on_error),
        )

    def resolved_policy(self, world_size: int) -> str:
        """The epoch policy in effect for ``world_size`` ranks (resolving ``auto``)."""
        if self.epoch_policy != "auto":
            return self.epoch_policy
        if self.has_counts:
            return "drop"
        if world_size == 1:
            return "uneven"
        raise ValueError(
            f"{world_size} ranks need equal epochs, which need sample counts per shard: pass the shards' "
            "manifest.json (written by ShardWriter and `shardpipe write`; for existing shards create one with "
            "`shardpipe index SHARDS -o manifest.json`), or choose "
            "epoch_policy='resample' with samples_per_epoch=N, or epoch_policy='uneven' if your loop "
            "tolerates ranks with different batch counts"
        )

    def planned_samples(self, ctx: Context) -> int | None:
        """The most samples the consumer of ``ctx`` reads in ``ctx.epoch`` (None: unknown without
        sample counts); a resume state's shuffle window is checked against it."""
        split = self.split_options
        policy = self.resolved_policy(ctx.world_size)
        if policy == "resample":
            return (split.samples_per_epoch or 0) // ctx.split_count
        if not self.has_counts:
            return None
        counts = [int(s.samples) for s in self.shards]  # type: ignore[arg-type]  # has_counts
        if policy not in ("drop", "pad"):
            return sum(counts)  # uneven: a consumer's part is at most every sample
        segments = plan_segments(
            counts, seed=ctx.seed, epoch=ctx.epoch, rank=ctx.rank, world_size=ctx.world_size,
            worker=ctx.worker, num_workers=ctx.num_workers, shuffle=self.buffer_size > 0, policy=policy,
        )  # fmt: skip
        return sum(seg.stop - seg.start for seg in segments)

    def _untar(self, give_up_after: int | None = None) -> Untar:
        io = self.open_options
        opener = ShardOpener(
            io.prefetch, storage_options=dict(io.storage_options) if io.storage_options is not None else None,
            cache_dir=io.cache_dir, cache_size=io.cache_size, read_options=read_options_of(io),
            allow_pipe=io.allow_pipe,
        )  # fmt: skip
        # a shuffle window (indexed datasets take the block shuffle and no Untar) reads what it
        # holds as it emits it: members wait in their files until then
        defer_from = DEFER_FROM if self.buffer_size else None
        return Untar(opener, give_up_after, max_member_size=io.max_member_size, verify=io.verify, defer_from=defer_from)

    def _shard_stages(self, ctx: Context) -> list[Stage[Any]]:
        """The stages up to grouped samples, per the epoch policy."""
        if self.indexed is not None:
            return [BlockShuffleSamples(self.indexed, self.shuffle_block_size, self.resolved_policy(ctx.world_size))]
        split = self.split_options
        request = EpochRequest(
            self.shards, ctx, self.buffer_size > 0, split.split, split.samples_per_epoch, untar=self._untar
        )
        return epoch_stages(self.resolved_policy(ctx.world_size), request)

    def build_pipeline(self, ctx: Context | None = None) -> Pipeline:
        """The stage chain this dataset runs (also useful to inspect or extend)."""
        ctx = ctx or self.pass_context()
        stages = self._shard_stages(ctx)
        if self.require:
            stages.append(RequireFields(self.require))
        if self.buffer_size and self.indexed is None:
            stages.append(Shuffle(self.buffer_size, planned=self.planned_samples))
        dec = self.decode_options
        if dec.decode is not None:
            stages.append(
                Decode(
                    dec.decode,
                    dec.decoder,
                    dec.transform,
                    num_threads=dec.num_threads,
                    allow_pickle=dec.allow_pickle,
                    fuse=fusable(dec.transform),
                )
            )
        bat = self.batch_options
        if bat.batch_size:
            stages.append(
                Batch(bat.batch_size, drop_last=bat.drop_last, channels_last=bat.channels_last, buffers=self.buffers)
            )
        return Pipeline(stages, ctx)

    # -- iteration ----------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        # decided now, not at the first item: torch calls iter() in each worker when the
        # DataLoader starts a pass, and StatefulDataLoader asks for state_dict() right after
        epoch, rotation, states, resume = pass_start(self._plan, self._resume, self._epoch)
        self._resume = None
        self._epoch = epoch
        ctx = self.pass_context(epoch, rotation)
        if states is not None:
            if len(states) != ctx.num_workers:
                raise ValueError(f"worker plan has {len(states)} resume states for {ctx.num_workers} workers")
            resume = states[ctx.worker]
        if resume is not None:
            self._check_fingerprint(resume)
            check_consumer(resume, ctx)
        self._pass = _Pass(ctx, resume)
        return self._run(self._pass)

    def _run(self, current: _Pass) -> Iterator[Any]:
        ctx = current.ctx
        pipeline = self.build_pipeline(ctx)
        pipeline.reset(current.resume)
        current.pipeline = pipeline
        row = 0 if get_worker_info() is None else 1 + ctx.worker
        flusher = StatsFlusher(self.stats, row, ctx)
        flush_every = 1 if self.batch_size else 64
        try:
            for n, item in enumerate(pipeline, 1):
                if n % flush_every == 0:
                    flusher.flush()
                ctx.where("hand-over")
                yield item
            ctx.where("done")
            self._warn_of_skips_between_ranks(ctx)
        finally:
            flusher.flush()
            pipeline.close()

    def _warn_of_skips_between_ranks(self, ctx: Context) -> None:
        """Say so when a pass of one of several ranks skipped samples: the plan gave every rank the same
        number, skipped ones are not replaced, so this rank may end the epoch a batch short of the others
        (DDP then pairs different steps, or waits at the epoch's end)."""
        skipped = sum(ctx.errors.counts.values())
        if not skipped or ctx.world_size == 1 or self.resolved_policy(ctx.world_size) not in ("drop", "pad"):
            return
        log.warning(
            "rank %d (worker %d) skipped %d bad samples in epoch %d (%s): the ranks got equal shares, and skipped "
            "samples are not replaced, so this rank may make fewer batches than the others; keep "
            "on_error='raise', or check the shards with `shardpipe verify`, where batch counts must match",
            ctx.rank, ctx.worker, skipped, ctx.epoch, ", ".join(f"{k}: {n}" for k, n in sorted(ctx.errors.counts.items())),
        )  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        # the live pass (threads, open files, closures) stays in this process
        return {**self.__dict__, "_pass": None, "_shards_hash": None}

    # -- resume: the Stateful protocol (torchdata's StatefulDataLoader calls it in each worker)
    def state_dict(self) -> State:
        """Where this process's pass stands: after the last item it yielded (in a DataLoader
        worker, that worker's part). Small and JSON-serialisable; a state loaded but not yet
        started is returned as loaded."""
        if self._resume is not None:
            return self._resume
        current = self._pass
        if current is None:
            return {
                "version": STATE_VERSION,
                "epoch": self._epoch,
                "stages": None,
                "fingerprint": self.fingerprint(),
            }
        if current.pipeline is not None:
            state = current.pipeline.get_state()
        else:
            state = current.resume or {"version": STATE_VERSION, "epoch": current.ctx.epoch, "stages": None}
        return {**state, "consumer": consumer_of(current.ctx), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: State) -> None:
        """Start this process's next pass from ``state`` (from ``state_dict()``): its epoch, and
        mid-epoch its exact position (refused if saved for other data or another consumer). A state
        that does not fit this dataset is a ``StateError`` naming the field (``shardpipe.state``)."""
        validate_dataset_state(state)
        self._check_fingerprint(state)
        self.set_epoch(int(state["epoch"]))
        self._resume = state

    def _check_fingerprint(self, state: State) -> None:
        saved = state.get("fingerprint")
        if saved is not None and saved != self.fingerprint():
            raise StateError(
                "dataset state was saved for other shards or options (shard list, sample counts, seed, "
                "shuffle, batch size or epoch policy differ): resuming would repeat or skip samples "
                f"(state fingerprint {saved}, this dataset's {self.fingerprint()})"
            )


class _Pass:
    """One pass in this process: its context, the state it starts from, and its pipeline once running."""

    def __init__(self, ctx: Context, resume: State | None):
        self.ctx, self.resume = ctx, resume
        self.pipeline: Pipeline | None = None
