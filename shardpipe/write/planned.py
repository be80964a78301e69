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
from shardpipe.write.prepare import PrepareOptions
from shardpipe.write.shard_writer import MANIFEST, ShardWriter
from shardpipe.write.sources import Record, Skip, Source

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
        skips = [tuple(s) for s in state["skipped"].get(number, [])]
        kept[int(number)] = ShardResult(int(number), entry, skips)  # type: ignore[arg-type]
    return kept


def write_planned(
    src: Source,
    opts: PrepareOptions,
    records: list[Record],
    scan_skipped: list[Skip],
    pattern: str,
    folder: str,
    *,
    maxcount: int,
    compress: str | None,
    workers: int,
    resume: bool,
    engine: str,
    engine_options: dict[str, Any],
    fingerprint: dict[str, Any],
    metadata: dict[str, Any],
    storage_options: dict[str, Any] | None,
    summary: Any,
    bar: Any,
) -> None:
    """Write every planned shard not already done, filling ``summary`` (a ``WriteSummary``)."""
    run = write_engine(engine)
    progress_url = join_url(folder, outfiles.PROGRESS)
    tasks = plan_shards(records, maxcount)
    done = _recorded(folder, fingerprint, storage_options) if resume else {}
    if not resume:
        outfiles.remove(progress_url, storage_options)
    summary.resumed_shards = len(done)
    bar.update(sum(len(tasks[i].items) for i in done))
    interval = 0.0 if engine == "local" else SAVE_INTERVAL
    saved = [time.monotonic()]
    skipped = [0]

    def save() -> None:
        state = {
            "fingerprint": fingerprint,
            "shards": {str(i): r.entry for i, r in sorted(done.items())},
            "skipped": {str(i): [list(s) for s in r.skips] for i, r in sorted(done.items()) if r.skips},
        }
        outfiles.write_json(progress_url, state, storage_options)
        saved[0] = time.monotonic()

    def on_done(result: ShardResult) -> None:
        done[result.index] = result
        summary.written_now += result.written
        summary.presized += result.presized
        skipped[0] += len(result.skips)
        bar.set_postfix(shards=len(done), skipped=skipped[0] + len(scan_skipped), refresh=False)
        if time.monotonic() - saved[0] >= interval:
            save()

    job = ShardJob(src, opts, pattern, compress, storage_options)
    todo = [t for t in tasks if t.index not in done]
    try:
        run(job, todo, workers=workers, on_images=bar.update, on_done=on_done, **engine_options)
    except BaseException:
        if done:
            save()  # what finished before the failure is kept for --resume
        raise
    outfiles.remove_stale_temps(pattern)  # left by workers that died mid-shard (their task was rerun)
    results = [done[t.index] for t in tasks]
    load_skips = sorted(s for r in results for s in r.skips)
    summary.skipped = list(scan_skipped) + [Skip(name, reason) for _, name, reason in load_skips]
    if results:
        writer = ShardWriter(pattern, metadata=metadata, storage_options=storage_options)
        writer.metadata["skipped"] = [{"name": s.name, "reason": s.reason} for s in summary.skipped]
        writer.shards = [r.entry for r in results]
        indexes = getattr(writer, "indexes", None)
        if indexes is not None:  # the index sidecar: shards kept from an earlier run are scanned by the writer
            indexes.update({r.entry["name"]: r.sample_index for r in results if r.sample_index is not None})
        writer.write_manifest_file()
        summary.manifest = join_url(folder, MANIFEST)
    outfiles.remove(progress_url, storage_options)
    summary.shards = len(results)
    summary.written = sum(r.entry["samples"] for r in results)
    summary.bytes = sum(r.entry["bytes"] for r in results)
