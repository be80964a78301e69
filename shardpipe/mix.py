"""``MixedDataset``: draw samples from several ``ShardDataset`` sources in fixed proportions.

What an epoch means here (the policy, in full):

* A mixed epoch is ``samples_per_epoch`` samples over all ranks. Each consumer (rank x
  DataLoader worker) takes ``samples_per_epoch // (ranks x workers)`` of them, so every
  rank gets the same number of samples and batches.
* Each consumer's share is split between the sources by ``weights`` (largest remainder,
  so the proportions are exact to one sample per source and consumer), and the order in
  which the sources take turns is a seeded permutation of that multiset, different each
  epoch. Proportions therefore hold exactly, not just on average.
* Every source keeps its own epochs: it is read as one continuous stream of its own
  epochs (each in its own seeded order), so a small source cycles through several of
  its epochs in one mixed epoch and a large one continues where the previous mixed epoch
  left it instead of restarting. Within each of its own epochs a source still yields
  every one of its samples once (under its own epoch policy).
* Each source counts what its pipeline measured in its own ``stats`` (skipped samples
  by error, links stepped over, stage times), summed over DataLoader workers, as when
  it is read alone.
* Resume state is small JSON: the mixed epoch, how many samples this consumer has
  drawn, and each source's pipeline state (its own epoch and position). A pass runs the
  epoch set (``set_epoch``, or ``load_state_dict``), not the loaded state's: a state saved
  after an epoch's last draw is the next epoch's start, so that epoch's rest is empty
  (also when loaded after ``set_epoch`` of that epoch, as torchdata's ``StatefulDataLoader``
  without workers does when the pass starts).
* Between epochs the sources go on from where they stand: in this process, and with
  ``ShardLoader`` (fresh or persistent workers), which hands each worker the state its
  previous pass ended with (``carries_state``). A pass that starts without that state
  (a jump to another epoch, a plain ``DataLoader``, a loaded state that holds no source
  positions) starts each source at its own epoch equal to the mixed epoch. A state saved
  between epochs holds each consumer's positions, so it resumes with the same split only.

Sources decode and augment their samples themselves (their ``decode``/``transform``);
``MixedDataset`` only batches (``batch_size``) what they yield, so the sources must not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from shardpipe.dataset import ShardDataset
from shardpipe.passes import SharedPlan, WorkerPlan, consumer_of, pass_start
from shardpipe.protocol import ShardsFingerprint, WorkerPassHooks
from shardpipe.stages.base import Context, Pipeline, State
from shardpipe.stages.batch import collate
from shardpipe.stages.buffers import BatchBuffers
from shardpipe.state import STATE_VERSION, StateError, validate_mixed_state
from shardpipe.stats import StatsFlusher
from shardpipe.workers import WorkerProgress


def quotas(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` draws by ``weights`` (largest remainder): exact to one draw per source."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(over="ignore"):
        overflows = not np.isfinite(w.sum())
    if overflows:  # huge finite weights: their sum is inf (and every quota would be 0)
        w = w / w.max()
    raw = w / w.sum() * total
    counts = np.floor(raw).astype(np.int64)
    # hand out what flooring left over to the largest remainders (ties: the lower index)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return [int(c) for c in counts]


def draw_order(weights: Sequence[float], total: int, seed: int, epoch: int, consumer: int) -> np.ndarray:
    """The source of each of a consumer's ``total`` draws in ``epoch``: a seeded permutation of the quotas."""
    counts = quotas(weights, total)
    order = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, consumer, 0x6D6978])))
    return rng.permutation(order)


class MixedDataset(IterableDataset, WorkerPassHooks):
    """Samples (or batches) drawn from ``datasets`` in proportion to ``weights``; see the module docstring.

    Args:
        datasets: ``ShardDataset`` sources without ``batch_size``.
        weights: one non-negative weight per source (normalised here).
        samples_per_epoch: the mixed epoch's length over all ranks and workers.
        seed: seeds the order in which sources take turns (sources keep their own seeds).
        batch_size: collate into batches of this size (``None`` yields samples).
        drop_last: drop each consumer's last, smaller batch.
        channels_last: see ``ShardDataset``.
    """

    def __init__(
        self,
        datasets: Sequence[ShardDataset],
        weights: Sequence[float],
        *,
        samples_per_epoch: int,
        seed: int = 0,
        batch_size: int | None = None,
        drop_last: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        if not datasets:
            raise ValueError("MixedDataset needs at least one source dataset")
        if len(weights) != len(datasets):
            raise ValueError(f"got {len(weights)} weights for {len(datasets)} datasets: give one weight per dataset")
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
        for i, ds in enumerate(datasets):
            if not isinstance(ds, ShardDataset):
                raise TypeError(f"source {i} is a {type(ds).__name__}; MixedDataset mixes ShardDatasets")
            if ds.batch_size:
                raise ValueError(
                    f"source {i} batches (batch_size={ds.batch_size}); give batch_size to MixedDataset instead, "
                    "so that batches mix the sources"
                )
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.datasets = list(datasets)
        self.weights = [float(w) for w in weights]
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = seed
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.channels_last = channels_last
        self._plan = SharedPlan()  # the epoch and worker plan, seen by running (persistent) workers
        self._epoch = 0
        self.epoch_generation = 0  # set_epoch calls in this process (the loader protocol's)
        self.progress = WorkerProgress()  # one table for every source (see _Mixer): the stall watchdog reads it
        #: a ShardLoader's recycled batch buffers, set while its workers start (they take them along);
        #: mixed batches are allocated fresh, but small tensors still travel by value
        self.buffers: BatchBuffers | None = None
        self._resume: State | None = None
        self._carry: State | None = None  # in-process: where the sources stood at the last pass's end
        self._live: _Mixer | None = None

    #: ``ShardLoader`` hands each worker's end-of-epoch state to its next pass (sources go on)
    carries_state = True

    # -- the loader protocol (shardpipe.protocol.LoaderSource) -------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    @property
    def shards(self) -> list[Any]:
        """Every source's shards (for messages; each source numbers its own)."""
        return [shard for ds in self.datasets for shard in ds.shards]

    def set_epoch(self, epoch: int) -> None:
        """Use the order of mixed epoch ``epoch`` from the next pass on (running workers included)."""
        self._epoch = int(epoch)
        self.epoch_generation += 1
        if get_worker_info() is None:
            self._plan.set_epoch(self._epoch)

    def worker_plan_published(self) -> bool:
        """True while a ``ShardLoader`` pass has published its worker plan (read in workers too)."""
        return self._plan.read()[1] is not None

    def set_worker_plan(self, plan: WorkerPlan | None) -> None:
        """What every DataLoader worker's next pass starts from (``ShardLoader`` sets it). The loader
        hands each pass its start, so where this process's last pass left the sources is forgotten
        (a loaded state without positions starts its epoch afresh, with workers or without)."""
        if get_worker_info() is not None:
            raise RuntimeError("set_worker_plan is for the main process (the one that starts the DataLoader)")
        self._plan.set_plan(plan)
        self._carry = None

    def rank_and_world(self) -> tuple[int, int]:
        """(rank, world_size), as the sources see them (they must agree)."""
        seen = {ds.rank_and_world() for ds in self.datasets}
        if len(seen) > 1:
            raise ValueError(f"the sources disagree on (rank, world_size): {sorted(seen)}; give them the same")
        return seen.pop()

    def warm(self) -> None:
        """Import what the sources' pipelines need before workers start (see ``ShardDataset.warm``)."""
        for ds in self.datasets:
            ds.warm()

    def fingerprint(self) -> str:
        """What a saved state must match: the sources' shards and options, weights and lengths."""
        sources = [f"{ds.fingerprint()}\n" for ds in self.datasets]
        options = f"{self.weights}|{self.samples_per_epoch}|{self.seed}|{self.batch_size}|{self.drop_last}"
        return ShardsFingerprint(self.shards).of(*sources, options)

    # -- iteration ----------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        epoch, rotation, states, resume = pass_start(self._plan, self._resume, self._epoch)
        if resume is not None:  # the epoch set (set_epoch, load_state_dict), not the state's: see below
            epoch = pass_start(self._plan, None, self._epoch)[0]
        self._resume = None
        self._epoch = epoch
        ctxs = [ds.pass_context(epoch, rotation, self.progress) for ds in self.datasets]
        if states is not None:
            resume = states[ctxs[0].worker]
        carry, self._carry = self._carry, None
        if resume is None and carry is not None and int(carry["epoch"]) == epoch:
            resume = carry  # the epoch after the last pass here: the sources go on from where it left them
        start = resume
        # a state saved after this consumer's last draw of `epoch` already points at the next
        # epoch: this pass has nothing left to yield, and the next one goes on from it (so the
        # pass runs the epoch set, as a loop that sets each epoch expects, not the state's)
        done = start is not None and int(start["epoch"]) == epoch + 1
        if start is not None and not done and int(start["epoch"]) != epoch:
            start = None  # saved for another epoch (the loop jumped): the sources start afresh
        if start is not None:
            self._check(start, ctxs[0])
        mixer = _Mixer(self, epoch + 1 if done else epoch, ctxs, start)
        self._live = mixer
        return self._run(mixer, done)

    def _run(self, mixer: _Mixer, done: bool) -> Iterator[Any]:
        try:
            if not done:
                yield from mixer
        finally:
            if get_worker_info() is None and (done or mixer.finished):
                self._carry = mixer.get_state()
            mixer.close()

    def _check(self, state: State, ctx: Context) -> None:
        validate_mixed_state(state, len(self.datasets))
        if state.get("fingerprint") not in (None, self.fingerprint()):
            raise StateError(
                "mixed state was saved for other sources or options (shards, weights, samples_per_epoch, seed or "
                f"batch size differ): resuming would repeat or skip samples (state fingerprint {state['fingerprint']}, "
                f"this dataset's {self.fingerprint()})"
            )
        saved, here = state.get("consumer"), consumer_of(ctx)
        if saved is not None and saved != here:
            raise StateError(
                f"cannot continue a mixed state saved by worker {saved['worker']} of {saved['num_workers']} on rank "
                f"{saved['rank']} of {saved['world_size']} as worker {here['worker']} of {here['num_workers']} on "
                f"rank {here['rank']} of {here['world_size']}: each consumer's sources stand at their own positions"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}

    # -- resume -------------------------------------------------------------
    def state_dict(self) -> State:
        """Where this process's pass stands (in a DataLoader worker, that worker's part); after a
        finished pass, the next epoch's start, with the sources where they stand."""
        if self._resume is not None:
            return self._resume
        live = self._live
        if live is None:
            state: State = {"version": STATE_VERSION, "epoch": self._epoch, "drawn": 0, "sources": None}
            return {**state, "fingerprint": self.fingerprint()}
        return {**live.get_state(), "consumer": consumer_of(live.ctxs[0]), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: State) -> None:
        """Start this process's next pass from ``state`` (from ``state_dict()``)."""
        validate_mixed_state(state, len(self.datasets))
        epoch = int(state["epoch"])
        if self.epoch_generation and epoch == self._epoch + 1 and get_worker_info() is None:
            # the end of the epoch set_epoch chose (its next one's start): that epoch's rest is empty.
            # StatefulDataLoader without workers loads the state as the pass starts, after the loop's set_epoch
            epoch = self._epoch
        self.set_epoch(epoch)
        self._resume = state
        self._carry = None


class _Mixer:
    """One consumer's pass over one mixed epoch: yields samples or batches, knows its state."""

    def __init__(self, mix: MixedDataset, epoch: int, ctxs: list[Context], start: State | None):
        self.mix, self.epoch, self.ctxs = mix, epoch, ctxs
        index, count = ctxs[0].split_index, ctxs[0].split_count
        self.total = mix.samples_per_epoch // count
        if self.total == 0:
            raise ValueError(
                f"samples_per_epoch={mix.samples_per_epoch} is less than the {count} consumers (ranks x workers): "
                "every consumer needs at least one sample"
            )
        self.order = draw_order(mix.weights, self.total, mix.seed, epoch, index)
        size = mix.batch_size
        # with drop_last, the draws past the last whole batch are not taken (their sources stay put)
        self.end = self.total - self.total % size if size and mix.drop_last else self.total
        self.drawn = int(start["drawn"]) if start else 0
        if self.drawn > self.end:  # past the epoch's draws: would end it silently
            raise StateError(
                f"state['drawn']: must be <= {self.end} (this consumer's draws in epoch {epoch}), got {self.drawn}"
            )
        self.finished = False
        states = start.get("sources") if start else None
        self.pipes: list[Pipeline] = []
        for i, (ds, ctx) in enumerate(zip(mix.datasets, ctxs)):
            state = states[i] if states else None
            ctx.epoch = int(state["epoch"]) if state else epoch
            pipe = ds.build_pipeline(ctx)
            pipe.reset(state if state and state.get("stages") is not None else None)
            self.pipes.append(pipe)
        self.index = index
        row = 0 if get_worker_info() is None else 1 + ctxs[0].worker
        self.flushers = [StatsFlusher(ds.stats, row, ctx) for ds, ctx in zip(mix.datasets, ctxs)]

    def _pull(self, source: int) -> Any:
        pipe = self.pipes[source]
        for _ in range(2):
            try:
                return pipe.next()
            except StopIteration:
                # this source's own epoch ended: continue with its next epoch
                pipe.close()
                ds = self.mix.datasets[source]
                ctx = pipe.ctx
                ctx.epoch += 1
                pipe = self.pipes[source] = ds.build_pipeline(ctx)
                pipe.reset()
        raise ValueError(
            f"source {source} ({self.mix.datasets[source].shards[0].url}, ...) has no samples for consumer "
            f"{self.index}: give it more shards or samples, or a weight of 0"
        )

    def __iter__(self) -> Iterator[Any]:
        size = self.mix.batch_size
        while self.drawn < self.end:
            if size is None:
                sample = self._pull(int(self.order[self.drawn]))
                self.drawn += 1
                if self.drawn % 64 == 0:
                    self.flush()
                yield sample
                continue
            n = min(size, self.end - self.drawn)
            samples = [self._pull(int(s)) for s in self.order[self.drawn : self.drawn + n]]
            self.drawn += n
            self.ctxs[0].where("batch")
            self.flush()
            yield collate(samples, self.mix.channels_last)
        self.finished = True

    def get_state(self) -> State:
        """Resume after the last item yielded (once the epoch's draws are done: the next epoch's start)."""
        if self.drawn >= self.end:
            return self.next_epoch_state()
        return self._state(self.epoch, self.drawn)

    def _state(self, epoch: int, drawn: int) -> State:
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "drawn": drawn,
            "sources": [p.get_state() for p in self.pipes],
        }

    def next_epoch_state(self) -> State:
        """The state the next mixed epoch starts from: the sources go on where they are."""
        return self._state(self.epoch + 1, 0)

    def flush(self) -> None:
        """Add what each source's pipeline measured since the last flush into that source's ``stats``."""
        for f in self.flushers:
            f.flush()

    def close(self) -> None:
        self.flush()
        for p in self.pipes:
            p.close()
