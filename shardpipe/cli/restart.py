"""``shardpipe restart URLS -o DIR``: rewrite existing shards with restart-marked JPEGs (lossless).

The native crop decoder then decodes only the restart intervals a crop covers. Any tool's
tar/tgz shards (webdataset, img2dataset, shardpipe), local or at s3://, gs://, http(s)://
URLs; DIR is a folder or an s3:// / gs:// prefix. Resumable (finished shards are kept; a rerun
with other settings is refused); writes DIR/manifest.json and its index. A damaged input shard is
listed and left out, the others converted (exit status 1). One run at a time into a local DIR
(a second is refused); an s3:// or gs:// prefix takes no lock: run one at a time there.
"""

from __future__ import annotations

import argparse
import sys

EXIT_DETAILS = "  (restart: 1 also when a damaged input shard was skipped: the others are converted)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.cli.reading import add_read_options
    from shardpipe.image.restart import DEFAULT_PER_ROW

    p.add_argument(
        "urls", help="shards: brace pattern (s3://b/train-{000..099}.tar), quoted glob, '::'-joined list or a manifest"
    )
    p.add_argument(
        "-o", "--output", required=True,
        help="folder or s3:// / gs:// prefix for the new shards, manifest.json and its index",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="shards converted in parallel (default 2)")
    p.add_argument(
        "--per-row", type=int, default=DEFAULT_PER_ROW,
        help=f"restart intervals per MCU row at most (default {DEFAULT_PER_ROW})",
    )  # fmt: skip
    p.add_argument(
        "--storage-options", default=None, metavar="JSON",
        help='fsspec options for remote inputs, e.g. \'{"endpoint_url": "http://127.0.0.1:9000", "anon": true}\'',
    )  # fmt: skip
    p.add_argument(
        "--output-storage-options", default=None, metavar="JSON",
        help="fsspec options for a remote output (default: --storage-options)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_read_options(p)


def run(args: argparse.Namespace) -> int:
    from shardpipe.cli.common import (
        DATA_PROBLEM,
        OK,
        USAGE,
        InputError,
        fail,
        manifest_message,
        parse_storage_options,
        printable,
        resolve_inputs,
    )
    from shardpipe.cli.reading import parse_read_options
    from shardpipe.errors import OutputInUseError, ShardpipeError
    from shardpipe.format.manifest import DamagedManifestError, ManifestPathError
    from shardpipe.io.remote import StoreUnreachableError
    from shardpipe.io.urls import check_url
    from shardpipe.write.restart_job import mark_restarts

    try:
        options = parse_storage_options(args.storage_options)
        out_options = parse_storage_options(args.output_storage_options)
        reading = parse_read_options(args.read_options)
        check_url(args.output)
        resolve_inputs(args.urls, options, reading)
        summary = mark_restarts(
            args.urls, args.output, per_row=args.per_row, workers=args.workers, progress=not args.no_progress,
            storage_options=options, output_storage_options=out_options, read_options=reading,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to continue", file=sys.stderr)
        return 130
    except (DamagedManifestError, ManifestPathError) as e:  # before ValueError: the manifest's data
        return fail("restart", manifest_message(e) or e, DATA_PROBLEM)
    except (InputError, ValueError, ImportError, OutputInUseError, StoreUnreachableError) as e:
        return fail("restart", e, USAGE)  # (an unreachable store: exit 2, as in the other commands)
    except (ShardpipeError, OSError) as e:  # found in a shard: truncated, corrupt, vanished
        return fail("restart", e, DATA_PROBLEM)
    print(summary.format(show=printable))
    if summary.damaged:
        return fail(
            "restart", f"damaged input shards skipped: {len(summary.damaged)} (listed above and in the manifest); "
            "replace or repair them, then run the same command again to convert them", DATA_PROBLEM,
        )  # fmt: skip
    return OK
