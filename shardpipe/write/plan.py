"""Shard plans: which inputs each output shard holds, decided before any work runs.

Shard ``i`` holds the inputs at positions ``[i * maxcount, (i + 1) * maxcount)`` of the
(shuffled) source listing. An input that cannot be read leaves its shard one sample
shorter and never moves a later input into it, so a shard's bytes depend only on its
own inputs and the options: any engine, on any number of workers or machines, writes
the same shards. A shard whose inputs were all skipped is still written (an empty tar),
so shard numbers stay contiguous.

Every engine writes a shard with :func:`write_shard`; engines differ only in where
the work runs (see :mod:`shardpipe.write.engines`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from shardpipe.write.prepare import PrepareOptions, PrepareResult, Skipped, prepare, prepared, to_sample
from shardpipe.write.shard_writer import ShardWriter
from shardpipe.write.sources import Record, Source

_UNLIMITED = 1 << 62  # one planned shard is never rolled over by the writer


class ShardTaskError(RuntimeError):
    """A shard's task kept failing after the engine's retries."""


@dataclass(frozen=True)
class ShardJob:
    """What every shard task needs: the source, the per-image options, where shards go."""

    source: Source
    opts: PrepareOptions
    pattern: str
    compress: str | None = None
    storage_options: dict[str, Any] | None = None


@dataclass
class ShardTask:
    """One output shard: its number and its inputs as ``(position, record)``."""

    index: int
    items: list[tuple[int, Record]]

    @property
    def span(self) -> str:
        """``inputs 30-39`` (positions in the shuffled listing), for messages."""
        if not self.items:
            return "no inputs"
        return f"inputs {self.items[0][0]}-{self.items[-1][0]}"


@dataclass
class ShardResult:
    """What writing one shard gave: its manifest entry and the inputs it skipped."""

    index: int
    entry: dict[str, Any]
    skips: list[Skipped] = field(default_factory=list)
    written: int = 0
    presized: int = 0
    marked: int = 0  #: copied with restart intervals added (``Prepared.marked``)
    sample_index: Any = None  #: the shard's sample index, when the writer keeps one (manifest sidecar)


def plan_shards(records: list[Record], maxcount: int) -> list[ShardTask]:
    """Split the listing into whole shards of ``maxcount`` inputs (the last one may be shorter)."""
    if maxcount < 1:
        raise ValueError(f"maxcount must be positive, got {maxcount}")
    items = list(enumerate(records))
    return [ShardTask(i, items[start : start + maxcount]) for i, start in enumerate(range(0, len(items), maxcount))]


def write_shard(job: ShardJob, index: int, results: Iterable[PrepareResult]) -> ShardResult:
    """Write shard ``index`` from prepared items (see :func:`~shardpipe.write.prepare.prepare`), in order."""
    writer = ShardWriter(
        job.pattern, maxcount=_UNLIMITED, maxsize=_UNLIMITED, compress=job.compress, start_shard=index,
        manifest=False, storage_options=job.storage_options,
    )  # fmt: skip
    result = ShardResult(index, {})
    with writer:
        for item in results:
            if isinstance(item, Skipped):
                result.skips.append(item)
                continue
            writer.write(to_sample(item))
            result.written += 1
            result.presized += item.presized
            result.marked += item.marked
        if writer._tar is None:  # every input skipped: still write the (empty) shard, numbers stay contiguous
            writer._open()
    result.entry = writer.shards[0]
    result.sample_index = getattr(writer, "indexes", {}).get(result.entry["name"])
    return result


def run_task(job: ShardJob, task: ShardTask) -> ShardResult:
    """Read, check, presize and write one shard in this process (a remote engine's task)."""
    return write_shard(job, task.index, (prepare(job.source, job.opts, pos, rec) for pos, rec in task.items))


def run_local(
    job: ShardJob,
    tasks: list[ShardTask],
    *,
    workers: int = 1,
    on_images: Callable[[int], None],
    on_done: Callable[[ShardResult], None],
    **_: Any,
) -> None:
    """The local engine: prepare every input in order with ``workers``, write shards one after another."""
    items = [item for task in tasks for item in task.items]

    def counted() -> Iterator[PrepareResult]:
        for item in prepared(job.source, job.opts, items, workers):
            on_images(1)
            yield item

    stream = counted()
    for task in tasks:
        on_done(write_shard(job, task.index, islice(stream, len(task.items))))
