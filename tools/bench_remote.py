#!/usr/bin/env python
"""Object storage benchmark: an epoch streamed from SeaweedFS (S3) vs the same shards on disk.

Every variant runs the same pipeline (shard list -> untar -> samples -> decode), in
one process, alternating variants round by round; only the opener differs:

    local        open the shard files on local disk
    s3           stream from SeaweedFS (ranged requests, read-ahead, retries)
    s3+prefetch  the same, with the next shard opened in the background
    cache cold   S3 through an empty local cache (each shard downloaded, then read)
    cache warm   the same cache, second pass (no server traffic)

Read-only rows (no decode) show the raw I/O rates; decode rows are the real job.
A second table compares block sizes and fsspec's own buffered file (readahead cache).

    python tools/bench_remote.py --n 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from shardpipe import ShardWriter  # noqa: E402
from shardpipe.devtools.synth import make_dataset  # noqa: E402
from shardpipe.io.files import open_shard  # noqa: E402
from shardpipe.io.prefetch import Prefetcher  # noqa: E402
from shardpipe.io.remote import ReadOptions  # noqa: E402
from shardpipe.stages.base import Context, Pipeline  # noqa: E402
from shardpipe.stages.decode import Decode  # noqa: E402
from shardpipe.stages.samples import GroupSamples  # noqa: E402
from shardpipe.stages.shards import Shard, ShardList, expand_urls  # noqa: E402
from shardpipe.stages.untar import Untar  # noqa: E402
from tests.servers.seaweed import SeaweedS3  # noqa: E402

MiB = 1 << 20
Opener = Callable[[Shard, int], Any]


def make_shards(root: Path, n: int, shard_mb: int) -> str:
    """Photo-like JPEG shards (generated once, reused); returns the manifest path."""
    manifest = root / "manifest.json"
    stamp = root / f".n{n}-mb{shard_mb}"
    if stamp.exists():
        return str(manifest)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"generating {n} images into {root} ...", flush=True)
    with ShardWriter(f"{root}/train-%06d.tar", maxsize=shard_mb * MiB) as w:
        for key, jpg, label in make_dataset(n, workers=os.cpu_count() or 1):
            w.write({"__key__": key, "jpg": jpg, "cls": label})
    stamp.touch()
    return str(manifest)


def run_epoch(shards: list[Shard], opener: Opener, decode: bool) -> tuple[int, float, float, float]:
    """(samples, wall seconds, CPU seconds of this process, seconds blocked on the network)."""
    streams: list[Any] = []

    def tracked(shard: Shard, offset: int) -> Any:
        streams.append(opener(shard, offset))
        return streams[-1]

    stages: list[Any] = [ShardList(shards), Untar(tracked), GroupSamples()]
    if decode:
        stages.append(Decode("rgb8"))
    pipeline = Pipeline(stages, Context())
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(1 for _ in pipeline)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n, wall, cpu, sum(getattr(f, "wait_seconds", 0.0) for f in streams)


def prefetching_opener(shards: list[Shard], depth: int, **kw: Any) -> tuple[Opener, Prefetcher]:
    """An Untar opener that opens the next ``depth`` shards of the list in the background."""
    pf = Prefetcher(depth, **kw)
    order = {s.url: i for i, s in enumerate(shards)}

    def opener(shard: Shard, offset: int) -> Any:
        i = order[shard.url]
        for nxt in shards[i + 1 : i + 1 + depth]:
            pf.prefetch(nxt.url, expected_size=nxt.size)
        return pf.open(shard.url, offset, expected_size=shard.size)

    return opener, pf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="images (~110 KB each)")
    ap.add_argument("--shard-mb", type=int, default=32, help="shard size in MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=str(ROOT / "bench-data" / "remote"))
    ap.add_argument("--no-decode", action="store_true", help="read-only rows only")
    ap.add_argument("--pin", action="store_true",
                    help="run the server on the last CPU and the pipeline on the others, as if "
                         "the server were another machine")  # fmt: skip
    args = ap.parse_args()

    manifest = make_shards(Path(args.data), args.n, args.shard_mb)
    local = expand_urls(manifest)
    total_mb = sum(s.size or 0 for s in local) / MiB
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    server = SeaweedS3(tmp / "seaweed", buckets=("bench",))
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) > 1:
        server.child.argv = ["taskset", "-c", str(cpus[-1]), *server.child.argv]
        os.sched_setaffinity(0, cpus[:-1])
        print(f"server on CPU {cpus[-1]}, pipeline on CPUs {cpus[:-1]}")
    server.start()
    try:
        import fsspec.core

        so = server.storage_options()
        fs, _ = fsspec.core.url_to_fs("s3://bench", **so)
        for s in local:
            fs.put_file(s.url, f"bench/{Path(s.url).name}")
        remote = [Shard(f"s3://bench/{Path(s.url).name}", s.index, s.samples, s.size, s.sha256) for s in local]
        print(f"{len(local)} shards, {args.n} samples, {total_mb:.0f} MiB; SeaweedFS at {server.endpoint}\n")

        def s3_open(options: ReadOptions | None = None) -> Opener:
            return lambda sh, off: open_shard(sh.url, off, storage_options=so, read_options=options,
                                              expected_size=sh.size)  # fmt: skip

        def fsspec_file(block: int) -> Opener:
            def opener(sh: Shard, off: int) -> Any:
                f = fs.open(sh.url, "rb", block_size=block, cache_type="readahead")
                f.seek(off)
                return f

            return opener

        cache_dir = tmp / "cache"

        def cached(sh: Shard, off: int) -> Any:
            return open_shard(sh.url, off, storage_options=so, cache_dir=cache_dir, expected_size=sh.size)

        def cold() -> tuple[list[Shard], Opener, None]:
            shutil.rmtree(cache_dir, ignore_errors=True)  # every round starts empty
            return remote, cached, None

        variants: dict[str, Callable[[], tuple[list[Shard], Opener, Any]]] = {
            "local": lambda: (local, lambda sh, off: open_shard(sh.url, off), None),
            "s3": lambda: (remote, s3_open(), None),
            "s3+prefetch": lambda: (remote, *prefetching_opener(remote, 1, storage_options=so)),
            "cache cold": cold,
            "cache warm": lambda: (remote, cached, None),
        }
        io_variants = {
            **{
                f"s3 block {b} MiB": (lambda b=b: (remote, s3_open(ReadOptions(block_size=b * MiB)), None))
                for b in (1, 4, 8, 16)
            },  # fmt: skip
            **{
                f"fsspec file readahead {b} MiB": (lambda b=b: (remote, fsspec_file(b * MiB), None)) for b in (8, 32)
            },  # fmt: skip
        }
        modes = [False] if args.no_decode else [False, True]
        for decode in modes:
            table(variants, decode, args.rounds, total_mb, "read only" if not decode else "with decode (rgb8)")
        table({"local": variants["local"], **io_variants}, False, args.rounds, total_mb, "read only: block sizes")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def table(variants: dict, decode: bool, rounds: int, total_mb: float, title: str) -> None:
    """Run every variant ``rounds`` times, alternating; print medians and ratios to local."""
    results: dict[str, list[tuple[int, float, float, float]]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            shards, opener, closer = make()
            results[name].append(run_epoch(shards, opener, decode))
            if closer is not None:
                closer.close()
    base = statistics.median(r[1] for r in results["local"])
    print(f"## {title}  (median of {rounds} rounds)")
    print("| variant | samples | seconds | samples/s | MiB/s | CPU s | net wait s | x local |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in results.items():
        wall, cpu, wait = (statistics.median(r[i] for r in rs) for i in (1, 2, 3))
        n = rs[0][0]
        print(
            f"| {name} | {n} | {wall:.2f} | {n / wall:.0f} | {total_mb / wall:.0f} | {cpu:.2f} | {wait:.2f} "
            f"| {base / wall:.2f} |"
        )
    print(flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
