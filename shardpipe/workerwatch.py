"""Noticing DataLoader workers that died, within a second, however they were started.

torch checks its workers' health only when a read from the result queue times out: every
5 s without ``timeout``, and only after the whole ``timeout`` with one (``stall_timeout``
is passed as that timeout). Its SIGCHLD handler only sees the process's own children, and
forkserver workers are the forkserver's. ``WatchedWorkersIter`` reads in short slices and
checks ``is_alive()`` between them (a forkserver worker's exit comes through the server's
status pipe), so a killed or failed worker becomes a ``WorkerDiedError`` (or, before its
pipeline started, a ``WorkerStartError`` carrying the worker's own traceback) within a
second; ``timeout`` still bounds a worker that is alive but delivers nothing.

torch's SIGCHLD handler is switched off for these workers: it raised a forked worker's death
as a ``RuntimeError`` in whatever the program was running (a training step, validation, a
checkpoint save), and only for forked ones. A death is now raised where the loop asks for
its next item, as ``WorkerDiedError``, however the workers were started.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from typing import Any

from torch.utils.data import _utils
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from shardpipe.errors import WorkerDiedError, WorkerStartError
from shardpipe.workers import no_sigchld_error, remember_own_threads, stop_workers
from shardpipe.workerstart import startup_report

#: seconds between two health checks of the workers while the loader waits for an item
POLL_S = 1.0
#: seconds to wait for a worker's exit to be reported once an item it sent cannot be received
DEATH_REPORT_S = 3.0


class WatchedWorkersIter(_MultiProcessingDataLoaderIter):
    """torch's multi-process iterator, checking that its workers live every ``POLL_S`` seconds."""

    def __init__(self, loader: Any) -> None:
        self._context_name = describe_context(loader.multiprocessing_context)
        self.discarded: list[Any] = []  # items a reset of persistent workers dropped (``take_discarded``)
        super().__init__(loader)
        no_sigchld_error(self)
        remember_own_threads(self)

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        if first_iter:
            super()._reset(loader, first_iter)
        else:  # persistent workers: torch drops what the last pass had in flight, which ``discarded`` keeps
            self.discarded = [info[1] for info in self._task_info.values() if len(info) == 2]  # received early
            self._get_data = self._get_discarded  # type: ignore[method-assign]  # (what the drain reads)
            try:
                super()._reset(loader, first_iter)
            finally:
                del self._get_data
        remember_own_threads(self)

    def _get_discarded(self) -> tuple[Any, Any]:
        """torch's ``_get_data`` while a reset drains the last pass: its items are kept in ``discarded``."""
        idx, data = super()._get_data()
        if not isinstance(idx, _utils.worker._ResumeIteration):
            self.discarded.append(data)
        return idx, data

    def take_discarded(self) -> list[Any]:
        """What the workers sent for a pass the loop left before its end (and it never saw); once."""
        out, self.discarded = self.discarded, []
        return out

    def exited_between_passes(self) -> str | None:
        """Before a pass of persistent workers: 'DataLoader worker 1 (pid N) was killed by SIGKILL' for a
        worker that has exited since the last pass (every worker is then stopped), else None."""
        dead = self._dead_workers(0.0)
        if not dead:
            return None
        process = self._workers[dead[0]]
        text = f"DataLoader worker {dead[0]} (pid {process.pid}) {describe_exit(process.exitcode)}"
        stop_workers(self)
        return text

    def _try_get_data(self, timeout: float = _utils.MP_STATUS_CHECK_INTERVAL) -> tuple[bool, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                ok, data = super()._try_get_data(max(0.0, min(POLL_S, left)))
            except (RuntimeError, OSError, EOFError) as e:
                # RuntimeError: torch saw a worker gone; OSError/EOFError: an item whose shared memory
                # the dead worker was to hand over (its fd server is gone), before its exit is reported
                dead = self._dead_workers(0.0 if isinstance(e, RuntimeError) else DEATH_REPORT_S)
                if not dead or "Pin memory" in str(e):
                    raise
                raise self._died_error(dead) from None
            if ok or left <= POLL_S:
                return ok, data

    def _dead_workers(self, wait_s: float) -> list[int]:
        """Workers that have exited (a failure first), waiting up to ``wait_s`` for one to be reported."""
        deadline = time.monotonic() + wait_s
        while True:
            dead = [i for i, w in enumerate(self._workers) if w.exitcode is not None]
            if dead or time.monotonic() >= deadline:
                return sorted(dead, key=lambda i: self._workers[i].exitcode == 0)
            time.sleep(0.05)

    def _shutdown_workers(self) -> None:
        try:
            super()._shutdown_workers()
        finally:
            remember_own_threads(self)

    def _died_error(self, dead: list[int]) -> WorkerDiedError:
        """Describe the first dead worker (its exit, stage, shard and own error) and stop the others."""
        worker = dead[0]
        process = self._workers[worker]
        report = startup_report(process)
        _, _, age = where(self._dataset, worker)
        how = describe_exit(process.exitcode)
        also = f" (workers {', '.join(map(str, dead))} are gone)" if len(dead) > 1 else ""
        stop_workers(self)
        code = process.exitcode if process.exitcode is not None else 0
        if report is None and (code < 0 or age is not None):  # killed, or died inside its pipeline
            return WorkerDiedError(
                f"DataLoader worker {worker} (pid {process.pid}) {how} {position(self._dataset, worker)}{also}; "
                f"the other workers were stopped. {_KILLED_HINT if code < 0 else _CRASHED_HINT}"
            )
        own = f"; its own error:\n{report.rstrip()}\n" if report else " (its traceback, if any, is on stderr above). "
        return WorkerStartError(
            f"DataLoader worker {worker} (pid {process.pid}) {how} before its pipeline started, under "
            f"multiprocessing_context={self._context_name}{also}{own}{start_hint(self._context_name)}"
        )


_KILLED_HINT = (
    "A worker killed by SIGKILL was most likely stopped by the kernel's OOM killer (see `dmesg`): lower "
    "num_workers, prefetch_factor, the shuffle buffer or the batch size"
)
_CRASHED_HINT = "Its traceback, if it printed one, is on stderr above"


def start_hint(context_name: str) -> str:
    """What to do about a worker that failed to start, for the start method that started it."""
    if context_name in ("'spawn'", "'forkserver'"):
        return (
            "Under 'spawn' and 'forkserver' every worker imports your main module again: put the training "
            'code under `if __name__ == "__main__":` and define transforms in an importable module, or '
            "use multiprocessing_context='auto' (the default), which needs neither"
        )
    return (
        "The dataset and its transforms must unpickle in a fresh process: every module they use must be "
        "importable there (check sys.path and the working directory)"
    )


def describe_context(ctx: Any) -> str:
    if ctx is None:
        return f"{multiprocessing.get_start_method()!r} (the default)"
    name = ctx if isinstance(ctx, str) else ctx.get_start_method()
    if type(ctx).__name__ == "CleanForkServerContext":
        return "'auto' (shardpipe's forkserver)"
    return repr(name)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is alive"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def where(dataset: Any, worker: int) -> tuple[str, int | None, float | None]:
    """(stage, shard index, seconds in it) of a worker, from the dataset's progress table."""
    progress = getattr(dataset, "progress", None)
    return progress.where(worker) if progress is not None else ("worker set-up", None, None)


def position(dataset: Any, worker: int) -> str:
    """'in stage 'decode' on shard .../x.tar (entered 1.2 s ago)' for error messages."""
    stage, shard, age = where(dataset, worker)
    urls = {s.index: s.url for s in getattr(dataset, "shards", [])}
    text = f"in stage {stage!r}"
    if shard is None:
        text += " before reading any shard"
    else:
        text += f" on shard {urls.get(shard, f'#{shard} (not in the shard list)')}"
    return text + (f" (entered {age:.1f} s ago)" if age is not None else " (its pipeline never started)")
