"""``shardpipe restart URLS -o DIR``: rewrite existing shards with restart-marked JPEGs (lossless).

The native crop decoder then decodes only the restart intervals a crop covers. Any tool's
tar/tgz shards (webdataset, img2dataset, shardpipe); resumable (finished shards are kept);
writes DIR/manifest.json and its index.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.image.restart import DEFAULT_PER_ROW

    p.add_argument("urls", help="local shards: brace pattern (in/train-{000..099}.tar), '::'-joined list or a manifest")
    p.add_argument("-o", "--output", required=True, help="folder for the new shards, manifest.json and its index")
    p.add_argument("--workers", type=int, default=2, help="shards converted in parallel (default 2)")
    p.add_argument(
        "--per-row", type=int, default=DEFAULT_PER_ROW,
        help=f"restart intervals per MCU row at most (default {DEFAULT_PER_ROW})",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from shardpipe.cli.common import DATA_PROBLEM, OK, USAGE, InputError, fail, resolve_inputs
    from shardpipe.errors import ShardpipeError
    from shardpipe.write.restart_job import mark_restarts

    try:
        resolve_inputs(args.urls)
        summary = mark_restarts(
            args.urls, args.output, per_row=args.per_row, workers=args.workers, progress=not args.no_progress
        )
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to continue", file=sys.stderr)
        return 130
    except (InputError, ValueError, ImportError) as e:
        return fail("restart", e, USAGE)
    except (ShardpipeError, OSError) as e:  # found in a shard: truncated, corrupt, vanished
        return fail("restart", e, DATA_PROBLEM)
    print(summary.format())
    return OK
