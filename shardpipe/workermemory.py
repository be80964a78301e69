"""Keep a worker's freed memory for its next image instead of giving it back to the kernel,
and fault in a fresh shared-memory batch buffer in one call instead of one trap per page.

glibc's malloc returns large blocks to the kernel as soon as they are freed (blocks above
its mmap threshold are unmapped; free space at the top of the heap above the trim
threshold is trimmed). Both thresholds start small (128 KiB, 256 KiB) and only grow once
a large mapped block has been freed. A decode worker allocates and frees the same few
buffers for every image (the decoded crop, the resized output: 100 KB to a few MB), so
with the defaults each image's buffers are faulted in afresh: ~10 page faults, each a
trap and a zeroed page (~1.7 us here), about 1.5% of a photo's decode.

``tune_worker_allocator`` fixes both thresholds once per worker process (DataLoader
workers running a shardpipe pipeline; never the user's main process): blocks below
``MMAP_THRESHOLD`` come from the heap, and up to ``TRIM_THRESHOLD`` of free heap top is
kept. That is at most 32 MiB held per worker, within what glibc's own dynamic thresholds
reach. Set ``SHARDPIPE_WORKER_MALLOC=default`` to leave the allocator alone. Other C
libraries (musl) are left as they are.

``populate`` asks Linux (5.14+, ``MADV_POPULATE_WRITE``) to allocate a fresh buffer's pages
at once: a worker's first batches each fill a new 9.6 MB segment (64 x 224 x 224 x 3), and
taking its 2,352 pages in one call instead of one fault each as the decode writes its rows
costs ~1.3 ms less a buffer here (6.2 -> 4.9 ms, zeroing included). Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import Literal

log = logging.getLogger("shardpipe")

#: glibc's mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks smaller than this come from the heap (a 1600x1200 RGB decode is 5.8 MB)
MMAP_THRESHOLD = 8 << 20
#: free memory at the top of the heap kept for the next image
TRIM_THRESHOLD = 32 << 20
ENV = "SHARDPIPE_WORKER_MALLOC"

_tuned: tuple[int, bool] | None = None  # (pid, result): forked children try again
#: madvise(2) advice: populate (prefault) page tables writable, Linux 5.14+
MADV_POPULATE_WRITE = 23
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_madvise: Callable[[int, int, int], int] | Literal[False] | None = None  # None: not looked up yet


def tune_worker_allocator() -> bool:
    """Set the worker's malloc thresholds (once per process); True if they are set."""
    global _tuned
    pid = os.getpid()
    if _tuned is None or _tuned[0] != pid:
        _tuned = (pid, _apply())
    return _tuned[1]


def _glibc() -> bool:
    """Whether this process runs on glibc (asked of the C library itself, not read from a binary)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return False


def _apply() -> bool:
    if os.environ.get(ENV, "").strip().lower() == "default":
        return False
    if not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("shardpipe: mallopt refused the worker's thresholds; the allocator keeps its defaults")
    return ok


def populate(address: int, nbytes: int) -> bool:
    """Fault in the ``nbytes`` of writable memory at ``address`` in one call (``MADV_POPULATE_WRITE``);
    False where the kernel cannot (older than 5.14, not Linux) or the range is not mapped writable.
    Nothing changes but when the pages are allocated: a failure is no error."""
    global _madvise
    if _madvise is None:
        _madvise = _lookup_madvise()
    if _madvise is False or nbytes <= 0:
        return False
    start = address - address % PAGE
    if _madvise(start, nbytes + (address - start), MADV_POPULATE_WRITE) == 0:
        return True
    if ctypes.get_errno() == errno.EINVAL:  # a kernel without the advice: stop asking
        _madvise = False
    return False


def _lookup_madvise() -> Callable[[int, int, int], int] | Literal[False]:
    """libc's ``madvise`` (errno kept for ``ctypes.get_errno``), or False off Linux or without a C library."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return False
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]
