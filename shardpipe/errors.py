"""Error types and ``on_error`` (raise, warn or skip) with counters.

Every recoverable problem in the pipeline is one of the exception types below.
``on_error`` decides what happens: ``raise`` stops the epoch with the error, ``warn`` logs
it and skips the item, ``skip`` skips it quietly. Skips are always counted, so an
epoch that lost data says so.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

log = logging.getLogger("shardpipe")

#: what bad data does: raise, warn (log and skip) or skip (count only)
OnError = Literal["raise", "warn", "skip"]
ON_ERROR: tuple[str, ...] = ("raise", "warn", "skip")


class ShardpipeError(Exception):
    """Base class of every error shardpipe raises on bad data."""


class ShardNotFoundError(ShardpipeError, FileNotFoundError):
    """A shard URL that does not exist."""


class ShardReadError(ShardpipeError, OSError):
    """A shard that exists but cannot be read (permissions, a directory, an I/O error)."""


class TruncatedShardError(ShardpipeError):
    """A tar or gzip stream that ends early (before the end-of-archive marker)."""


class ShardUnavailableError(TruncatedShardError):
    """An object the store would not serve after the retries: each try to open it answered a 5xx or
    nothing within ``ReadOptions.timeout``. The store is up (it took the connection) but failing: the
    object may be intact, so it is neither missing nor damaged (a ``TruncatedShardError`` as before)."""


class CorruptShardError(ShardpipeError):
    """A tar stream that is not a valid tar archive (bad header, bad gzip data)."""


class NotTarError(CorruptShardError):
    """A file that is not a tar archive at all (no valid first header): a JSON, image or other file
    caught by a glob, not a damaged or cut shard."""


class DuplicateMemberError(CorruptShardError):
    """A sample with two members of one extension (its members are not consecutive, or repeated)."""


class StateError(ShardpipeError, ValueError):
    """A resume state (or a fleet request's state) that does not fit this dataset.

    The message names the field by its path in the state, which nests one ``['source']`` per
    pipeline stage, so the path depends on the pipeline. An example, from a shuffled, batched
    ``ShardDataset``:
    ``state['stages']['source']['source']['source']['source']['shard']['offset']: must be >= 0, got -5``.
    """


class DecodeError(ShardpipeError):
    """A member whose bytes do not decode (corrupt image, bad JSON, bad label)."""


class WorkerStallError(ShardpipeError, TimeoutError):
    """A DataLoader worker that made no progress within the loader's ``stall_timeout``.

    The message names the worker (id and pid), the stage it was in and the shard it was
    reading; the stalled workers are stopped before it is raised.
    """


class SetupError(ShardpipeError, ValueError):
    """A launcher, framework or environment set up so that shardpipe would repeat or drop samples.

    (Half-set rank variables, a loader handed to a framework that re-splits it, ...) The
    message names what is missing or conflicting and what to do instead.
    """


class WorkerDiedError(ShardpipeError, RuntimeError):
    """A DataLoader worker process that ended while the loader still needed it (killed, crashed).

    The message names the worker (id and pid), how it ended (exit code or signal), the
    stage and shard it was in, and what to do; the other workers are stopped first.
    """


class WorkerStartError(WorkerDiedError):
    """A DataLoader worker that ended before its pipeline started (its own error is in the message)."""


class ListenError(ShardpipeError, OSError):
    """A server cannot listen where it was told (address in use, a malformed endpoint, no such interface)."""


class MissingFieldError(ShardpipeError, KeyError):
    """A sample without a field the pipeline needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TransformError(RuntimeError):
    """A user's transform raised: a bug in code, not bad data, so ``on_error`` does not skip it.

    The message names the transform, the sample and its shard. A transform that wants a
    sample skipped as bad data raises ``DecodeError`` instead (``on_error`` then applies).
    """


class OutputInUseError(RuntimeError):
    """An output folder that another running command is writing into (it holds the folder's lock)."""


class ErrorHandler:
    """Applies ``on_error`` to errors and counts what was skipped, by error type.

    (``ShardDataset`` adds these counts into shared memory, so the counts from
    DataLoader workers reach the main process: ``dataset.stats.errors()``.)
    """

    def __init__(self, on_error: OnError = "raise"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self.on_error = on_error
        self.counts: Counter[str] = Counter()

    def __call__(self, exc: Exception) -> None:
        """Raise ``exc`` under ``on_error="raise"``; otherwise count (and maybe log) it."""
        if self.on_error == "raise":
            raise exc
        name = type(exc).__name__
        self.counts[name] += 1
        if self.on_error == "warn":
            log.warning("skipped: %s: %s", name, exc)
