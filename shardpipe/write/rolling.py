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
from shardpipe.write.prepare import Skipped, prepared, to_sample
from shardpipe.write.run import WriteRun, WriteSummary
from shardpipe.write.shard_writer import MANIFEST, ShardWriter
from shardpipe.write.sources import Skip

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


def write_rolling(run: WriteRun, bar: Any) -> WriteSummary:
    """Write the shards in sequence; the summary's counts (the caller adds the rest)."""
    opts = run.options
    storage_options = opts.fsspec_options
    progress_url = join_url(run.folder, outfiles.PROGRESS)
    point = _resume_point(run.folder, run.fingerprint, storage_options) if opts.resume else _ResumePoint()
    if not opts.resume:
        outfiles.remove(progress_url, storage_options)
    start, done, ends, load_skips = point.start, point.shards, point.ends, point.skips
    written_now = presized = marked = 0
    bar.update(start)
    items = list(enumerate(run.records))[start:]
    with ShardWriter(
        run.pattern, maxcount=opts.maxcount, maxsize=opts.maxsize, compress=opts.compress, start_shard=len(done),
        metadata=run.metadata, storage_options=storage_options,
    ) as writer:  # fmt: skip
        writer.shards = list(done)
        for item in prepared(run.source, opts.prepare, items, opts.parallelism):
            bar.update(1)
            if isinstance(item, Skipped):
                load_skips.append((item.pos, Skip(item.name, item.reason)))
                continue
            before = len(writer.shards)
            writer.write(to_sample(item))
            written_now += 1
            presized += item.presized
            marked += item.marked
            if len(writer.shards) > before:  # the previous shard is complete: inputs < pos are done
                ends.append(item.pos)
                skips = [[p, s.name, s.reason] for p, s in load_skips]
                state = {"fingerprint": run.fingerprint, "shards": writer.shards, "ends": ends, "skipped": skips}
                outfiles.write_json(progress_url, state, storage_options)
                bar.set_postfix(
                    shards=len(writer.shards), skipped=len(load_skips) + len(run.scan_skipped), refresh=False
                )  # fmt: skip
        skipped = list(run.scan_skipped) + [s for _, s in load_skips]
        writer.metadata["skipped"] = [{"name": s.name, "reason": s.reason} for s in skipped]
    outfiles.remove(progress_url, storage_options)
    return WriteSummary(
        written=sum(s["samples"] for s in writer.shards), written_now=written_now, presized=presized,
        marked=marked, skipped=skipped, shards=len(writer.shards), bytes=sum(s["bytes"] for s in writer.shards),
        resumed_shards=len(done), manifest=join_url(run.folder, MANIFEST) if writer.shards else None,
    )  # fmt: skip
