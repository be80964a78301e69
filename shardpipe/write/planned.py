"""The driver of a planned write: plan the shards, run the missing ones on an engine, write the manifest.

Resume: the progress file (``manifest.json.progress``) records every finished shard's
manifest entry and skipped inputs. ``resume=True`` keeps each recorded shard whose file
still has the recorded size (shards are renamed into place only when complete, so a
file under a final name is whole) and runs only the others, in any order, on any
engine. The local engine records after every shard; remote engines at most every
``SAVE_INTERVAL`` seconds (a shard finished but not yet recorded when the driver dies
is written again, with the same bytes).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shardpipe.io.files import join_url
from shardpipe.write import outfiles
from shardpipe.write.engines import write_engine
from shardpipe.write.plan import ShardJob, ShardResult, plan_shards
from shardpipe.write.prepare import Skipped
from shardpipe.write.run import WriteRun, WriteSummary
from shardpipe.write.shard_writer import MANIFEST, ShardWriter
from shardpipe.write.sources import Skip

log = logging.getLogger("shardpipe")

SAVE_INTERVAL = 2.0  #: seconds between progress-file writes of a remote engine's driver


def _recorded(
    folder: str, fingerprint: dict[str, Any], storage_options: dict[str, Any] | None
) -> dict[int, ShardResult]:
    """The shards an interrupted run recorded that are still intact, by shard number."""
    state = outfiles.read_progress(folder, fingerprint, storage_options)
    kept: dict[int, ShardResult] = {}
    if state is None:
        return kept
    for number, entry in state["shards"].items():
        if outfiles.size(join_url(folder, entry["name"]), storage_options) != entry["bytes"]:
            log.warning("shard %s is missing or changed: writing it again", entry["name"])
            continue
        skips = [Skipped(*s) for s in state["skipped"].get(number, [])]
        kept[int(number)] = ShardResult(int(number), entry, skips)
    return kept


class _Progress:
    """The finished shards of a planned write, saved to the progress file at most every ``interval`` seconds."""

    def __init__(self, run: WriteRun, done: dict[int, ShardResult], bar: Any, interval: float) -> None:
        self.run = run
        self.url = join_url(run.folder, outfiles.PROGRESS)
        self.done = done
        self.bar = bar
        self.interval = interval
        self.saved_at = time.monotonic()
        self.skipped = 0  #: inputs skipped while loading in this call
        self.written_now = 0
        self.presized = 0
        self.marked = 0

    def save(self) -> None:
        state = {
            "fingerprint": self.run.fingerprint,
            "shards": {str(i): r.entry for i, r in sorted(self.done.items())},
            "skipped": {str(i): [list(s) for s in r.skips] for i, r in sorted(self.done.items()) if r.skips},
        }
        outfiles.write_json(self.url, state, self.run.options.fsspec_options)
        self.saved_at = time.monotonic()

    def on_done(self, result: ShardResult) -> None:
        self.done[result.index] = result
        self.written_now += result.written
        self.presized += result.presized
        self.marked += result.marked
        self.skipped += len(result.skips)
        self.bar.set_postfix(
            shards=len(self.done), skipped=self.skipped + len(self.run.scan_skipped), refresh=False
        )  # fmt: skip
        if time.monotonic() - self.saved_at >= self.interval:
            self.save()


def write_planned(run: WriteRun, bar: Any) -> WriteSummary:
    """Write every planned shard not already done; the summary's counts (the caller adds the rest)."""
    opts = run.options
    storage_options = opts.fsspec_options
    engine = write_engine(opts.engine)
    tasks = plan_shards(run.records, opts.maxcount)
    done = _recorded(run.folder, run.fingerprint, storage_options) if opts.resume else {}
    progress = _Progress(run, done, bar, 0.0 if opts.engine == "local" else SAVE_INTERVAL)
    if not opts.resume:
        outfiles.remove(progress.url, storage_options)
    resumed_shards = len(done)
    bar.update(sum(len(tasks[i].items) for i in done))
    job = ShardJob(run.source, opts.prepare, run.pattern, opts.compress, storage_options)
    todo = [t for t in tasks if t.index not in done]
    try:
        engine(
            job, todo, workers=opts.parallelism, address=opts.ray_address, on_images=bar.update,
            on_done=progress.on_done,
        )  # fmt: skip
    except BaseException:
        if done:
            progress.save()  # what finished before the failure is kept for --resume
        raise
    outfiles.remove_stale_temps(run.pattern)  # left by workers that died mid-shard (their task was rerun)
    results = [done[t.index] for t in tasks]
    load_skips = sorted(s for r in results for s in r.skips)
    skipped = list(run.scan_skipped) + [Skip(s.name, s.reason) for s in load_skips]
    manifest = None
    if results:
        writer = ShardWriter(
            run.pattern, compress=opts.compress, metadata=run.metadata, storage_options=storage_options
        )
        writer.metadata["skipped"] = [{"name": s.name, "reason": s.reason} for s in skipped]
        writer.shards = [r.entry for r in results]
        indexes = getattr(writer, "indexes", None)
        if indexes is not None:  # the index sidecar: shards kept from an earlier run are scanned by the writer
            indexes.update({r.entry["name"]: r.sample_index for r in results if r.sample_index is not None})
        writer.write_manifest_file()
        manifest = join_url(run.folder, MANIFEST)
    outfiles.remove(progress.url, storage_options)
    return WriteSummary(
        written=sum(r.entry["samples"] for r in results), written_now=progress.written_now,
        presized=progress.presized, marked=progress.marked, skipped=skipped, shards=len(results),
        bytes=sum(r.entry["bytes"] for r in results), resumed_shards=resumed_shards, manifest=manifest,
    )  # fmt: skip
