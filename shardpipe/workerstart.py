"""A forkserver that starts DataLoader workers the way any program runs: no ``__main__`` re-import.

The stock forkserver sends each child the path or module name of ``__main__`` and the child
runs it again before it unpickles the worker: a script without a main guard re-runs its
training loop, a program read from stdin (``'<stdin>'``) cannot be found, and a class
defined in a notebook cell or an ``exec``'d program cannot be looked up. This context keeps
the forkserver (a fresh process exec'd from the interpreter, so it inherits no lock another
thread held) but changes what a child receives:

- the preparation data without ``init_main_from_path`` / ``init_main_from_name``;
- the ``Process`` object pickled by cloudpickle, so functions and classes of ``__main__``
  travel by value, while multiprocessing's own reducers (queues, connections, file
  descriptors, torch's shared-memory tensors) still apply;
- a start-up report pipe: if unpickling the worker fails in the child (an import error, a
  class that cannot be rebuilt), the child writes its traceback there before it exits, and
  the parent reads it once it notices the worker is gone (``startup_report``);
- a pidfd of the training process: a child's parent is the server, so torch's parent-death
  check (``os.getppid()``) never fires and a killed trainer (SIGTERM, SIGKILL) would leave
  its workers, and with them the server, running forever. Each child watches the trainer
  from a daemon thread blocked in ``poll`` (no cost per batch) and exits within
  milliseconds of its death (``watch_trainer``); where there is no pidfd (Linux < 5.3,
  macOS) it watches the trainer's end of its start pipe instead, which closes when the
  trainer dies (or drops the worker's handle). A child also closes its inherited write end
  of the server's "alive" pipe, so the server exits as soon as the trainer is gone.

The server is shardpipe's own (not the process-wide one a user may configure), preloading
torch, numpy and the pipeline modules once so that each worker starts warm.
"""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import pickle
import select
import threading
import traceback
from collections import ChainMap
from multiprocessing import context, forkserver, popen_forkserver, reduction, spawn, util
from typing import Any

import cloudpickle

#: modules the server imports once, so that each worker it forks starts warm
SERVER_PRELOAD = [
    "torch",
    "numpy",
    "cloudpickle",
    "shardpipe.dataset",
    "shardpipe.loader",
    "shardpipe.stages",
    "shardpipe.image.decoders.warm",
]
#: at most this much of a worker's start-up traceback comes back (a pipe holds 64 KiB)
REPORT_LIMIT = 16_000
_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
#: exit status of a worker whose training process died (nobody is left to read it)
ORPHAN_EXIT = 1
_watching: int | None = None  # the process whose trainer watch runs (a forked child starts again)

_server = forkserver.ForkServer()
_server.set_forkserver_preload(SERVER_PRELOAD)


class _ByValuePickler(cloudpickle.CloudPickler):
    """cloudpickle (``__main__`` by value) plus multiprocessing's and torch's registered reducers."""

    dispatch_table = ChainMap(reduction.ForkingPickler._extra_reducers, cloudpickle.CloudPickler.dispatch_table)


def dumps_by_value(obj: Any) -> bytes:
    """Pickle ``obj`` for a forkserver child (call while a spawning popen is set)."""
    buf = io.BytesIO()
    _ByValuePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


class _ShippedProcess:
    """What the child unpickles in place of the Process: the pickled Process, the report pipe, the trainer.

    ``spawn._main`` calls ``_bootstrap``; the real Process is unpickled here, inside a ``try``,
    so that a failure reaches the parent as text rather than only as exit code 1 on stderr.
    ``trainer`` is a pidfd of the training process (None where there is none).
    """

    def __init__(self, blob: bytes, report: Any, trainer: Any = None):
        self.blob, self.report, self.trainer = blob, report, trainer

    def _bootstrap(self, parent_sentinel: int) -> int:
        global _watching
        report_fd = self.report.detach()
        watch_trainer(self.trainer.detach() if self.trainer is not None else os.dup(parent_sentinel))
        _watching = os.getpid()
        _close_server_alive_fd()
        try:
            process_obj = pickle.loads(self.blob)
        except BaseException as e:
            text = "".join(traceback.format_exception(e))
            _write_report(report_fd, text)
            traceback.print_exception(e)  # also where a user looks: the program's stderr
            return 1
        finally:
            self.blob = b""
        os.close(report_fd)
        return int(process_obj._bootstrap(parent_sentinel))


def watch_trainer(fd: int) -> threading.Thread:
    """Exit this worker as soon as ``fd`` (a pidfd, or a pipe end only the trainer writes) turns readable.

    The thread sleeps in ``poll``: no wake-ups, no GIL, nothing per batch. ``os._exit``, since
    the main thread may be blocked anywhere (a queue, a lock) and nobody waits for its results.
    """
    thread = threading.Thread(target=_exit_when_readable, args=(fd,), name="shardpipe-trainer-watch", daemon=True)
    thread.start()
    return thread


def watch_trainer_from_worker() -> None:
    """In a DataLoader worker whose parent is not its training process (a child of the standard
    library's forkserver: ``multiprocessing_context="forkserver"``, a program's own start method,
    Python 3.14's default), exit when the trainer dies; once per process, and nothing in a worker
    the trainer forked or spawned (torch's parent check covers those) or one started from
    shardpipe's server (it watches from its start).

    The trainer is ``multiprocessing.parent_process()`` (see :func:`watch_parent`). The worker
    also closes its copy of the server's "alive" pipe, so the server exits with the trainer.
    """
    global _watching
    if _watching == os.getpid():
        return
    trainer = multiprocessing.parent_process()
    if trainer is None or trainer.pid == os.getppid() or trainer.sentinel is None:
        _watching = os.getpid()  # nothing to watch from here
        return
    _close_server_alive_fd()
    watch_parent()


def watch_parent() -> None:
    """Exit this process when ``multiprocessing.parent_process()`` ends (even by SIGKILL), at once;
    once per process. A worker of a pool calls it first thing (shardpipe write's prepare workers).

    Its pidfd, opened here and trusted once the parent shows it was still alive afterwards (still
    this process's parent, or its start pipe, the process's sentinel, still open), so a reused pid
    cannot be watched in its place; without pidfds, that pipe itself (which a sibling the parent
    forked later also holds, so it may close late).
    """
    global _watching
    pid = os.getpid()
    if _watching == pid:
        return
    _watching = pid
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    fd = _pidfd(parent.pid)
    if os.getppid() != parent.pid and not parent.is_alive():  # gone already (its pid may name another)
        os._exit(ORPHAN_EXIT)
    watch_trainer(fd if fd is not None else os.dup(parent.sentinel))


def _pidfd(pid: int) -> int | None:
    """A pidfd of process ``pid`` (Linux 5.3+), None where the kernel gives none or it is gone."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:  # ENOSYS (old kernel), EPERM (a seccomp filter), ESRCH (gone)
        return None


def _exit_when_readable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    events = 0
    while not events:  # poll retries an interruption by a signal itself (PEP 475)
        events = sum(event for _, event in poller.poll())
    if events & select.POLLNVAL:  # someone closed the fd (a worker_init_fn closing fds): stop watching
        return
    os._exit(ORPHAN_EXIT)


def _close_server_alive_fd() -> None:
    """Close this child's copy of the server's "alive" pipe: only the trainer's copy keeps the server up.

    ``_serve_one`` stores it for the child's own forkserver use, but a child never talks to
    its parent's server (its ``ForkServer`` has no address there and starts its own server).
    """
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)  # (a private name: another Python may lack it)
    if fd is not None:
        server._forkserver_alive_fd = None
        try:
            os.close(fd)
        except OSError:
            pass


def _own_pidfd() -> int | None:
    """A pidfd of this process for a worker to watch (Linux 5.3+), None where the kernel gives none.

    Opened by the trainer on itself, so it names the trainer even if it died and its pid was
    reused before the worker looked (a pid sent as a number could not promise that).
    """
    return _pidfd(os.getpid())


def _write_report(fd: int, text: str) -> None:
    data = text.encode("utf-8", "replace")
    if len(data) > REPORT_LIMIT:
        data = b"...\n" + data[-REPORT_LIMIT:]
    try:
        os.set_blocking(fd, False)
        os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


class CleanForkServerPopen(popen_forkserver.Popen):
    """Starts one worker through shardpipe's forkserver (see the module docstring)."""

    method = "forkserver"

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        for key in _MAIN_KEYS:
            prep_data.pop(key, None)
        report_r, report_w = os.pipe()
        self._report_fd: int | None = report_r
        os.set_blocking(report_r, False)
        trainer_fd = _own_pidfd()
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            report = self.DupFd(self.duplicate_for_child(report_w))
            trainer = self.DupFd(self.duplicate_for_child(trainer_fd)) if trainer_fd is not None else None
            blob = dumps_by_value(process_obj)
            reduction.dump(prep_data, buf)
            reduction.dump(_ShippedProcess(blob, report, trainer), buf)
            self.sentinel, w = _server.connect_to_new_process(self._fds)
        except BaseException:
            os.close(report_r)
            self._report_fd = None
            raise
        finally:
            context.set_spawning_popen(None)
            os.close(report_w)
            if trainer_fd is not None:
                os.close(trainer_fd)  # sent: the child holds its own copy
        parent_w = os.dup(w)  # the child's sentinel of this parent, as in the stock Popen
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel, report_r))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)

    def startup_report(self) -> str | None:
        """The traceback the child wrote if it failed before the worker began, else None."""
        if self._report_fd is None:
            return None
        try:
            data = os.read(self._report_fd, REPORT_LIMIT + 64)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EBADF):
                return None
            raise
        return data.decode("utf-8", "replace") or None


class CleanForkServerProcess(context.ForkServerProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> CleanForkServerPopen:
        return CleanForkServerPopen(process_obj)


class CleanForkServerContext(context.ForkServerContext):
    """A forkserver context whose workers never re-import ``__main__`` and get ``__main__``'s objects by value."""

    Process = CleanForkServerProcess

    def __repr__(self) -> str:
        return "shardpipe.workerstart.CleanForkServerContext()"


CLEAN_FORKSERVER = CleanForkServerContext()


def startup_report(process: Any) -> str | None:
    """A worker's own start-up traceback, when it was started by ``CLEAN_FORKSERVER`` and failed early."""
    popen = getattr(process, "_popen", None)
    return popen.startup_report() if isinstance(popen, CleanForkServerPopen) else None


def prestart() -> None:
    """Start the server now (it imports torch in the background), so the first pass need not wait as long."""
    _server.ensure_running()


def server_pid() -> int | None:
    """The pid of shardpipe's forkserver process (None before the first worker start)."""
    return _server._forkserver_pid
