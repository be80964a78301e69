"""The engine behind ``shardpipe write``: read a source, prepare images in parallel, write shards.

Output is deterministic: records are written in the source's order (or a permutation
seeded by ``seed`` with ``shuffle``), workers return results in that order, and shards
are byte-reproducible, so any ``workers`` count gives identical shards.

Resume: after each completed shard a progress file (``manifest.json.progress`` beside
the shards) records the shards so far and the input position where the next shard
starts. ``resume=True`` checks that the options and inputs are unchanged and that the
recorded shards are still there, then continues from that position; since the sample
to shard assignment depends only on the input and the options, the result is the same
as an uninterrupted run. The progress file is removed when ``manifest.json`` is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import random
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

from shardpipe.errors import DecodeError
from shardpipe.format.manifest import MANIFEST
from shardpipe.io.files import atomic_write, dirname_url, is_local, join_url, local_path
from shardpipe.write.presize import CHECKS, check_image, image_ext, presize
from shardpipe.write.shard_writer import ShardWriter, shard_name
from shardpipe.write.sources import Record, Skip, Source, ValueDecoder, open_source

log = logging.getLogger("shardpipe")

PROGRESS = MANIFEST + ".progress"
CHUNK = 8  # records per task sent to a worker: amortises IPC, keeps results flowing in order


@dataclass(frozen=True)
class PrepareOptions:
    """What happens to each image in a worker."""

    presize: int | None = None
    quality: int = 90
    check: str = "header"


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


# ---------------------------------------------------------------------------- per-image work


def prepare(source: Source, opts: PrepareOptions, pos: int, record: Record) -> tuple[Any, ...]:
    """Load, check and maybe presize one record.

    Returns ``(pos, key, ext, data, label, extra, presized)``, or ``(pos, name, reason)``
    when the record is skipped.
    """
    try:
        loaded = source.load(record)
        data = loaded.data
        ext = image_ext(data)
        changed = False
        if opts.presize:
            data, changed = presize(data, opts.presize, opts.quality)
        if changed:
            ext = "jpg"
        else:
            check_image(data, ext, opts.check)
    except DecodeError as e:
        return pos, record.name, f"unreadable image: {e}"
    except OSError as e:
        return pos, record.name, f"cannot read: {e}"
    except Exception as e:  # a bad sidecar, or a user's LMDB value decoder failing on a value
        return pos, record.name, f"cannot load: {type(e).__name__}: {e}"
    return pos, record.key, ext, data, loaded.label, loaded.extra, changed


_worker: tuple[Source, PrepareOptions] | None = None


def _init_worker(source: Source, opts: PrepareOptions, parent: int) -> None:
    global _worker
    _worker = (source, opts)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us

    def watch() -> None:  # exit when the parent dies (even by SIGKILL): no orphans
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _work_chunk(chunk: list[tuple[int, Record]]) -> list[tuple[Any, ...]]:
    assert _worker is not None
    return [prepare(_worker[0], _worker[1], pos, rec) for pos, rec in chunk]


def prepared(
    source: Source, opts: PrepareOptions, items: list[tuple[int, Record]], workers: int
) -> Iterator[tuple[Any, ...]]:
    """``prepare`` every item, in order, with ``workers`` in parallel.

    CPU-bound work (presize, ``check="decode"``) runs in that many processes; pass-through
    is I/O-bound and runs in that many threads, which overlap reads (slow disks, network
    filesystems) without copying every image between processes. A bounded number of
    tasks is in flight, so memory stays bounded when writing is slower than preparing.
    """
    if workers <= 1:
        for pos, rec in items:
            yield prepare(source, opts, pos, rec)
        return
    if not opts.presize and opts.check != "decode":
        # pass-through is I/O-bound: threads overlap reads with writing and cost no IPC copies
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            window: deque[Any] = deque()
            for pos, rec in items:
                window.append(pool.submit(prepare, source, opts, pos, rec))
                if len(window) > 16 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"  # fork: no re-import of torch
    chunks = (items[i : i + CHUNK] for i in range(0, len(items), CHUNK))
    with mp.get_context(method).Pool(workers, _init_worker, (source, opts, os.getpid())) as pool:
        pending = deque(pool.apply_async(_work_chunk, (c,)) for c in islice(chunks, 4 * workers))
        while pending:
            results = pending.popleft().get()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.apply_async(_work_chunk, (nxt,)))
            yield from results


# ---------------------------------------------------------------------------- progress file


def _read_json(url: str, storage_options: dict[str, Any] | None) -> Any:
    """A small JSON file, or ``None`` when it does not exist."""
    if is_local(url):
        path = local_path(url)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return json.loads(f.read())
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def _write_json(url: str, value: Any, storage_options: dict[str, Any] | None) -> None:
    with atomic_write(url, storage_options=storage_options) as f:
        f.write(json.dumps(value, indent=1, sort_keys=True).encode())


def _remove(url: str, storage_options: dict[str, Any] | None) -> None:
    if is_local(url):
        with contextlib.suppress(FileNotFoundError):
            os.remove(local_path(url))
        return
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def _size(url: str, storage_options: dict[str, Any] | None) -> int | None:
    if is_local(url):
        path = local_path(url)
        return os.path.getsize(path) if os.path.exists(path) else None
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs.size(path) if fs.exists(path) else None


def _remove_stale_temps(pattern: str) -> None:
    """Delete temporary files left by a killed local run (``<shard>.<8 hex>.tmp``)."""
    if not is_local(pattern):
        return
    first = local_path(shard_name(pattern, 0))
    folder = os.path.dirname(first) or "."
    if not os.path.isdir(folder):
        return
    stem = re.escape(os.path.basename(local_path(pattern)))
    stem = re.sub(r"%0?\d*d|\\\{[^}]*\\\}", r"\\d+", stem)
    temp = re.compile(rf"^(?:{stem}|{re.escape(MANIFEST)}|{re.escape(PROGRESS)})\.[0-9a-f]{{8}}\.tmp$")
    for name in os.listdir(folder):
        if temp.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


def _digest(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.key}\0{r.name}\0{r.label}\0{json.dumps(r.extra, sort_keys=True)}\n".encode())
    return h.hexdigest()


@dataclass
class _ResumePoint:
    """Where an interrupted run stopped: input position, its complete shards, its load skips."""

    start: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  #: input position where each shard's successor starts
    skips: list[tuple[int, Skip]] = field(default_factory=list)
    finished: dict[str, Any] | None = None  #: the manifest, when an identical run already finished


def _resume_point(folder: str, fingerprint: dict[str, Any], storage_options: dict[str, Any] | None) -> _ResumePoint:
    """Read the progress file (or a finished manifest) and keep the shards still intact."""
    progress_url = join_url(folder, PROGRESS)
    state = _read_json(progress_url, storage_options)
    if state is None:
        manifest = _read_json(join_url(folder, MANIFEST), storage_options)
        if manifest is not None and all(manifest.get(k) == v for k, v in fingerprint.items()):
            if all(_size(join_url(folder, e["name"]), storage_options) == e["bytes"] for e in manifest["shards"]):
                return _ResumePoint(finished=manifest)
        log.info("no interrupted run to resume at %s: writing from the start", progress_url)
        return _ResumePoint()
    old = state.get("fingerprint", {})
    if old != fingerprint:
        diff = [k for k in ("options", "inputs") if old.get(k) != fingerprint[k]]
        raise ValueError(
            f"cannot resume from {progress_url}: the interrupted run had different {' and '.join(diff)}; "
            "rerun with the same source and options, or without --resume to start over"
        )
    point = _ResumePoint()
    for entry, end in zip(state["shards"], state["ends"]):
        if _size(join_url(folder, entry["name"]), storage_options) != entry["bytes"]:
            log.warning("shard %s is missing or changed: rewriting from there", entry["name"])
            break
        point.shards.append(entry)
        point.ends.append(end)
    point.start = point.ends[-1] if point.ends else 0
    point.skips = [(p, Skip(n, r)) for p, n, r in state["skipped"] if p < point.start]
    return point


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
    maxsize: int = 1 << 30,
    compress: str | None = None,
    workers: int = 1,
    shuffle: bool | None = None,
    seed: int = 0,
    presize: int | None = None,
    quality: int = 90,
    check: str = "header",
    resume: bool = False,
    label_pattern: str | None = None,
    lmdb_decoder: ValueDecoder | str | None = None,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> WriteSummary:
    """Write every image of ``source`` into shards named by ``pattern`` (``out/train-%06d.tar``).

    ``source`` is a path (folder, ImageFolder tree, CSV/JSONL list, LMDB store; see
    :func:`shardpipe.write.sources.open_source`) or a :class:`~shardpipe.write.sources.Source`.
    Images are copied byte for byte unless ``presize`` (shorter side, pixels) shrinks
    them. Unreadable or non-image inputs are skipped and listed in the summary and in
    the manifest. ``check`` is ``"header"`` (cheap), ``"decode"`` (full) or ``"none"``.
    ``shuffle``: write the samples in a permutation seeded by ``seed``; ``None`` (default)
    shuffles when the source has class structure (labels or class folders), which are
    usually listed class by class: shards then hold a mix of classes, which a streaming
    shuffle needs (``summary.shuffled`` says what was done).
    """
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
    opts = PrepareOptions(presize, quality, check)
    options = {
        "maxcount": maxcount, "maxsize": maxsize, "compress": compress,
        "shuffle": shuffle, "seed": seed if shuffle else None, **asdict(opts),
        "source": src.describe(),
    }  # fmt: skip
    inputs = {"records": len(records), "sha256": _digest(records)}
    fingerprint = json.loads(json.dumps({"options": options, "inputs": inputs}))  # as it reads back from JSON
    folder = dirname_url(shard_name(pattern, 0))
    progress_url = join_url(folder, PROGRESS)
    _remove_stale_temps(pattern)
    if resume:
        point = _resume_point(folder, fingerprint, storage_options)
        if point.finished is not None:
            return _finished_summary(point.finished, folder, time.perf_counter() - t0)
    else:
        point = _ResumePoint()
        _remove(progress_url, storage_options)
    start, done, ends, load_skips = point.start, point.shards, point.ends, point.skips
    summary = WriteSummary(resumed_shards=len(done), class_names=scan.class_names, shuffled=shuffle)
    metadata = {"class_names": scan.class_names, **fingerprint}
    from tqdm import tqdm

    bar = tqdm(total=len(records), initial=start, unit="img", disable=not progress, dynamic_ncols=True)
    items = list(enumerate(records))[start:]
    with bar, ShardWriter(
        pattern, maxcount=maxcount, maxsize=maxsize, compress=compress, start_shard=len(done),
        metadata=metadata, storage_options=storage_options,
    ) as writer:  # fmt: skip
        writer.shards = list(done)
        for item in prepared(src, opts, items, workers):
            bar.update(1)
            if len(item) == 3:
                load_skips.append((item[0], Skip(item[1], item[2])))
                continue
            pos, key, ext, data, label, extra, changed = item
            sample: dict[str, Any] = {"__key__": key, ext: data}
            if label is not None:
                sample["cls"] = label
            if extra:
                sample["json"] = extra
            before = len(writer.shards)
            writer.write(sample)
            summary.written_now += 1
            summary.presized += changed
            if len(writer.shards) > before:  # the previous shard is complete: inputs < pos are done
                ends.append(pos)
                skips = [[p, s.name, s.reason] for p, s in load_skips]
                state = {"fingerprint": fingerprint, "shards": writer.shards, "ends": ends, "skipped": skips}
                _write_json(progress_url, state, storage_options)
                bar.set_postfix(shards=len(writer.shards), skipped=len(load_skips) + len(scan.skipped), refresh=False)
        summary.skipped = list(scan.skipped) + [s for _, s in load_skips]
        writer.metadata["skipped"] = [{"name": s.name, "reason": s.reason} for s in summary.skipped]
    if writer.shards:
        summary.manifest = join_url(folder, MANIFEST)
    _remove(progress_url, storage_options)
    summary.shards = len(writer.shards)
    summary.written = sum(s["samples"] for s in writer.shards)
    summary.bytes = sum(s["bytes"] for s in writer.shards)
    summary.seconds = time.perf_counter() - t0
    return summary
