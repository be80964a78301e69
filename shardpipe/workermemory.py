"""Keep a worker's freed memory for its next image instead of giving it back to the kernel.

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
"""

from __future__ import annotations

import ctypes
import logging
import os

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
