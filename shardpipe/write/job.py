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

import hashlib
import json
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from shardpipe.format.manifest import MANIFEST
from shardpipe.io.files import dirname_url, join_url
from shardpipe.write import outfiles
from shardpipe.write.engines import write_engine
from shardpipe.write.outfiles import PROGRESS
from shardpipe.write.planned import write_planned
from shardpipe.write.prepare import PrepareOptions
from shardpipe.write.presize import CHECKS
from shardpipe.write.rolling import write_rolling
from shardpipe.write.shard_writer import shard_name
from shardpipe.write.sources import Record, Skip, Source, ValueDecoder, open_source

log = logging.getLogger("shardpipe")

__all__ = ["PROGRESS", "PrepareOptions", "WriteSummary", "write_shards"]


@dataclass
class WriteSummary:
    """The outcome of :func:`write_shards`."""

    written: int = 0  #: samples in the shards (including shards kept from a resumed run)
    written_now: int = 0  #: samples written by this call
    presized: int = 0  #: images re-encoded by presize in this call
    skipped: list[Skip] = field(default_factory=list)
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0
    resumed_shards: int = 0
    manifest: str | None = None
    class_names: list[str] | None = None
    shuffled: bool = False  #: samples were written in a seeded permutation of the input order

    @property
    def images_per_s(self) -> float:
        return self.written_now / self.seconds if self.seconds > 0 else 0.0

    def format(self, max_skipped: int = 20) -> str:
        """A human-readable report: counts, throughput, and the skipped inputs with reasons."""
        lines = [
            f"wrote {self.written} samples into {self.shards} shards ({self.bytes / 2**20:.1f} MiB)"
            + (f", {self.resumed_shards} shards kept from the interrupted run" if self.resumed_shards else ""),
            f"this run: {self.written_now} images ({self.presized} presized, "
            f"{self.written_now - self.presized} copied unchanged) in {self.seconds:.1f} s "
            f"= {self.images_per_s:.0f} images/s",
        ]
        if self.skipped:
            reasons = Counter(re.sub(r":.*", "", s.reason) for s in self.skipped)
            lines.append(f"skipped {len(self.skipped)}: " + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())))
            lines += [f"  {s.name}: {s.reason}" for s in self.skipped[:max_skipped]]
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more (listed in the manifest)")
        else:
            lines.append("skipped: nothing")
        if self.shuffled:
            lines.append("order: shuffled (seeded; --no-shuffle keeps the input order)")
        if self.manifest:
            lines.append(f"manifest: {self.manifest}")
        return "\n".join(lines)


def _digest(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.key}\0{r.name}\0{r.label}\0{json.dumps(r.extra, sort_keys=True)}\n".encode())
    return h.hexdigest()


def _finished_summary(manifest: dict[str, Any], folder: str, seconds: float) -> WriteSummary:
    log.info("nothing to resume: %s already holds the finished shards", folder)
    return WriteSummary(
        written=manifest["samples"], skipped=[Skip(s["name"], s["reason"]) for s in manifest.get("skipped", [])],
        shards=len(manifest["shards"]), bytes=manifest["bytes"], seconds=seconds,
        resumed_shards=len(manifest["shards"]), manifest=join_url(folder, MANIFEST),
        class_names=manifest.get("class_names"),
    )  # fmt: skip


# ---------------------------------------------------------------------------- the writer


def write_shards(
    source: str | os.PathLike[str] | Source,
    pattern: str,
    *,
    source_type: str = "auto",
    maxcount: int = 10_000,
    maxsize: int | None = None,
    compress: str | None = None,
    workers: int = 1,
    shuffle: bool | None = None,
    seed: int = 0,
    presize: int | None = None,
    quality: int = 90,
    check: str = "header",
    restart_intervals: bool = False,
    resume: bool = False,
    label_pattern: str | None = None,
    lmdb_decoder: ValueDecoder | str | None = None,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> WriteSummary:
    """Write every image of ``source`` into shards named by ``pattern`` (``out/train-%06d.tar``).

    ``source`` is a path (folder, ImageFolder tree, CSV/JSONL list, LMDB store; see
    :func:`shardpipe.write.sources.open_source`) or a :class:`~shardpipe.write.sources.Source`.
    Images are copied byte for byte unless ``presize`` (shorter side, pixels) shrinks
    them. Unreadable or non-image inputs are skipped and listed in the summary and in
    the manifest. ``check`` is ``"header"`` (cheap), ``"decode"`` (full) or ``"none"``.
    ``restart_intervals`` re-encodes baseline JPEGs losslessly with restart intervals,
    which the native crop decoder uses to decode only what a crop covers (same pixels,
    files ~3% smaller, ~3 ms/img of writing CPU: ``shardpipe.image.restart``); off here
    (bytes are copied unchanged), on by default in ``shardpipe write``.

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
    if maxsize is not None and maxsize < 1:
        raise ValueError(f"maxsize must be a positive number of bytes, got {maxsize}")
    if maxsize is not None and engine != "local":
        raise ValueError(
            f"maxsize closes shards by bytes, which only the local engine can do (in sequence); the {engine!r} "
            "engine plans shards by maxcount alone: drop maxsize and pick maxcount ~ shard size / image size"
        )
    if maxcount < 1:
        raise ValueError(f"maxcount must be positive, got {maxcount}")
    write_engine(engine)  # an unknown or uninstalled engine fails now, not after the scan
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, not {check!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    if presize is not None and presize < 1:
        raise ValueError(f"presize must be a positive number of pixels, got {presize}")
    t0 = time.perf_counter()
    src = open_source(source, source_type, label_pattern=label_pattern, lmdb_decoder=lmdb_decoder)
    scan = src.scan()
    records = scan.records
    if shuffle is None:
        shuffle = bool(scan.class_names) or any(r.label is not None for r in records)
        if shuffle:
            log.info("shuffling the sample order (seed %d): the source has classes; shuffle=False keeps it", seed)
    if shuffle:
        random.Random(seed).shuffle(records)
    opts = PrepareOptions(presize, quality, check, restart_intervals)
    options = {
        "maxcount": maxcount, "maxsize": maxsize, "compress": compress,
        "shuffle": shuffle, "seed": seed if shuffle else None, **asdict(opts),
        "source": src.describe(),
    }  # fmt: skip
    inputs = {"records": len(records), "sha256": _digest(records)}
    fingerprint = json.loads(json.dumps({"options": options, "inputs": inputs}))  # as it reads back from JSON
    folder = dirname_url(shard_name(pattern, 0))
    outfiles.remove_stale_temps(pattern)
    if resume:
        finished = outfiles.finished_manifest(folder, fingerprint, storage_options)
        if finished is not None:
            return _finished_summary(finished, folder, time.perf_counter() - t0)
    summary = WriteSummary(class_names=scan.class_names, shuffled=shuffle)
    metadata = {"class_names": scan.class_names, **fingerprint}
    common: dict[str, Any] = {
        "maxcount": maxcount, "compress": compress, "workers": workers, "resume": resume,
        "fingerprint": fingerprint, "metadata": metadata, "storage_options": storage_options,
        "summary": summary,
    }  # fmt: skip
    from tqdm import tqdm

    with tqdm(total=len(records), unit="img", disable=not progress, dynamic_ncols=True) as bar:
        if maxsize is None:
            engine_options = {"address": ray_address} if ray_address else {}
            write_planned(
                src, opts, records, scan.skipped, pattern, folder, engine=engine, engine_options=engine_options,
                bar=bar, **common,
            )  # fmt: skip
        else:
            write_rolling(src, opts, records, scan.skipped, pattern, folder, maxsize=maxsize, bar=bar, **common)
    summary.seconds = time.perf_counter() - t0
    return summary
