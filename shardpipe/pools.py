"""Thread pools whose ``with`` block a Ctrl-C leaves at once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


@contextmanager
def thread_pool(workers: int, name: str = "shardpipe") -> Iterator[ThreadPoolExecutor]:
    """A ``ThreadPoolExecutor`` of ``workers`` threads that is shut down when the block ends.

    Left by Ctrl-C (``KeyboardInterrupt``), it cancels the queued calls and does not wait for the
    running ones: a thread blocked on a stalled store would hold the program for up to the read
    options' timeout x tries. Such a thread ends with its call, or with the process (the CLI exits
    at once after Ctrl-C: ``shardpipe.cli.entry``). Any other way out waits, as ``with`` does.
    """
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix=name)
    try:
        yield pool
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
