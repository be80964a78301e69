"""``shardpipe write SOURCE OUTPUT_PATTERN``: pack images into shards with a manifest.

SOURCE is a flat folder, an ImageFolder tree (one folder per class), a CSV or JSONL list
of paths and labels, or an LMDB store; OUTPUT_PATTERN names the shards with a
``%06d``-style placeholder (``out/train-%06d.tar``; ``s3://`` and ``gs://`` work too). It
prints the shards as one brace pattern (``out/train-{000000..000003}.tar``) that
``inspect``, ``verify``, ``index`` and ``ShardDataset`` accept.
"""

from __future__ import annotations

import argparse
import re
import sys

from shardpipe.write.engines import ENGINES
from shardpipe.write.sources import SOURCE_TYPES

EXIT_DETAILS = "  (write: 1 also when no image could be written, or with --strict when an input was skipped)"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"500M"`` -> bytes (k/M/G/T are binary multiples; an optional trailing ``B`` or ``iB``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 1G, 200000)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.cli.common import add_storage_options

    p.add_argument("source", help="folder, ImageFolder root, .csv/.jsonl list, or LMDB store")
    p.add_argument("pattern", metavar="OUTPUT_PATTERN", help="shard names, e.g. out/train-%%06d.tar")
    p.add_argument("--source-type", choices=SOURCE_TYPES, default="auto", help="default: guess from SOURCE")
    p.add_argument("--maxcount", type=int, default=10_000, help="samples per shard at most (default 10000)")
    p.add_argument(
        "--maxsize", type=parse_size, default=None,
        help="also close shards at this size, e.g. 500M (local engine only: shards are then written in sequence "
        "and a skipped input is replaced by the next one; default: shards are planned by --maxcount alone)",
    )  # fmt: skip
    p.add_argument(
        "--compress",
        choices=["gz"],
        default=None,
        help="gzip the shards (name them .tar.gz or .tgz: readers go by the name)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel workers of the local engine (default: one per CPU): processes for --presize or --check "
        "decode, threads for copying and the restart-interval transcode",
    )
    p.add_argument(
        "--engine", choices=sorted(ENGINES), default="local",
        help="where the work runs: local (default) or ray (one task per shard; pip install 'shardpipe[ray]')",
    )  # fmt: skip
    p.add_argument(
        "--ray-address", default=None, metavar="ADDR",
        help="the Ray cluster to join (default: $RAY_ADDRESS, a `ray start` cluster here, or a new local one)",
    )  # fmt: skip
    order = p.add_mutually_exclusive_group()
    order.add_argument(
        "--shuffle", action="store_true", default=None,
        help="shuffle the sample order across shards (default when the source has classes or labels)",
    )  # fmt: skip
    order.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="keep the input order")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    p.add_argument("--presize", type=int, default=None, metavar="N", help="shrink the shorter side to N pixels")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of presized images (default 90)")
    p.add_argument(
        "--check", choices=["header", "decode", "none"], default="header",
        help="how to test that an image is readable: header (fast, default), full decode, or not at all",
    )  # fmt: skip
    p.add_argument(
        "--no-restart-intervals", dest="restart_intervals", action="store_false",
        help="copy JPEGs byte for byte (default: re-encode them losslessly with restart intervals, which the "
        "native decoder uses to decode only the intervals a crop covers)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last complete shard")
    p.add_argument(
        "--label-pattern",
        default=None,
        metavar="REGEX",
        help="flat folders: label = a group of this regex on the relative path",
    )
    p.add_argument(
        "--lmdb-decoder",
        default=None,
        metavar="MODULE:FUNCTION",
        help="turns an LMDB value into image bytes (or (bytes, label[, extra]))",
    )
    add_storage_options(p, "a remote OUTPUT_PATTERN (s3://, gs://)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any input was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from shardpipe.cli.common import DATA_PROBLEM, OK, USAGE, InputError, fail, parse_storage_options, printable
    from shardpipe.errors import OutputInUseError
    from shardpipe.write.job import write_shards
    from shardpipe.write.plan import ShardTaskError
    from shardpipe.write.shard_writer import brace_range

    try:
        storage_options = parse_storage_options(args.storage_options)
    except InputError as e:
        return fail("write", e, USAGE)
    try:
        summary = write_shards(
            args.source, args.pattern, source_type=args.source_type, maxcount=args.maxcount,
            maxsize=args.maxsize, compress=args.compress, workers=args.workers, shuffle=args.shuffle,
            seed=args.seed, presize=args.presize, quality=args.quality, check=args.check,
            restart_intervals=args.restart_intervals, resume=args.resume, label_pattern=args.label_pattern,
            lmdb_decoder=args.lmdb_decoder, storage_options=storage_options,
            progress=not args.no_progress, engine=args.engine, ray_address=args.ray_address,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted: complete shards are kept; run again with --resume to continue", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, ShardTaskError, OutputInUseError) as e:
        return fail("write", e, USAGE)
    print(source_line(args.source, args.source_type))
    print(summary.format(show=printable))
    if summary.shards:
        print(f"shards: {brace_range(args.pattern, summary.shards)}")
    if summary.written == 0:
        return fail("write", "no images were written", DATA_PROBLEM)
    return DATA_PROBLEM if args.strict and summary.skipped else OK


def source_line(source: str, source_type: str) -> str:
    """The summary line saying how SOURCE was read: the type given, or the one detected and any doubt about it."""
    from shardpipe.write.sources.registry import detect_type, stray_images_warning

    if source_type != "auto":
        return f"source: {source_type} (--source-type)"
    try:
        kind = detect_type(source)
        doubt = kind == "folder" and stray_images_warning(source) is not None
    except OSError:  # gone since the write read it
        return "source: auto-detected"
    if doubt:
        return f"source: {kind} (auto-detected; its subfolders hold images too: see the warning, --source-type imagefolder)"
    return f"source: {kind} (auto-detected; --source-type sets another)"
