"""``shardpipe inspect URLS``: what is in a set of shards, per shard and in total.

Samples, extensions, bytes, image sizes (read from the image headers, no pixel is
decoded: min/median/max of width and height) and the first keys; a warning for each shard holding
links or sparse files (skipped, as streaming skips them). URLS is a brace
pattern (``out/train-{000000..000009}.tar``), a quoted glob (``'out/train-*.tar'``),
several joined by ``::``, or a manifest (its shards are inspected).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from shardpipe.errors import DuplicateMemberError, ErrorHandler, ShardpipeError
from shardpipe.format.sample import is_image_field
from shardpipe.format.tar.reader import MAX_MEMBER_SIZE, skipped_note
from shardpipe.io.files import open_shard
from shardpipe.io.verify import HashingReader

if TYPE_CHECKING:
    from shardpipe.io.remote import ReadOptions

log = logging.getLogger("shardpipe")


class _Recording(ErrorHandler):
    """Skip bad data as ``on_error="skip"`` does, keeping each error for the report."""

    def __init__(self) -> None:
        super().__init__("skip")
        self.seen: list[ShardpipeError] = []

    def __call__(self, exc: Exception) -> None:
        if not isinstance(exc, ShardpipeError):
            raise exc
        self.seen.append(exc)
        super().__call__(exc)


class ShardReader:
    """Iterate one shard's samples as ``(key, {ext: bytes})`` through the pipeline's own stages
    (ShardList, Untar, GroupSamples) with a hashing opener; then read ``size``, ``sha256``
    (of the whole file), ``error`` (why reading stopped early, or ``None``; ``failure``: that error
    itself) and ``problems`` (samples the pipeline refuses, such as one with two members of one extension).
    A remote shard is read under ``read_options`` (default: the library's ``ReadOptions()``)."""

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        max_member_size: int | None = MAX_MEMBER_SIZE,
        read_options: ReadOptions | None = None,
    ):
        self.url = url
        self.storage_options = storage_options
        self.read_options = read_options
        self.max_member_size = max_member_size
        self.size = 0
        self.sha256 = ""
        self.error: str | None = None
        self.failure: ShardpipeError | None = None
        self.skipped: dict[str, int] = {}  #: links and sparse files stepped over, by kind
        self.problems: list[str] = []

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        from shardpipe.stages import Context, GroupSamples, Pipeline, ShardList, Untar
        from shardpipe.stages.shards import Shard

        streams: list[HashingReader] = []

        def opener(shard: Shard, offset: int) -> IO[bytes]:
            raw = open_shard(shard.url, offset, storage_options=self.storage_options, read_options=self.read_options)
            streams.append(HashingReader(raw, drain_on_close=True))
            return streams[-1]  # type: ignore[return-value]

        errors = _Recording()
        untar = Untar(opener, max_member_size=self.max_member_size, warn_skipped=False)  # the report says it
        pipeline = Pipeline([ShardList([Shard(self.url, 0)]), untar, GroupSamples()], Context(errors=errors))
        try:
            for sample in pipeline:
                yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}
        finally:
            pipeline.close()
            self.skipped = dict(untar.skipped)
            for e in errors.seen:
                if isinstance(e, DuplicateMemberError):
                    self.problems.append(str(e))
                elif self.error is None:
                    self.failure = e
                    self.error = str(e) if streams else f"cannot open: {e}"
            if streams:
                self.size, self.sha256 = streams[0].read_bytes, streams[0].hexdigest()
                failed = streams[0].drain_error  # past the last member: only the drain saw it
                if self.error is None and isinstance(failed, ShardpipeError):
                    self.failure, self.error = failed, str(failed)


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the header (``shardpipe.image.size``); None if unreadable."""
    from shardpipe.image.size import image_size

    try:
        return image_size(data)
    except Exception:
        return None


def _stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


@dataclass
class ShardSummary:
    url: str
    samples: int = 0
    bytes: int = 0
    extensions: Counter[str] = field(default_factory=Counter)
    first_keys: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    unreadable_headers: int = 0
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  #: links and sparse files stepped over, by kind

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url, "samples": self.samples, "bytes": self.bytes,
            "extensions": dict(sorted(self.extensions.items())), "first_keys": self.first_keys,
            "width": _stats(self.widths), "height": _stats(self.heights),
            "unreadable_headers": self.unreadable_headers, "error": self.error, "problems": self.problems,
            "skipped": dict(sorted(self.skipped.items())),
        }  # fmt: skip


def inspect_shard(
    url: str, first: int = 5, storage_options: dict[str, Any] | None = None, read_options: ReadOptions | None = None
) -> ShardSummary:
    """Read one shard and summarise it (image sizes from headers only)."""
    out = ShardSummary(url)
    reader = ShardReader(url, storage_options, read_options=read_options)
    for key, fields in reader:
        out.samples += 1
        out.extensions.update(fields.keys())
        if len(out.first_keys) < first:
            out.first_keys.append(key)
        for ext, data in fields.items():
            if is_image_field(ext):
                size = header_size(data)
                if size is None:
                    out.unreadable_headers += 1
                else:
                    out.widths.append(size[0])
                    out.heights.append(size[1])
    out.bytes, out.error, out.problems = reader.size, reader.error, reader.problems
    out.skipped.update(reader.skipped)
    return out


def inspect_shards(
    urls: str | list[str],
    first: int = 5,
    storage_options: dict[str, Any] | None = None,
    read_options: ReadOptions | None = None,
) -> dict[str, Any]:
    """Summaries per shard and in total, as a JSON-ready dict (remote reads under ``read_options``)."""
    from shardpipe.stages.shards import expand_urls

    found = expand_urls(urls, storage_options, read_options=read_options)
    shards = [inspect_shard(s.url, first, storage_options, read_options) for s in found]
    total = ShardSummary("total")
    for s in shards:
        total.samples += s.samples
        total.bytes += s.bytes
        total.extensions.update(s.extensions)
        total.widths += s.widths
        total.heights += s.heights
        total.unreadable_headers += s.unreadable_headers
        total.first_keys += s.first_keys[: first - len(total.first_keys)]
        total.skipped.update(s.skipped)
        if s.skipped:  # not a problem (streaming skips them too), but never silent: as index and verify say
            log.warning("%s", skipped_note(s.url, s.skipped))
    result = total.to_json()
    del result["url"], result["error"], result["problems"]
    return {"shards": [s.to_json() for s in shards], "total": {"shards": len(shards), **result}}


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _range(stats: dict[str, float] | None) -> str:
    return "-" if stats is None else f"{stats['min']:g}/{stats['median']:g}/{stats['max']:g}"


def format_report(report: dict[str, Any]) -> str:
    """The report as a table, safe for a terminal (control characters and non-UTF-8 bytes escaped)."""
    from shardpipe.cli.common import printable

    lines = [f"{'shard':<40} {'samples':>8} {'bytes':>10}  {'extensions':<24} {'width min/med/max':<18} first keys"]
    for s in report["shards"]:
        exts = " ".join(f"{e}:{n}" for e, n in s["extensions"].items())
        lines.append(
            f"{s['url'][-40:]:<40} {s['samples']:>8} {_mib(s['bytes']):>10}  {exts:<24} "
            f"{_range(s['width']):<18} {', '.join(s['first_keys'][:3])}"
        )
        if s["error"]:
            lines.append(f"  ERROR: {s['error']}")
        lines += [f"  PROBLEM: {p}" for p in s["problems"]]
    t = report["total"]
    exts = ", ".join(f"{e} {n}" for e, n in t["extensions"].items())
    lines += [
        f"total: {t['shards']} shards, {t['samples']} samples, {_mib(t['bytes'])}; extensions: {exts or 'none'}",
        f"image width  min/median/max: {_range(t['width'])}",
        f"image height min/median/max: {_range(t['height'])}",
        f"first keys: {', '.join(t['first_keys'])}",
    ]
    if t["unreadable_headers"]:
        lines.append(f"images with unreadable headers: {t['unreadable_headers']}")
    return "\n".join(printable(line) for line in lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.cli.common import add_storage_options
    from shardpipe.cli.reading import add_read_options

    p.add_argument("urls", help="manifest.json, brace pattern (out/train-{000000..000009}.tar), quoted glob "
                   "('out/train-*.tar') or a '::'-joined list of these")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--keys", type=int, default=5, help="how many first keys to show (default 5)")
    add_storage_options(p)
    add_read_options(p)


def run(args: argparse.Namespace) -> int:
    from shardpipe.cli.common import DATA_PROBLEM, OK, read_inputs

    report, status = read_inputs("inspect", args, lambda so, ro: inspect_shards(args.urls, args.keys, so, ro))
    if status is not None:
        return status
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return DATA_PROBLEM if any(s["error"] or s["problems"] for s in report["shards"]) else OK
