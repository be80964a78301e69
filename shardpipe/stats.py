"""Per-stage timings and error counts, summed over DataLoader worker processes.

Each worker adds what it measured into its own row of a shared-memory tensor, so the
main process can read the totals at any time (one writer per row: no locks needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from shardpipe.format.tar.reader import SKIPPED_KINDS

if TYPE_CHECKING:
    from shardpipe.stages.base import Context

STAGES = ("read", "untar", "decode", "augment", "batch")
ERRORS = (
    "ShardNotFoundError",
    "ShardReadError",
    "TruncatedShardError",
    "CorruptShardError",
    "DecodeError",
    "MissingFieldError",
    "other",
)
#: tar members stepped over (only regular files are members of samples), by kind
SKIPPED = tuple(SKIPPED_KINDS.values())
_SLOTS = (
    [f"time.{s}" for s in STAGES]
    + [f"items.{s}" for s in STAGES]
    + [f"errors.{e}" for e in ERRORS]
    + [f"skipped.{k}" for k in SKIPPED]
)
_INDEX = {name: i for i, name in enumerate(_SLOTS)}
MAX_ROWS = 257  # row 0: the main process; rows 1..256: DataLoader workers


class SharedStats:
    """Cumulative counters in shared memory; survive pickling into worker processes."""

    def __init__(self) -> None:
        self.table = torch.zeros((MAX_ROWS, len(_SLOTS)), dtype=torch.float64).share_memory_()

    def add(
        self,
        row: int,
        timers: dict[str, float],
        counts: dict[str, int],
        errors: dict[str, int],
        skipped: dict[str, int] | None = None,
    ) -> None:
        """Add deltas measured by one consumer into its row."""
        r = self.table[row % MAX_ROWS]
        for name, value in timers.items():
            if f"time.{name}" in _INDEX:
                r[_INDEX[f"time.{name}"]] += value
        for name, value in counts.items():
            if f"items.{name}" in _INDEX:
                r[_INDEX[f"items.{name}"]] += value
        for name, value in errors.items():
            r[_INDEX.get(f"errors.{name}", _INDEX["errors.other"])] += value
        for name, value in (skipped or {}).items():
            if f"skipped.{name}" in _INDEX:
                r[_INDEX[f"skipped.{name}"]] += value

    def totals(self) -> dict[str, float]:
        summed = self.table.sum(0).tolist()
        return {name: summed[i] for i, name in enumerate(_SLOTS)}

    def errors(self) -> dict[str, int]:
        """Skipped items by error type (only non-zero entries)."""
        t = self.totals()
        return {e: int(t[f"errors.{e}"]) for e in ERRORS if t[f"errors.{e}"]}

    def skipped(self) -> dict[str, int]:
        """Tar members stepped over, by kind (hard links, symbolic links, GNU sparse files; only non-zero):
        only regular files are members of samples, and a shard holding these may hold data meant as samples."""
        t = self.totals()
        return {k: int(t[f"skipped.{k}"]) for k in SKIPPED if t[f"skipped.{k}"]}

    def stage_table(self) -> dict[str, float]:
        """Seconds per 1000 samples for each stage (over the samples that reached decode)."""
        t = self.totals()
        samples = max(t["items.decode"], t["items.batch"], 1.0)
        return {s: 1000.0 * t[f"time.{s}"] / samples for s in STAGES}

    def reset(self) -> None:
        self.table.zero_()


class StatsFlusher:
    """Adds what a pipeline measured since the last flush into the shared stats."""

    def __init__(self, stats: SharedStats, row: int, ctx: Context):
        self.stats, self.row, self.ctx = stats, row, ctx
        self._timers: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._skipped: dict[str, int] = {}

    def flush(self) -> None:
        c = self.ctx
        dt = {k: v - self._timers.get(k, 0.0) for k, v in c.timers.items()}
        dc = {k: v - self._counts.get(k, 0) for k, v in c.counts.items()}
        de = {k: v - self._errors.get(k, 0) for k, v in c.errors.counts.items()}
        dk = {k: v - self._skipped.get(k, 0) for k, v in c.skipped.items()}
        self.stats.add(self.row, dt, dc, de, dk)
        self._timers, self._counts, self._errors = dict(c.timers), dict(c.counts), dict(c.errors.counts)
        self._skipped = dict(c.skipped)
