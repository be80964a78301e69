"""``shardpipe index URLS -o manifest.json``: a manifest and index for existing tar/tgz shards.

Reads only member headers where it can (seeks locally, small ranged reads remotely;
tgz shards are decompressed and marked sequential-only), in parallel. The manifest
lets several ranks split the shards evenly; the index gives random access
(``IndexedDataset``, ``ShardDataset(shuffle_algo="block")``).
"""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.cli.reading import add_read_options

    p.add_argument("urls", help="shards: brace pattern (s3://b/train-{000..099}.tar), quoted glob ('out/train-*.tar'), "
                   "'::'-joined list")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="manifest to write (its index goes beside it)")
    p.add_argument("--workers", type=int, default=8, help="shards scanned in parallel (default 8)")
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local",
        help="local threads (default) or one Ray task per shard (pip install 'shardpipe[ray]')",
    )  # fmt: skip
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="the Ray cluster to join (with --engine ray)")
    p.add_argument("--sha256", action="store_true", help="also checksum every shard (reads every byte)")
    p.add_argument(
        "--storage-options", default=None, metavar="JSON",
        help='fsspec options for remote URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:9000", "anon": true}\'',
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_read_options(p)


#: what fixes a shard that cannot be indexed
_FIX = "restore the shard from a good copy or write it again, or leave it out of URLS"


def _message(error: BaseException, cause: BaseException | None = None) -> str:
    """``error``'s message with what fixes ``cause`` (default: ``error`` itself), a data error met while indexing:
    the manifest's fix, the store's (it answered 5xx or nothing: the shard may be intact), a stray file's, or
    the shard's."""
    from shardpipe.cli.common import NOT_TAR_FIX, UNAVAILABLE_FIX, manifest_message
    from shardpipe.errors import NotTarError, ShardUnavailableError

    cause = error if cause is None else cause
    said = manifest_message(error) if cause is error else None  # a manifest read as URLS: what fixes it
    if said:
        return said
    if isinstance(cause, ShardUnavailableError):
        return f"{error} (to fix: {UNAVAILABLE_FIX})"
    return f"{error} (to fix: {NOT_TAR_FIX if isinstance(cause, NotTarError) else _FIX})"


def run(args: argparse.Namespace) -> int:
    from shardpipe.cli.common import (
        DATA_PROBLEM,
        OK,
        USAGE,
        InputError,
        fail,
        parse_storage_options,
        printable,
        resolve_inputs,
    )
    from shardpipe.cli.reading import parse_read_options
    from shardpipe.errors import ShardpipeError
    from shardpipe.io.urls import check_url
    from shardpipe.write.index_job import index_shards
    from shardpipe.write.plan import ShardTaskError

    t0 = time.perf_counter()
    try:
        options = parse_storage_options(args.storage_options)
        reading = parse_read_options(args.read_options)
        check_url(args.output)
        resolve_inputs(args.urls, options, reading)
        manifest = index_shards(
            args.urls, args.output, workers=args.workers, sha256=args.sha256,
            storage_options=options, progress=not args.no_progress, engine=args.engine,
            ray_address=args.ray_address, read_options=reading,
        )  # fmt: skip
    except InputError as e:
        return fail("index", e, USAGE)
    except ShardpipeError as e:  # found in a shard: truncated, corrupt, vanished
        return fail("index", _message(e), DATA_PROBLEM)
    except ShardTaskError as e:
        cause = e.__cause__
        data = isinstance(cause, ShardpipeError)
        return fail("index", _message(e, cause) if data else e, DATA_PROBLEM if data else USAGE)
    except (ValueError, OSError, ImportError) as e:
        return fail("index", e, USAGE)
    seconds = time.perf_counter() - t0
    n = len(manifest["shards"])
    print(
        f"indexed {manifest['samples']} samples in {n} shards ({manifest['bytes'] / 2**20:.1f} MiB) "
        f"in {seconds:.1f} s = {n / seconds:.1f} shards/s, {manifest['samples'] / seconds:.0f} samples/s"
    )
    print(printable(f"manifest: {args.output} (index: {manifest['index']})"))
    return OK
