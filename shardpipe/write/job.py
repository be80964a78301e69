"""``write_shards``: read a source, prepare its images in parallel, write shards and a manifest.

Two layouts, both deterministic (records in the source's order, or a permutation seeded
by ``seed`` with ``shuffle``; shards byte-reproducible):

- planned (the default, ``maxsize=None``): shard ``i`` holds inputs ``i*maxcount`` to
  ``(i+1)*maxcount - 1``, decided before any work runs (:mod:`shardpipe.write.plan`), so
  any engine (``"local"``, ``"ray"``) on any number of workers writes the same bytes; a
  skipped input leaves its shard one sample shorter. See :mod:`shardpipe.write.planned`.
- rolling (``maxsize`` given): shards also close at ``maxsize`` bytes, which depends on
  the images before them, so only the local engine writes this layout, in sequence, and
  a skipped input is replaced by the next one. See :mod:`shardpipe.write.rolling`.

Resume: a progress file (``manifest.json.progress`` beside the shards) records the
finished shards. ``resume=True`` checks that the options and inputs are unchanged and
that the recorded shards are still there, and writes only what is missing; the result
is the same as an uninterrupted run. The progress file is removed when
``manifest.json`` is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, replace
from typing import Any

from shardpipe.format.manifest import MANIFEST
from shardpipe.image.restart import available as restart_available
from shardpipe.io.files import dirname_url, is_local, join_url, local_path
from shardpipe.io.urls import check_url
from shardpipe.write import outfiles
from shardpipe.write.engines import write_engine
from shardpipe.write.options import WriteOptions, build_write_options
from shardpipe.write.outfiles import PROGRESS
from shardpipe.write.planned import write_planned
from shardpipe.write.prepare import PrepareOptions
from shardpipe.write.rolling import write_rolling
from shardpipe.write.run import WriteRun, WriteSummary
from shardpipe.write.shard_writer import check_compress_name, check_pattern, shard_name
from shardpipe.write.sources import Record, Scan, Skip, Source, checked_records, open_source, printable

log = logging.getLogger("shardpipe")

__all__ = ["PROGRESS", "PrepareOptions", "WriteOptions", "WriteSummary", "write_shards"]


def _digest(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        # surrogatepass: never fail on a name that is not UTF-8 (the key check skips such records anyway)
        h.update(
            f"{r.key}\0{r.name}\0{r.label}\0{json.dumps(r.extra, sort_keys=True)}\n".encode("utf-8", "surrogatepass")
        )
    return h.hexdigest()


def _checked(scan: Scan) -> Scan:
    """``scan`` without the records whose key cannot be written (skipped, with the reason), and
    with every skipped name printable: a file name with a control character or one that is not
    UTF-8 is one listed skip, not a write that fails when its sample reaches the tar writer."""
    records, bad = checked_records(scan.records)
    skipped = [Skip(printable(s.name), printable(s.reason)) for s in scan.skipped] + bad
    return Scan(records, skipped, scan.class_names, scan.notes)


def _finished_summary(manifest: dict[str, Any], folder: str, seconds: float) -> WriteSummary:
    log.info("nothing to resume: %s already holds the finished shards", folder)
    return WriteSummary(
        written=manifest["samples"], skipped=[Skip(s["name"], s["reason"]) for s in manifest.get("skipped", [])],
        shards=len(manifest["shards"]), bytes=manifest["bytes"], seconds=seconds,
        resumed_shards=len(manifest["shards"]), manifest=join_url(folder, MANIFEST),
        class_names=manifest.get("class_names"), notes=manifest.get("notes", []),
    )  # fmt: skip


# ---------------------------------------------------------------------------- the writer


def _one_run_at_a_time(folder: str) -> contextlib.AbstractContextManager[None]:
    """A lock on a local output folder for the run: a second run into it would remove this one's
    temporary files and write the same shard and manifest names (object stores: no lock)."""
    if not is_local(folder):
        return contextlib.nullcontext()
    path = local_path(folder) or "."
    os.makedirs(path, exist_ok=True)
    return outfiles.folder_lock(path, "shardpipe write")


def write_shards(
    source: str | os.PathLike[str] | Source,
    pattern: str,
    options: WriteOptions | None = None,
    /,
    **keywords: Any,
) -> WriteSummary:
    """Write every image of ``source`` into shards named by ``pattern`` (``out/train-%06d.tar``).

    ``options`` is a :class:`~shardpipe.write.options.WriteOptions`; flat keywords
    (``maxcount=1000, workers=4``) set its fields of the same name, so
    ``write_shards(src, pattern, maxcount=1000)`` and
    ``write_shards(src, pattern, WriteOptions(maxcount=1000))`` are the same.

    ``source`` is a path (folder, ImageFolder tree, CSV/JSONL list, LMDB store; see
    :func:`shardpipe.write.sources.open_source`) or a :class:`~shardpipe.write.sources.Source`.
    Baseline JPEGs are re-encoded losslessly with restart intervals (``restart_intervals``,
    default on: the same pixels, ~3% fewer bytes, faster crops with the native decoder;
    ``shardpipe.image.restart`` says how the interval is chosen); other images, and all of
    them with ``restart_intervals=False``, are copied byte for byte unless ``presize``
    (shorter side, pixels) shrinks them. Unreadable or non-image inputs are skipped and listed in the summary and in
    the manifest. ``check`` is ``"header"`` (cheap), ``"decode"`` (full) or ``"none"``.

    Shard ``i`` holds inputs ``i*maxcount`` to ``(i+1)*maxcount - 1``. ``engine="ray"``
    runs one Ray task per shard (``ray_address``: the cluster to join; default: the one
    ``RAY_ADDRESS`` names or a new local one) and writes the same bytes as the local
    engine; ``workers`` is the local engine's parallelism. ``maxsize`` (bytes) also closes
    shards by size, which only the local engine can do, in sequence (see the module doc).

    ``shuffle``: write the samples in a permutation seeded by ``seed``; ``None`` (default)
    shuffles when the source has class structure (labels or class folders), which are
    usually listed class by class: shards then hold a mix of classes, which a streaming
    shuffle needs (``summary.shuffled`` says what was done).
    """
    check_url(pattern)
    if isinstance(source, (str, os.PathLike)):
        check_url(os.fspath(source))
    check_pattern(pattern)  # exactly one shard number, before anything is read or written
    opts = build_write_options(options, keywords)
    check_compress_name(shard_name(pattern, 0), opts.compress)
    write_engine(opts.engine)  # an uninstalled engine fails now, not after the scan
    if opts.restart_intervals and not restart_available():
        log.info("the native extension is not built: JPEGs are copied without restart intervals")
    t0 = time.perf_counter()
    src = open_source(source, opts.source_type, label_pattern=opts.label_pattern, lmdb_decoder=opts.lmdb_decoder)
    src.outputs = outfiles.own_files(pattern)  # a rerun or --resume into a folder below the source reads the same
    scan = _checked(src.scan())
    records = scan.records
    shuffle = opts.shuffle
    if shuffle is None:
        shuffle = bool(scan.class_names) or any(r.label is not None for r in records)
        if shuffle:
            log.info("shuffling the sample order (seed %d): the source has classes; shuffle=False keeps it", opts.seed)
    if shuffle:
        random.Random(opts.seed).shuffle(records)
    fingerprinted = {
        "maxcount": opts.maxcount, "maxsize": opts.maxsize, "compress": opts.compress,
        "shuffle": shuffle, "seed": opts.seed if shuffle else None, **asdict(opts.prepare),
        "source": src.describe(),
    }  # fmt: skip
    inputs = {"records": len(records), "sha256": _digest(records)}
    fingerprint = json.loads(json.dumps({"options": fingerprinted, "inputs": inputs}))  # as it reads back from JSON
    folder = dirname_url(shard_name(pattern, 0))
    run = WriteRun(
        source=src, records=records, scan_skipped=scan.skipped, pattern=pattern, folder=folder,
        fingerprint=fingerprint, metadata={"class_names": scan.class_names, **fingerprint, **({"notes": scan.notes} if scan.notes else {})}, options=opts,
    )  # fmt: skip
    with _one_run_at_a_time(folder):
        outfiles.remove_stale_temps(pattern)  # (another run's would be in progress: hence the lock)
        if opts.resume:
            finished = outfiles.finished_manifest(folder, fingerprint, opts.fsspec_options)
            if finished is not None:
                return _finished_summary(finished, folder, time.perf_counter() - t0)
        from tqdm import tqdm

        with tqdm(total=len(records), unit="img", disable=not opts.progress, dynamic_ncols=True) as bar:
            summary = write_planned(run, bar) if opts.maxsize is None else write_rolling(run, bar)
    return replace(
        summary, class_names=scan.class_names, shuffled=shuffle, seconds=time.perf_counter() - t0, notes=scan.notes
    )  # fmt: skip
