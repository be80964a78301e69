"""``ShardLoader``: a DataLoader for ``ShardDataset`` with epochs and exact mid-epoch resume.

With ``num_workers > 0``, each worker sends its pipeline state along with every item it
yields; the loader keeps the latest state per worker and which worker is due next.
That is the whole resume state: a few integers per worker. A resumed loader rotates
worker ids so that its round robin continues with the worker that was due, and each
worker continues from its own state, so the resumed run yields exactly the items the
uninterrupted run would have, in the same order.

Workers start safely (see ``shardpipe.workers``): forked when the process has no other
thread, else from shardpipe's forkserver; a worker that dies is reported within a second
(``shardpipe.workerwatch``), and one that delivers nothing for ``stall_timeout`` seconds
becomes a ``WorkerStallError`` naming the worker, its stage and its shard.

The loader drives its source only through the loader protocol
(``shardpipe.protocol.LoaderSource``, which ``ShardDataset`` and ``MixedDataset``
implement): before each pass it publishes a ``WorkerPlan`` (epoch, first worker, resume
states) through ``open_worker_pass``, which the source keeps in shared memory, so
persistent workers (``persistent_workers=True``) learn the next epoch and a resume state
loaded into an already-running loader exactly like fresh workers do. The workers a pass
starts take along its recycled batch buffers (``stages.buffers``: each pass of fresh workers
has its own pool, so two loaders over one dataset never share one), and each batch received
goes through ``handover.receive`` (buffers the loop let go are reused, and what the worker
sent by value or by reference becomes tensors again). Each worker's collate step
(``shardpipe.collate``) reads ``state_dict()`` of its source copy.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from shardpipe.collate import InlineCollate, with_state
from shardpipe.errors import WorkerDiedError, WorkerStallError
from shardpipe.handover import receive
from shardpipe.options import check_flag
from shardpipe.passes import WorkerPlan
from shardpipe.protocol import LoaderSource, require
from shardpipe.stages.base import State
from shardpipe.stages.buffers import BatchBuffers
from shardpipe.state import STATE_VERSION, StateError, validate_loader_state
from shardpipe.workers import (
    DEFAULT_STALL_TIMEOUT,
    awaited_worker,
    choose_context,
    prestart_forkserver,
    sigchld_deferred,
    sigint_deferred,
    stop_workers,
)
from shardpipe.workerwatch import WatchedWorkersIter, position

log = logging.getLogger("shardpipe")

# DataLoader arguments ShardLoader cannot honour: name -> (values it accepts, why, what to do instead)
_REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "batch_size": (
        (None,),
        "ShardDataset makes the batches inside its pipeline (each worker decodes and collates whole "
        "batches), so the loader passes them through; pass batch_size to ShardDataset(..., batch_size=N) instead",
    ),
    "shuffle": (
        (None, False),
        "ShardDataset shuffles the shard order and a sample buffer, per epoch and seed; pass shuffle=True "
        "(or a buffer size) to ShardDataset instead",
    ),
    "sampler": (
        (None,),
        "ShardDataset is an IterableDataset that plans its own order and rank/worker split; use "
        "ShardDataset's shuffle=, seed=, epoch_policy= and rank=/world_size= instead",
    ),
    "batch_sampler": (
        (None,),
        "ShardDataset is an IterableDataset that plans its own order and makes its own batches; pass "
        "batch_size (and drop_last=True to drop the last, smaller batch) to ShardDataset instead",
    ),
    "drop_last": (
        (False,),
        "ShardDataset makes the batches; ask it instead: ShardDataset(..., batch_size=N, drop_last=True)",
    ),
    "collate_fn": (
        (None,),
        "ShardDataset already collates (batch_size=, channels_last=) and ShardLoader uses the collate "
        "step to carry each worker's resume state; change samples with ShardDataset(transform=...) "
        "or process the batches in your loop",
    ),
    "in_order": (
        (True,),
        "exact resume follows the workers' round robin, and out-of-order delivery would make "
        "state_dict() repeat or skip items",
    ),
}


#: held while a loader publishes its pass and starts its workers: a source carries one pool at a time
_STARTING = threading.Lock()


def refuse_unsupported(num_workers: int, persistent_workers: bool, kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` (why, and what to do instead) for a DataLoader argument ShardLoader cannot honour."""
    for name, (accepted, why) in _REFUSED.items():
        if name in kwargs and not any(kwargs[name] is a or (a is not None and kwargs[name] == a) for a in accepted):
            raise ValueError(f"ShardLoader cannot honour {name}={kwargs[name]!r}: {why}")
    if persistent_workers and num_workers == 0:
        raise ValueError(
            "ShardLoader cannot honour persistent_workers=True with num_workers=0: there are no worker "
            "processes to keep (the pipeline runs in this process); set num_workers > 0, or drop persistent_workers"
        )


class ShardLoader(DataLoader):
    """DataLoader over a ``ShardDataset``, a ``MixedDataset`` or any other ``LoaderSource``
    (``shardpipe.protocol``): it batches itself, so ``batch_size=None`` here.

    Each new iteration moves the dataset to the next epoch, unless ``set_epoch`` was
    called since the last one. ``state_dict()`` / ``load_state_dict()`` save and restore
    the position mid-epoch (or between epochs) for any ``num_workers``, with fresh or
    persistent workers. Arguments it cannot honour (``batch_size``, ``sampler``, ...)
    raise ``ValueError`` saying what to use instead.


    ``multiprocessing_context="auto"`` forks workers when this process has no other live
    thread and starts them from shardpipe's forkserver otherwise (a fork beside busy
    threads can hang a worker on a lock it inherited held; that forkserver never re-imports
    ``__main__``); pass ``"fork"``, ``"forkserver"``, ``"spawn"`` or a context to choose.
    A worker that dies raises ``WorkerDiedError`` (``WorkerStartError`` at start-up) within
    about a second. ``stall_timeout`` (seconds, default 300; ``None``
    = wait forever) bounds how long the loader waits for a worker's next item before it
    stops the workers and raises ``WorkerStallError``. A ``timeout=`` given for the
    DataLoader takes precedence.
    """

    def __init__(
        self,
        dataset: LoaderSource,
        num_workers: int = 0,
        pin_memory: bool = False,
        multiprocessing_context: Any = "auto",
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        persistent_workers: bool = False,
        **kwargs: Any,
    ):
        require(dataset, LoaderSource, "ShardLoader")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, not {num_workers!r}")
        check_flag("pin_memory", pin_memory)
        check_flag("persistent_workers", persistent_workers)
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be a positive number of seconds or None, not {stall_timeout!r}")
        refuse_unsupported(num_workers, persistent_workers, kwargs)
        kwargs.pop("batch_size", None)
        kwargs.pop("collate_fn", None)
        kwargs.setdefault("prefetch_factor", 4 if num_workers else None)
        if num_workers and stall_timeout is not None:
            kwargs.setdefault("timeout", stall_timeout)
        self._requested_context = multiprocessing_context
        self._inline_collate = InlineCollate()
        prestart_forkserver(multiprocessing_context, num_workers)
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            # workers send each item with their state; in-process, the state is read directly
            collate_fn=with_state if num_workers else self._inline_collate,
            multiprocessing_context=None
            if multiprocessing_context == "auto"
            else choose_context(multiprocessing_context, dataset),
            **kwargs,
        )
        self._iterations = 0
        # the source's set_epoch calls seen at the last pass's start: a later call chose the next epoch
        self._generation_seen = dataset.epoch_generation
        self._worker_states: list[State | None] = [None] * max(num_workers, 1)
        self._next_worker = 0
        self._epoch_done = False
        self._pass_epoch = dataset.epoch  # the epoch of the latest pass
        self._resume: State | None = None
        self._passes = 0  # passes started: a finished pass withdraws its worker plan only if it is the latest
        self._buffers: BatchBuffers | None = None  # the pool persistent workers took

    @property
    def source(self) -> LoaderSource:
        """The dataset this loader runs (a ``ShardDataset``, ``MixedDataset``, ...)."""
        return self.dataset  # type: ignore[return-value]

    def _carries(self) -> bool:
        """True for sources whose passes go on from the previous pass's end state (``MixedDataset``)."""
        return self.source.carries_state

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (later passes go on from there)."""
        self.source.set_epoch(epoch)

    def _epoch_chosen(self) -> bool:
        """True when ``set_epoch`` was called (here or on the source, to any epoch) since the last pass began."""
        return self.source.epoch_generation != self._generation_seen

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        return WatchedWorkersIter(self)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        ds = self.source
        # advance unless the epoch was chosen since the last pass (here, or on the dataset)
        if self._iterations > 0 and not self._epoch_chosen():
            ds.set_epoch(ds.epoch + 1)
        self._generation_seen = ds.epoch_generation
        self._iterations += 1
        resume, self._resume = self._pending_resume(), None
        workers = resume["workers"] if resume else self._carried(ds.epoch)
        self._pass_epoch = ds.epoch
        self._worker_states = list(workers) if workers else [None] * max(self.num_workers, 1)
        self._next_worker = resume["next_worker"] if resume else 0
        self._epoch_done = False
        if self.num_workers == 0:
            return self._iter_inline(ds, self._worker_states[0], ds.epoch)
        return self._iter_workers(ds)

    def _pending_resume(self) -> State | None:
        """The mid-epoch state loaded and not started yet, unless ``set_epoch`` (here or on the source)
        has chosen another epoch since: that epoch then starts afresh, as the user asked."""
        if self._resume is not None and int(self._resume["epoch"]) != self.source.epoch:
            log.warning(
                "the loaded state resumes epoch %d mid-way, but set_epoch chose epoch %d: that state is dropped "
                "and epoch %d starts from its beginning (call set_epoch(%d) to finish the loaded epoch first)",
                int(self._resume["epoch"]), self.source.epoch, self.source.epoch, int(self._resume["epoch"]),
            )  # fmt: skip
            self._resume = None
        return self._resume

    def _carried(self, epoch: int) -> list[State | None] | None:
        """Where each worker's last pass ended, for a source whose passes go on from there
        (``carries_state``), if that pass finished and ``epoch`` follows it; else None."""
        if not (self._carries() and self._epoch_done and epoch == self._pass_epoch + 1):
            return None  # another epoch chosen (a jump, or the same again): the source starts it afresh
        return self._worker_states if any(s is not None for s in self._worker_states) else None

    def _iter_inline(self, ds: LoaderSource, state: State | None, epoch: int) -> Iterator[Any]:
        if state is not None:
            calls = ds.epoch_generation
            ds.load_state_dict(state)
            ds.set_epoch(epoch)  # the pass's, as in workers (a MixedDataset's state after an epoch's end is the next's)
            self._generation_seen += ds.epoch_generation - calls  # its set_epoch is the loader's, not the user's
        self._inline_collate.passes += 1
        try:
            for item in super().__iter__():
                self._worker_states[0] = ds.state_dict()
                yield item
        finally:
            self._inline_collate.passes -= 1
        self._epoch_done = True

    def _iter_workers(self, ds: LoaderSource) -> Iterator[Any]:
        ds.rank_and_world()  # refresh the rank the workers will see
        ds.warm()  # import the decoder and transforms once here, not in every forked worker
        self._passes += 1
        this_pass = self._passes
        resume = self._worker_states if any(s is not None for s in self._worker_states) else None
        # read by each worker when torch starts its pass: fresh workers, and persistent ones alike;
        # pinned batches are copied before the loop sees them, so only unpinned ones recycle buffers
        first = self._next_worker
        plan = WorkerPlan(ds.epoch, first, resume)
        self._replace_exited_workers(ds.epoch)
        buffers = self._pass_buffers()
        with _STARTING:  # another loader over the same source starts its workers with its own pool
            ds.open_worker_pass(plan, buffers=buffers)
            if self._requested_context == "auto":  # decided per pass: threads come and go
                self.multiprocessing_context = choose_context("auto", ds)
            try:
                # a Ctrl-C that comes during the forks is raised after them, a worker's death where the loop reads
                with sigint_deferred(), sigchld_deferred():
                    it = super().__iter__()  # fresh workers start now (persistent ones kept theirs), taking the pool
            except WorkerDiedError:
                self._iterator = None  # a persistent worker died as its pass began: the next pass starts new ones
                raise
            finally:
                ds.workers_started()
        for data in it.take_discarded():  # a pass left early: its batches in flight go back to the pool
            if buffers is not None and isinstance(data, tuple) and len(data) == 2:
                buffers.free_unseen(data[1])
        try:
            while True:
                try:
                    state, item = next(it)
                except StopIteration:
                    break
                except WorkerDiedError:
                    self._iterator = None  # persistent workers: the next pass starts new ones
                    raise
                except RuntimeError as e:
                    if not str(e).startswith("DataLoader timed out"):
                        raise
                    raise self._stall_error(it) from None
                worker = state["consumer"]["worker"]
                self._worker_states[worker] = state
                self._next_worker = (worker + 1) % self.num_workers
                if buffers is not None:  # by the DataLoader worker's id
                    item = receive(item, buffers, (worker - first) % self.num_workers)
                yield item
            self._epoch_done = True
        finally:
            if self._passes == this_pass:  # not if a later pass has published its own plan
                ds.set_worker_plan(None)

    def _replace_exited_workers(self, epoch: int) -> None:
        """Persistent workers: if one has exited since the last pass (the OOM killer, a crash), start new
        ones for this pass, which starts from its plan as fresh workers would: nothing is lost or repeated."""
        if not self.persistent_workers or self._iterator is None:
            return
        gone = self._iterator.exited_between_passes()
        if gone is not None:
            log.warning("%s between passes; the others were stopped, and new workers start epoch %d", gone, epoch)
            self._iterator = None

    def _pass_buffers(self) -> BatchBuffers | None:
        """The recycled batch buffers of this pass: its own for fresh workers, the same as before for
        persistent ones still running; none with pinned memory (the loop gets a pinned copy)."""
        if self.pin_memory:
            return None
        if self._buffers is None or not self.persistent_workers or self._iterator is None:
            self._buffers = BatchBuffers()
        return self._buffers

    def _stall_error(self, it: Any) -> WorkerStallError:
        """Name the worker the loader waited for, its stage and shard; stop the workers."""
        ds = self.source
        worker = awaited_worker(it, ds.progress, self.num_workers)
        pid = it._workers[worker].pid if worker < len(getattr(it, "_workers", [])) else None
        where = position(ds, worker)
        stop_workers(it)
        self._iterator = None  # persistent workers: the next pass starts new ones
        return WorkerStallError(
            f"DataLoader worker {worker} (pid {pid}) delivered nothing for {self.timeout:g} s: it is {where}; "
            "the workers were stopped. Raise ShardLoader(stall_timeout=...) if a single item can take this long"
        )

    # -- resume ---------------------------------------------------------------
    def _split_refusal(self, state: State, rank: int, world: int) -> StateError:
        """Why ``state``, which holds worker positions, cannot continue with this loader's split."""
        here = f"world_size={world}, num_workers={self.num_workers} (rank {rank})"
        saved = f"world_size={state['world_size']}, num_workers={state['num_workers']} (rank {state['rank']})"
        if self._carries():  # its positions go on from epoch to epoch: a boundary state holds them too
            name = type(self.source).__name__
            return StateError(
                f"cannot resume with {here}: the state was saved with {saved}, and a {name} state holds each "
                "consumer's position, between epochs too; resume with the same configuration, or start epoch "
                f"{state['epoch']} afresh with this split by set_epoch({state['epoch']}) instead of loading the state"
            )
        return StateError(
            f"cannot resume mid-epoch with {here}: the state was saved with {saved}, and each consumer's position "
            "only holds for that split; resume with the same configuration, or from a state saved at an epoch boundary"
        )

    def state_dict(self) -> State:
        """A small JSON-serialisable snapshot: resume exactly after the last item yielded (a state
        loaded but not yet started is returned as loaded)."""
        pending = self._pending_resume()
        if pending is not None:
            return copy.deepcopy(pending)
        ds = self.source
        rank, world = ds.rank_and_world()
        mid_epoch = not self._epoch_done and any(s is not None for s in self._worker_states)
        # after a finished pass, the next one runs the following epoch unless set_epoch chose one since
        epoch = ds.epoch + 1 if self._epoch_done and not self._epoch_chosen() else ds.epoch
        carried = None if mid_epoch else self._carried(epoch)
        return {
            "version": STATE_VERSION,
            "fingerprint": ds.fingerprint(),
            "epoch": epoch,
            "rank": rank,
            "world_size": world,
            "num_workers": self.num_workers,
            "next_worker": self._next_worker if mid_epoch else 0,
            "workers": list(self._worker_states) if mid_epoch else carried and list(carried),
        }

    def load_state_dict(self, state: State) -> None:
        """Continue from ``state`` at the next iteration (refuses an incompatible state)."""
        validate_loader_state(state)
        mine = self.source.fingerprint()
        if state["fingerprint"] != mine:
            raise StateError(
                "loader state was saved for other shards or options (shard list, sample counts, seed, "
                "shuffle, batch size or epoch policy differ): resuming would repeat or skip samples "
                f"(state fingerprint {state['fingerprint']}, this loader's {mine})"
            )
        rank, world = self.source.rank_and_world()
        if state["workers"] is not None and (
            state["world_size"] != world or state["num_workers"] != self.num_workers or state["rank"] != rank
        ):
            raise self._split_refusal(state, rank, world)
        self.set_epoch(int(state["epoch"]))
        self._iterations = 0
        self._resume = state if state["workers"] is not None else None
        if self._resume is None and self._carries():  # no positions: a source that carried its last pass forgets it
            self.source.set_worker_plan(None)
        # the loaded state, not the last pass, is where the loader now stands
        self._epoch_done = False
        self._worker_states = [None] * max(self.num_workers, 1)
        self._next_worker = 0
