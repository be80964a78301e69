"""DataLoader worker processes: how they start, and what they are doing (for the stall watchdog).

Why not always ``fork``: a forked child inherits every lock as it was at the fork, held
or not, but only the forking thread. When another thread of the parent holds a lock at
that instant (torch's default generator mutex inside ``torch.randn``, numpy's global
``RandomState`` lock or the import lock of ``numpy.random``), the worker waits for it
forever: DataLoader's own worker set-up (``torch.manual_seed``, ``np.random.seed``)
takes exactly those locks. So ``"auto"`` forks only when the parent has no other live
thread (the loader's own queue threads from earlier passes do not count), and otherwise
starts workers from shardpipe's forkserver (``shardpipe.workerstart``: a clean process
that never re-imports ``__main__`` and receives the dataset by value, so scripts without
a main guard, stdin, ``-c``, ``exec`` and notebooks all work). See BENCHMARKS.md for the cost.

``WorkerProgress`` is a small shared-memory table in which every worker marks the stage
it entered, the shard it is on and when; the loader reads it to name a stalled worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger("shardpipe")

#: what a worker can be doing; code 0 = started, pipeline not built yet
STAGES = ("worker set-up", "read", "untar", "decode", "batch", "hand-over", "done")
_CODE = {name: i for i, name in enumerate(STAGES)}
MAX_WORKERS = 256
#: default seconds a worker may go without delivering the item the loader waits for
DEFAULT_STALL_TIMEOUT = 300.0
#: modules a forkserver imports once, so that each worker it forks starts warm
FORKSERVER_PRELOAD = [
    "torch",
    "numpy",
    "shardpipe.dataset",
    "shardpipe.loader",
    "shardpipe.stages",
    "shardpipe.image.decoders.warm",
]


class WorkerProgress:
    """Per DataLoader worker: stage code, shard index and the time it was entered (monotonic).

    One row per worker, one writer per row (that worker), so no lock. Survives pickling
    into fork, forkserver and spawn workers (a shared-memory tensor).
    """

    def __init__(self, rows: int = MAX_WORKERS) -> None:
        self.table = torch.zeros((rows, 3), dtype=torch.float64).share_memory_()
        self._view: memoryview | None = None  # the table as flat doubles: cheaper to write than numpy rows

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self.table, "_view": None}

    def clear(self) -> None:
        self.table.zero_()

    def mark(self, worker: int, stage: str, shard: int | None = None) -> None:
        """Record that ``worker`` entered ``stage`` (on shard ``shard``, else the last one)."""
        view = self._view
        if view is None:
            view = self._view = memoryview(self.table.numpy()).cast("B").cast("d")
        at = 3 * (worker % (len(view) // 3))
        view[at] = time.monotonic()
        view[at + 1] = _CODE[stage]
        if shard is not None:
            view[at + 2] = shard + 1  # 0 = none yet

    def where(self, worker: int) -> tuple[str, int | None, float | None]:
        """(stage, shard index or None, seconds since it entered that stage or None)."""
        t, code, shard = self.table[worker % len(self.table)].tolist()
        age = time.monotonic() - t if t else None
        return STAGES[int(code)], (int(shard) - 1 if shard else None), age


class ProgressMarker:
    """What a pipeline inside a worker calls: ``mark(stage, url)``; cheap (a few numpy writes)."""

    def __init__(self, progress: WorkerProgress, worker: int, urls: dict[str, int]):
        self.progress, self.worker, self.urls = progress, worker, urls

    def __call__(self, stage: str, url: str | None = None) -> None:
        self.progress.mark(self.worker, stage, self.urls.get(url, -2) if url is not None else None)


#: queue-feeder threads of the loaders' own DataLoader iterators: they only pickle small index
#: tuples into queues no new worker uses, so a fork beside them is safe (a pin-memory thread
#: calls into torch, so it still counts)
_OWN_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def remember_own_threads(it: Any) -> None:
    """Note the queue-feeder threads of a DataLoader iterator: they are not "other" threads."""
    queues = [*getattr(it, "_index_queues", []), getattr(it, "_worker_result_queue", None)]
    for q in queues:
        t = getattr(q, "_thread", None)
        if isinstance(t, threading.Thread):
            _OWN_THREADS.add(t)


def other_threads() -> list[str]:
    """Names of this process's live Python threads other than the calling one and the loaders' own."""
    me = threading.current_thread()
    return [t.name for t in threading.enumerate() if t is not me and t.is_alive() and t not in _OWN_THREADS]


def choose_context(requested: Any, dataset: Any) -> Any:
    """The multiprocessing context for workers: ``requested`` unless it is ``"auto"``.

    ``auto``: fork when this process has no other live thread (and the program did not
    choose a start method);
    otherwise shardpipe's forkserver, unless the dataset cannot be pickled even by value
    (it holds a lock, an open file...), in which case fork with a warning (the stall
    watchdog still bounds a hang).
    """
    if requested == "forkserver":
        return _forkserver()
    if requested != "auto":
        return requested
    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork") or os.name != "posix":
        return None  # the user chose a start method for this program: theirs
    threads = other_threads()
    if not threads:
        return multiprocessing.get_context("fork")  # named: Python 3.14's default is a forkserver
    import cloudpickle

    from shardpipe.workerstart import CLEAN_FORKSERVER

    try:
        cloudpickle.dumps(dataset)  # a trial: shared tensors are copied here, passed by handle at the start
    except Exception as e:
        log.warning(
            "this process has %d other threads (%s) and the dataset cannot be pickled (%s: %s), so DataLoader "
            "workers are forked; a fork while another thread holds a lock can hang a worker (the loader then "
            "raises WorkerStallError). Make the dataset picklable (no open files, locks or sockets in "
            "transforms) to start workers from a forkserver instead",
            len(threads),
            ", ".join(threads[:4]),
            type(e).__name__,
            e,
        )
        return multiprocessing.get_context("fork")
    return CLEAN_FORKSERVER


def worker_context(dataset: Any) -> Any:
    """The multiprocessing context for your own ``DataLoader`` over a shardpipe dataset (``IndexedDataset``).

    What ``ShardLoader`` picks by itself: fork when this process has no other thread; beside
    other threads (TensorBoard, fsspec's loop, a model thread), shardpipe's forkserver, since a
    fork while another thread holds a lock can hang a worker forever. ``None`` when the program
    chose a start method itself. Pass it as ``DataLoader(..., multiprocessing_context=...)``.
    """
    return choose_context("auto", dataset)


def prestart_forkserver(requested: Any, num_workers: int) -> None:
    """Under ``"auto"`` beside other threads, start shardpipe's forkserver before the first pass needs it."""
    if requested != "auto" or not num_workers or os.name != "posix":
        return
    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork") or not other_threads():
        return
    from shardpipe.workerstart import prestart

    prestart()


def _forkserver() -> Any:
    """The stock forkserver context (``multiprocessing_context="forkserver"``), preloading torch and shardpipe."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def no_sigchld_error(it: Any) -> None:
    """Keep torch's SIGCHLD handler from raising the deaths of ``it``'s workers in the program's code."""
    from torch.utils.data._utils import signal_handling

    if getattr(it, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(it))
        it._worker_pids_set = False


def stop_workers(it: Any) -> None:
    """Kill the workers of a DataLoader iterator and release its queues (after a stall)."""
    no_sigchld_error(it)  # (for the kills below)
    for w in getattr(it, "_workers", []):
        if w.is_alive():
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.join(timeout=5)
    queues = getattr(it, "_index_queues", [])
    for q in queues:
        q._buffer.clear()  # indices no worker will read
    it._shutdown_workers()
    for q in queues:
        _drain(q)


def _drain(q: Any) -> None:
    """Read what an index queue's feeder thread still sends, until it has closed the queue: with its
    worker gone, a full pipe (a huge prefetch_factor) would keep that thread and both fds for good."""
    thread = getattr(q, "_thread", None)
    for _ in range(1000):  # (bounded: the pipe's contents and torch's final None)
        if thread is None or not thread.is_alive():
            return
        try:
            if q._reader.poll(0.01):
                q._reader.recv_bytes()
        except (OSError, EOFError, TypeError):  # closed by the feeder as it ends (a read then gets no handle)
            thread.join(1)
            return


def awaited_worker(it: Any, progress: WorkerProgress, num_workers: int) -> int:
    """The worker whose item the iterator waits for (else the one idle the longest)."""
    info = getattr(it, "_task_info", {}).get(getattr(it, "_rcvd_idx", -1))
    if info is not None and len(info) == 1:
        return int(info[0])
    ages = [progress.where(w)[2] or float("inf") for w in range(num_workers)]
    return max(range(num_workers), key=lambda w: ages[w])


@contextlib.contextmanager
def _held_back(signum: int) -> Iterator[None]:
    """Record ``signum`` instead of handling it, then restore its handler and run it once with the
    last one recorded (raise it where that handler is the default); main thread only."""
    owner, came = os.getpid(), []

    def record(signum: int, frame: Any) -> None:
        if os.getpid() == owner:  # (in a forked worker: ignored)
            came.append(frame)

    previous = signal.signal(signum, record)
    try:
        yield
    finally:
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        if came:
            if callable(previous):
                previous(signum, came[-1])  # SIGINT: KeyboardInterrupt, by default
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signum)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold back a Ctrl-C that comes while workers are forked, and raise it once they are.

    Python runs a signal's handler at the next bytecode, which during a fork may be one of the
    at-fork callbacks (``logging``'s among them), where an exception is printed as "ignored" and
    dropped: the program went on as if Ctrl-C had never come (about one try in three when it
    came as an epoch began). Meanwhile SIGINT is recorded only; afterwards the program's own
    handler runs with it, here (``KeyboardInterrupt``). Forked workers inherit the recording
    handler and so ignore Ctrl-C: the trainer stops them, as it does on any exit. Only in the
    main thread (the only one that can set a handler); elsewhere it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _held_back(signal.SIGINT):
        yield


@contextlib.contextmanager
def sigchld_deferred() -> Iterator[None]:
    """Hold back SIGCHLD while torch starts a pass's workers, and pass it on once they are started.

    torch registers forked workers with its SIGCHLD handler as it starts them, and the watched
    iterator unregisters them once torch is done (``no_sigchld_error``). A worker that died in
    between was raised by that handler as torch's bare ``RuntimeError`` at whatever bytecode ran
    next, possibly inside one of torch's queue locks, which then stayed held (shutting that
    iterator down would hang). Meanwhile SIGCHLD is recorded only; afterwards torch's handler
    runs with it (for other DataLoaders' workers), and the watched iterator reports its own dead
    worker as ``WorkerDiedError`` where the loop asks for a batch. Main thread only, as above.
    """
    if threading.current_thread() is not threading.main_thread() or os.name != "posix":
        yield
        return
    from torch.utils.data._utils import signal_handling

    signal_handling._set_SIGCHLD_handler()  # torch's (once per process): now, not with the recorder as its chain
    with _held_back(signal.SIGCHLD):
        yield
