"""Writing with ``maxsize``: shards roll over by bytes as well as count, one after another.

Where a shard ends depends on the sizes of the images before it (and a skipped input
moves the next one into its place), so this layout can only be written in sequence,
by the local engine. Resume: after each completed shard the progress file records the
shards so far and the input position where the next one starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from shardpipe.io.files import join_url
from shardpipe.write import outfiles
from shardpipe.write.prepare import PrepareOptions, prepared, to_sample
from shardpipe.write.shard_writer import MANIFEST, ShardWriter
from shardpipe.write.sources import Record, Skip, Source

log = logging.getLogger("shardpipe")


@dataclass
class _ResumePoint:
    """Where an interrupted run stopped: input position, its complete shards, its load skips."""

    start: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  #: input position where each shard's successor starts
    skips: list[tuple[int, Skip]] = field(default_factory=list)


def _resume_point(folder: str, fingerprint: dict[str, Any], storage_options: dict[str, Any] | None) -> _ResumePoint:
    """Read the progress file and keep the recorded shards still intact, up to the first that is not."""
    state = outfiles.read_progress(folder, fingerprint, storage_options)
    point = _ResumePoint()
    if state is None:
        return point
    for entry, end in zip(state["shards"], state["ends"]):
        if outfiles.size(join_url(folder, entry["name"]), storage_options) != entry["bytes"]:
            log.warning("shard %s is missing or changed: rewriting from there", entry["name"])
            break
        point.shards.append(entry)
        point.ends.append(end)
    point.start = point.ends[-1] if point.ends else 0
    point.skips = [(p, Skip(n, r)) for p, n, r in state["skipped"] if p < point.start]
    return point


def write_rolling(
    src: Source,
    opts: PrepareOptions,
    records: list[Record],
    scan_skipped: list[Skip],
    pattern: str,
    folder: str,
    *,
    maxcount: int,
    maxsize: int,
    compress: str | None,
    workers: int,
    resume: bool,
    fingerprint: dict[str, Any],
    metadata: dict[str, Any],
    storage_options: dict[str, Any] | None,
    summary: Any,
    bar: Any,
) -> None:
    """Write the shards in sequence, filling ``summary`` (a :class:`~shardpipe.write.job.WriteSummary`)."""
    progress_url = join_url(folder, outfiles.PROGRESS)
    point = _resume_point(folder, fingerprint, storage_options) if resume else _ResumePoint()
    if not resume:
        outfiles.remove(progress_url, storage_options)
    start, done, ends, load_skips = point.start, point.shards, point.ends, point.skips
    summary.resumed_shards = len(done)
    bar.update(start)
    items = list(enumerate(records))[start:]
    with ShardWriter(
        pattern, maxcount=maxcount, maxsize=maxsize, compress=compress, start_shard=len(done),
        metadata=metadata, storage_options=storage_options,
    ) as writer:  # fmt: skip
        writer.shards = list(done)
        for item in prepared(src, opts, items, workers):
            bar.update(1)
            if len(item) == 3:
                load_skips.append((item[0], Skip(item[1], item[2])))
                continue
            before = len(writer.shards)
            writer.write(to_sample(item))
            summary.written_now += 1
            summary.presized += item[6]
            if len(writer.shards) > before:  # the previous shard is complete: inputs < pos are done
                ends.append(item[0])
                skips = [[p, s.name, s.reason] for p, s in load_skips]
                state = {"fingerprint": fingerprint, "shards": writer.shards, "ends": ends, "skipped": skips}
                outfiles.write_json(progress_url, state, storage_options)
                bar.set_postfix(shards=len(writer.shards), skipped=len(load_skips) + len(scan_skipped), refresh=False)
        summary.skipped = list(scan_skipped) + [s for _, s in load_skips]
        writer.metadata["skipped"] = [{"name": s.name, "reason": s.reason} for s in summary.skipped]
    if writer.shards:
        summary.manifest = join_url(folder, MANIFEST)
    outfiles.remove(progress_url, storage_options)
    summary.shards = len(writer.shards)
    summary.written = sum(s["samples"] for s in writer.shards)
    summary.bytes = sum(s["bytes"] for s in writer.shards)
