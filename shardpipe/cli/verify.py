"""``shardpipe verify URLS``: decode every sample and check the manifest; non-zero exit on problems.

Checks, per shard: the tar stream is complete (not truncated, no bad headers), every
image decodes (the fastest installed decoder, then PIL before calling it corrupt),
``.cls``/``.cls2``/``.index``/``.id`` hold integers and ``.json`` valid JSON, keys are unique,
no sample has two members with one extension (the pipeline refuses those); with a manifest
also the shard's size, sha256 and sample count, and the manifest's totals.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from shardpipe.cli.common import NOT_TAR_FIX, UNAVAILABLE_FIX
from shardpipe.cli.inspect import ShardReader
from shardpipe.errors import NotTarError, ShardNotFoundError, ShardReadError, ShardUnavailableError
from shardpipe.format.fields import decode_field
from shardpipe.format.sample import is_image_field
from shardpipe.format.tar.reader import MAX_MEMBER_SIZE, skipped_note
from shardpipe.io.urls import single_manifest
from shardpipe.stages.shards import Shard, expand_urls

if TYPE_CHECKING:
    from shardpipe.io.remote import ReadOptions

log = logging.getLogger("shardpipe")


@dataclass
class ShardCheck:
    """The result of verifying one shard."""

    url: str
    samples: int = 0
    images: int = 0
    bytes: int = 0
    sha256: str = ""
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    damaged: bool = False  #: missing, truncated or unreadable: not read to its end
    skipped: dict[str, int] = field(default_factory=dict)  #: links and sparse files stepped over, by kind


def check_member(ext: str, data: bytes) -> str | None:
    """Why one member is bad, or ``None`` if it reads back."""
    from shardpipe.image.decoders import get_decoder

    try:
        if is_image_field(ext):
            try:
                get_decoder("auto").decode(data)
            except Exception:
                get_decoder("pil").decode(data)  # a fast backend may refuse what PIL reads
        else:
            decode_field(ext, data)  # ints, JSON and text as the pipeline reads them
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def verify_shard(
    shard: Shard,
    storage_options: dict[str, Any] | None = None,
    max_member_size: int | None = MAX_MEMBER_SIZE,
    read_options: ReadOptions | None = None,
) -> ShardCheck:
    """Read and decode one shard; compare with what the manifest says about it."""
    out = ShardCheck(shard.url)
    reader = ShardReader(shard.url, storage_options, max_member_size, read_options)
    seen: set[str] = set()
    for key, fields in reader:
        out.samples += 1
        out.keys.append(key)
        if key in seen:
            out.problems.append(f"{shard.url}: duplicate key {key!r} (its members are not consecutive)")
        seen.add(key)
        for ext, data in fields.items():
            out.images += is_image_field(ext)
            why = check_member(ext, data)
            if why is not None:
                out.problems.append(f"{shard.url}: corrupt member {key}.{ext}: {why}")
    out.problems += [f"{shard.url}: {p}" for p in reader.problems]
    out.bytes, out.sha256, out.skipped = reader.size, reader.sha256, reader.skipped
    if reader.error is not None:
        out.damaged = True
        out.problems.append(_damage(shard.url, reader.failure, reader.error))
        return out
    if shard.size is not None and shard.size != out.bytes:
        out.problems.append(f"{shard.url}: size mismatch: {out.bytes} bytes, manifest says {shard.size}")
    if shard.sha256 is not None and shard.sha256 != out.sha256:
        out.problems.append(f"{shard.url}: checksum mismatch: sha256 {out.sha256}, manifest says {shard.sha256}")
    if shard.samples is not None and shard.samples != out.samples:
        out.problems.append(f"{shard.url}: count mismatch: {out.samples} samples, manifest says {shard.samples}")
    return out


#: what fixes a shard that a manifest lists but that does not exist
_MISSING_FIX = "restore it, or make a manifest of the shards that remain with `shardpipe index`"
#: what fixes a shard whose store failed (a 5xx) or did not answer each try: the shard may be intact
_UNAVAILABLE_FIX = (
    "the store is up but failing or slow: check it, then verify again; "
    '--read-options \'{"timeout": 60, "retries": 8}\' waits longer'
)
#: what fixes a shard that exists but cannot be read
_UNREADABLE_FIX = "make it readable (its permissions, the server's answer), or leave it out of URLS"
#: what fixes a shard that does not read to its end
_DAMAGED_FIX = "restore it from a good copy, or write it again from its source; `shardpipe index` cannot read it"


def _damage(url: str, failure: BaseException | None, error: str) -> str:
    """The problem of a shard not read to its end, by the type of ``failure`` (``error``: its reader's words)."""
    if isinstance(failure, ShardNotFoundError):
        return f"{url}: missing shard: {error} (to fix: {_MISSING_FIX})"
    if isinstance(failure, ShardUnavailableError):  # (the store answered 5xx or nothing: not missing, not damaged)
        return f"{url}: unreadable shard: {failure} (to fix: {UNAVAILABLE_FIX})"
    if isinstance(failure, ShardReadError):  # permissions, a folder, a redirect loop
        return f"{url}: unreadable shard: {error} (to fix: {_UNREADABLE_FIX})"
    if isinstance(failure, NotTarError):
        return f"{failure} (to fix: {NOT_TAR_FIX})"  # it names the shard
    return f"{url}: truncated or damaged shard: {error} (to fix: {_DAMAGED_FIX})"


def _verify_one(args: tuple[Shard, int | None, ReadOptions | None]) -> ShardCheck:
    return verify_shard(args[0], None, args[1], args[2])


def verify_shards(
    urls: str | list[str],
    workers: int = 1,
    storage_options: dict[str, Any] | None = None,
    max_member_size: int | None = MAX_MEMBER_SIZE,
    read_options: ReadOptions | None = None,
) -> dict[str, Any]:
    """Verify every shard of ``urls`` (remote reads under ``read_options``); returns
    ``{"shards": [...], "samples", "images", "problems"}``."""
    shards = expand_urls(urls, storage_options, read_options=read_options)
    if workers > 1 and storage_options is None:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            checks = pool.map(_verify_one, [(s, max_member_size, read_options) for s in shards], chunksize=1)
    else:
        checks = [verify_shard(s, storage_options, max_member_size, read_options) for s in shards]
    problems = [p for c in checks for p in c.problems]
    for c in checks:  # not a problem (streaming skips them too), but never silent
        if c.skipped:
            log.warning("%s", skipped_note(c.url, c.skipped))
    owners: dict[str, str] = {}
    for c in checks:
        for key in c.keys:
            if key in owners and owners[key] != c.url:
                problems.append(f"duplicate key {key!r} in {owners[key]} and {c.url}")
            owners.setdefault(key, c.url)
    manifest = _manifest_of(urls, storage_options, read_options)
    total = sum(c.samples for c in checks)
    if manifest is not None and manifest.get("samples") is not None and manifest["samples"] != total:
        problems.append(f"count mismatch: {total} samples in the shards, manifest total says {manifest['samples']}")
    if manifest is not None and manifest.get("index"):
        problems += _index_problems(
            single_manifest(urls) or "", manifest["index"], checks, storage_options, read_options
        )
    report = [{k: v for k, v in asdict(c).items() if k not in ("keys", "damaged")} for c in checks]
    return {"shards": report, "samples": total, "images": sum(c.images for c in checks), "problems": problems}


def _index_problems(
    manifest_url: str,
    name: str,
    checks: list[ShardCheck],
    storage_options: dict[str, Any] | None,
    read_options: ReadOptions | None = None,
) -> list[str]:
    """Where the index sidecar disagrees with the shards as read: counts, sizes, keys."""
    from shardpipe.format.index import SampleIndex, key_crc
    from shardpipe.io.files import dirname_url, join_url

    url = join_url(dirname_url(manifest_url), name)
    try:
        index = SampleIndex.load(url, storage_options, manifest_url, read_options)
    except (OSError, ValueError) as e:  # missing, empty or damaged: the error names the file and the fix
        return [str(e)]
    if index.shards != len(checks):
        return [f"index mismatch: {url} lists {index.shards} shards, the manifest {len(checks)}"]
    problems = []
    for s, c in enumerate(checks):
        if c.damaged:
            continue  # reported already; reindexing cannot fix a shard that does not read
        first, last = int(index.starts[s]), int(index.starts[s + 1])
        crcs = [key_crc(k) for k in c.keys]
        if int(index.sizes[s]) != c.bytes or index.keys[first:last].tolist() != crcs:
            problems.append(
                f"{c.url}: index mismatch: the shard changed since {url} was written (run `shardpipe index`)"
            )
    return problems


def _manifest_of(
    urls: str | list[str], storage_options: dict[str, Any] | None, read_options: ReadOptions | None = None
) -> dict[str, Any] | None:
    from shardpipe.format.manifest import read_manifest

    manifest = single_manifest(urls)
    return None if manifest is None else read_manifest(manifest, storage_options, read_options)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.cli.common import add_storage_options
    from shardpipe.cli.reading import add_read_options

    p.add_argument("urls", help="manifest.json (checks checksums and counts), brace pattern, quoted glob "
                   "('out/train-*.tar') or a '::'-joined list of these")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="shards verified in parallel (processes)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--max-member-size", type=int, default=MAX_MEMBER_SIZE, metavar="BYTES",
        help=f"a tar member declaring more bytes is reported corrupt (default {MAX_MEMBER_SIZE}; 0: no limit)",
    )  # fmt: skip
    add_storage_options(p)
    add_read_options(p)


def run(args: argparse.Namespace) -> int:
    from shardpipe.cli.common import DATA_PROBLEM, OK, read_inputs

    report, status = read_inputs(
        "verify", args, lambda so, ro: verify_shards(args.urls, args.workers, so, args.max_member_size or None, ro)
    )
    if status is not None:
        return status
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return DATA_PROBLEM if report["problems"] else OK


def format_report(report: dict[str, Any]) -> str:
    """One line a shard, then the problems; safe for a terminal (control characters and non-UTF-8 bytes escaped)."""
    from shardpipe.cli.common import printable

    lines = [
        f"{'ok  ' if not s['problems'] else 'FAIL'} {s['url']}: {s['samples']} samples, {s['bytes']} bytes"
        for s in report["shards"]
    ]
    n = len(report["shards"])
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problems in {n} shards ({report['samples']} samples):")
        lines += [f"  {p}" for p in report["problems"]]
    else:
        lines.append(
            f"verified {n} shards: {report['samples']} samples, {report['images']} images decoded, no problems"
        )
    return "\n".join(printable(line) for line in lines)
