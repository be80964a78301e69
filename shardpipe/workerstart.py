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
  the parent reads it once it notices the worker is gone (``startup_report``).

The server is shardpipe's own (not the process-wide one a user may configure), preloading
torch, numpy and the pipeline modules once so that each worker starts warm.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
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
    """What the child unpickles in place of the Process: the pickled Process and the report pipe.

    ``spawn._main`` calls ``_bootstrap``; the real Process is unpickled here, inside a ``try``,
    so that a failure reaches the parent as text rather than only as exit code 1 on stderr.
    """

    def __init__(self, blob: bytes, report: Any):
        self.blob, self.report = blob, report

    def _bootstrap(self, parent_sentinel: int) -> int:
        report_fd = self.report.detach()
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
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            report = self.DupFd(self.duplicate_for_child(report_w))
            blob = dumps_by_value(process_obj)
            reduction.dump(prep_data, buf)
            reduction.dump(_ShippedProcess(blob, report), buf)
            self.sentinel, w = _server.connect_to_new_process(self._fds)
        except BaseException:
            os.close(report_r)
            self._report_fd = None
            raise
        finally:
            context.set_spawning_popen(None)
            os.close(report_w)
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
