"""``ReadOptions``: how remote shards are read, checked where they are made.

Each field is checked when the dataclass is made (``ReadOptions(...)``,
``dataclasses.replace``), so a nonsense value (a zero timeout, a negative back-off, a
string) fails there, naming the field, rather than as a hang or a busy loop mid-read.
The CLI's ``--read-options`` reports the same check in its own words.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

from shardpipe.io.budget import DEFAULT_MEMORY_LIMIT

#: fields that must be above 0 (the other numbers may be 0)
_POSITIVE = ("block_size", "min_block", "memory_limit", "timeout")


class ReadOptionError(Exception):
    """A ``ReadOptions`` field given a value it cannot take: ``field``, ``requirement`` ("must be ..."), ``value``."""

    def __init__(self, field: str, requirement: str, value: Any):
        super().__init__(f"ReadOptions.{field} {requirement}, got {value!r}")
        self.field, self.requirement, self.value = field, requirement, value


class ReadOptionTypeError(ReadOptionError, TypeError):
    """A field given a value of the wrong type (a string, a bool, a float where an integer goes)."""


class ReadOptionValueError(ReadOptionError, ValueError):
    """A field given a number out of its range (a zero timeout, negative retries, a NaN)."""


@dataclass(frozen=True)
class ReadOptions:
    """How remote shards are read: request sizes, the window, the memory bound, retries.

    By default (``readahead=None``) the window adapts to the link (see
    ``shardpipe.io.stream``); an integer ``readahead`` fixes it at that many requests
    of ``block_size`` bytes beyond the block being consumed. A value a field cannot take
    is a :class:`ReadOptionTypeError` (a ``TypeError``) or :class:`ReadOptionValueError`
    (a ``ValueError``) naming the field.
    """

    block_size: int = 16 << 20  #: the largest ranged request (adaptive requests grow to it)
    readahead: int | None = None  #: None: adaptive window; n: n requests in flight beyond the current block
    min_block: int = 1 << 20  #: the first request of a stream (then each doubles up to block_size)
    memory_limit: int = DEFAULT_MEMORY_LIMIT  #: bytes requested and not yet consumed, per process
    retries: int = 8  #: consecutive failed attempts at one offset before giving up
    backoff: float = 0.25  #: seconds before the first retry; doubles each time
    max_backoff: float = 8.0  #: cap on the wait between retries
    timeout: float = 60.0  #: seconds one block request may take (stalls are retried)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_field(f.name, str(f.type), getattr(self, f.name))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff)


def check_field(name: str, kind: str, value: Any) -> None:
    """Raise :class:`ReadOptionError` unless ``value`` fits the field ``name`` of type ``kind``
    ("int", "float", "int | None"): integers for counts and bytes, finite numbers for seconds."""
    if value is None and "None" in kind:
        return
    real = "float" in kind
    if isinstance(value, bool) or not isinstance(value, numbers.Real if real else numbers.Integral):
        want = "a number" if real else "an integer"
        raise ReadOptionTypeError(name, f"must be {want}{' or None' if 'None' in kind else ''}", value)
    if real and not math.isfinite(value):
        raise ReadOptionValueError(name, "must be a finite number", value)
    if value < 0 or (value == 0 and name in _POSITIVE):
        raise ReadOptionValueError(name, "must be above 0" if name in _POSITIVE else "must be 0 or more", value)


def attempts(n: int) -> str:
    """'1 attempt' or 'N attempts', for messages ("cannot open after 1 attempt")."""
    return "1 attempt" if n == 1 else f"{n} attempts"
