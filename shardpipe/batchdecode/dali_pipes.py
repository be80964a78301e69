"""DALI pipelines' lifetimes: released when shardpipe drops them, never torn down in a forked child.

A DALI pipeline sits in reference cycles, so dropping it frees nothing: the cyclic garbage
collector destroys it later, whenever it runs. If that is in a process forked after the
pipeline was built (a DataLoader worker), the destructor joins DALI's executor threads,
which do not exist there, and the child dies of a segmentation fault. So:

- ``release`` shuts a pipeline down at once (its threads joined, its memory freed), as
  ``DaliBatchDecoder.close`` and a rebuild after a failed batch promise;
- every pipeline built here is tracked, and a forked child disowns the parent's ones right
  after the fork: their backend objects are kept alive for good (a copy of the parent's
  memory the child never uses) and the Python objects forget them, so neither a garbage
  collection nor the interpreter's exit in the child runs DALI's teardown.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from typing import Any

_built: weakref.WeakSet[Any] = weakref.WeakSet()


def track(pipe: Any) -> Any:
    """Remember ``pipe`` (a built DALI pipeline) for the fork hook; returns it."""
    _built.add(pipe)
    return pipe


def release(pipe: Any) -> None:
    """Shut ``pipe`` down now instead of whenever the garbage collector frees it (maybe in a child)."""
    _built.discard(pipe)
    shutdown = getattr(pipe, "_shutdown", None)  # DALI's own teardown (it has no public one)
    if shutdown is not None:
        shutdown()


def _disown_in_child() -> None:
    """Runs first thing in a forked child: leave the parent's pipelines' backends alone for good."""
    for pipe in list(_built):
        backend = getattr(pipe, "_pipe", None)
        if backend is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(backend))  # never freed, even at exit
            pipe._pipe = None  # Pipeline._shutdown (its __del__) now does nothing
    _built.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_in_child)
