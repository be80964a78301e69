#!/usr/bin/env python
"""Index and block-shuffle benchmark (issue 12), side by side, each variant in a fresh process per round.

1. Index speed: ``index_shards`` (headers only) vs reading the shards whole (streaming every
   sample, as counting them without an index must), local (page cache and cold) and from
   SeaweedFS S3.
2. Epoch throughput: block shuffle (random access, ``pread``) vs the windowed shuffle
   (sequential streaming), without decode (the loader's own cost, the harshest comparison)
   and with decode; local page cache and cold; S3 through the shard cache.
3. Shuffle quality: distinct classes per batch of 64 on class-ordered shards, for a random
   permutation, shardpipe's block and window shuffles, and webdataset's shuffle.

"Cold" evicts the shard files from the page cache (posix_fadvise DONTNEED) before the run.
CPU ms per sample counts every thread of the process (user + system).

    python tools/bench_index.py --n 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 1 << 20


def make_shards(root: Path, n: int, shard_mb: int) -> str:
    """Photo-like JPEG shards (generated once, reused); returns the manifest path."""
    from shardpipe import ShardWriter
    from shardpipe.devtools.synth import make_dataset

    stamp = root / f".n{n}-mb{shard_mb}"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        print(f"generating {n} images into {root} ...", flush=True)
        with ShardWriter(f"{root}/train-%06d.tar", maxsize=shard_mb * MiB) as w:
            for key, jpg, label in make_dataset(n, workers=os.cpu_count() or 1):
                w.write({"__key__": key, "jpg": jpg, "cls": label})
        stamp.touch()
    return str(root / "manifest.json")


def evict(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ one variant (child process)


def run_variant(name: str, cfg: dict[str, Any]) -> dict[str, float]:
    from shardpipe import ShardDataset, index_shards

    if cfg.get("cold"):
        evict(cfg["local_files"])
    options = cfg.get("storage_options")
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if name == "index":
        m = index_shards(cfg["urls"], cfg["out"], workers=cfg["workers"], storage_options=options)
        n = m["samples"]
    elif name == "read whole":
        n = sum(1 for _ in ShardDataset(cfg["urls"], decode=None, storage_options=options))
    elif name in ("block", "window"):
        ds = ShardDataset(
            cfg["manifest"], shuffle=True, shuffle_algo=name, decode=cfg["decode"], storage_options=options,
            cache_dir=cfg.get("cache_dir"),
        )  # fmt: skip
        n = sum(1 for _ in ds)
    else:
        raise ValueError(name)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"samples": n, "wall": wall, "cpu": cpu}


def fresh(name: str, cfg: dict[str, Any]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(title: str, rows: dict[str, list[dict[str, float]]], shards: int, ref: str | None = None) -> None:
    print(f"\n{title}")
    print(f"| variant | CPU ms/sample | samples/s | shards/s | wall s | vs {ref or '-'} (samples/s) |")
    print("|---|---:|---:|---:|---:|---:|")
    med = {name: runs[0]["samples"] / statistics.median(r["wall"] for r in runs) for name, runs in rows.items()}
    for name, runs in rows.items():
        n = runs[0]["samples"]
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        ratio = f"{med[name] / med[ref]:.2f}x" if ref and ref in med else ""
        print(f"| {name} | {1000 * cpu / n:.3f} | {n / wall:,.0f} | {shards / wall:,.1f} | {wall:.2f} | {ratio} |")


def rounds(variants: dict[str, dict[str, Any]], n_rounds: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for _ in range(n_rounds):
        for name, cfg in variants.items():  # alternating, each a fresh process
            out[name].append(fresh(cfg.get("kind", name), cfg))
    return out


# ------------------------------------------------------------------ shuffle quality (in process)


def quality(tmp: Path) -> None:
    import numpy as np

    import shardpipe
    from shardpipe import ShardDataset

    def distinct(labels: list[int], batch: int = 64) -> float:
        full = len(labels) // batch * batch
        return float(np.mean([len(set(labels[i : i + batch])) for i in range(0, full, batch)]))

    print("\nShuffle quality: distinct classes per batch of 64 on class-ordered shards (mean over 3 seeds)")
    print(
        "| data | random permutation | block (whole epoch) | block 8192 | shardpipe window 1000 | webdataset shuffle(1000) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for classes, per_class, shard in ((10, 400, 250), (100, 400, 1000)):
        root = tmp / f"q{classes}"
        with shardpipe.ShardWriter(str(root / "c-%04d.tar"), maxcount=shard) as w:
            for i in range(classes * per_class):
                w.write({"__key__": f"k{i:06d}", "cls": i // per_class})
        manifest = str(root / "manifest.json")
        urls = sorted(str(p) for p in root.glob("c-*.tar"))
        labels = [i // per_class for i in range(classes * per_class)]
        res: dict[str, list[float]] = {}
        for seed in range(3):
            rng = np.random.default_rng(seed)
            res.setdefault("perm", []).append(distinct(list(rng.permutation(labels))))
            for name, kw in (
                ("block", {"shuffle": True, "shuffle_algo": "block"}),
                ("block8k", {"shuffle": True, "shuffle_algo": "block", "shuffle_block_size": 8192}),
                ("window", {"shuffle": 1000, "shuffle_algo": "window"}),
            ):
                got = [int(s["cls"]) for s in ShardDataset(manifest, decode=None, seed=seed, **kw)]
                res.setdefault(name, []).append(distinct(got))
            try:
                import webdataset as wds

                ds = wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False).shuffle(1000)
                res.setdefault("wds", []).append(distinct([int(s["cls"]) for s in ds]))
            except ImportError:
                res.setdefault("wds", []).append(float("nan"))
        m = {k: statistics.mean(v) for k, v in res.items()}
        print(
            f"| {classes} classes x {per_class}, shards of {shard} | {m['perm']:.2f} | {m['block']:.2f} | "
            f"{m['block8k']:.2f} | {m['window']:.2f} | {m['wds']:.2f} |"
        )


# ------------------------------------------------------------------ index load at ImageNet scale


def index_load(tmp: Path, shards: int = 128, per_shard: int = 10_000) -> None:
    """A 1.28 M-sample index: file size, load time (memory map), lookups per second."""
    import numpy as np

    from shardpipe.format.index import SampleIndex, ShardIndex, write_index

    entries = []
    for _ in range(shards):
        e = ShardIndex(size=per_shard * 110_000)
        e.offsets = list(range(0, per_shard * 110_000 + 1, 110_000))
        e.keys = list(range(per_shard))
        entries.append(e)
    path = str(tmp / "big.index")
    write_index(path, entries)
    t0 = time.perf_counter()
    index = SampleIndex.load(path)
    load = time.perf_counter() - t0
    picks = np.random.default_rng(0).integers(0, len(index), 100_000).tolist()
    t0 = time.perf_counter()
    for i in picks:
        index.locate(i)
    per = (time.perf_counter() - t0) / len(picks)
    print(f"\nIndex of {len(index):,} samples: {os.path.getsize(path) / MiB:.1f} MiB, "
          f"load {1000 * load:.2f} ms, locate {1e6 * per:.1f} us per sample")  # fmt: skip


# ------------------------------------------------------------------ main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_variant(sys.argv[2], json.loads(sys.argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="images (~110 KB each)")
    ap.add_argument("--shard-mb", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=str(ROOT / "bench-data" / "index"))
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--only", choices=["index", "epoch", "quality", "load"], default=None)
    args = ap.parse_args()

    manifest = make_shards(Path(args.data), args.n, args.shard_mb)
    meta = json.loads(Path(manifest).read_text())
    files = [str(Path(args.data) / e["name"]) for e in meta["shards"]]
    n_shards = len(files)
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    print(f"{meta['samples']} samples, {n_shards} shards, {meta['bytes'] / MiB:.0f} MiB; {os.cpu_count()} CPUs")
    base = {"urls": files, "local_files": files, "workers": 2, "out": str(tmp / "manifest.json")}
    try:
        if args.only in (None, "index"):
            rows = rounds(
                {
                    "index, page cache": {**base, "kind": "index"},
                    "read whole, page cache": {**base, "kind": "read whole"},
                    "index, cold": {**base, "kind": "index", "cold": True},
                    "read whole, cold": {**base, "kind": "read whole", "cold": True},
                },
                args.rounds,
            )
            table("Index speed, local disk (index: headers only, 2 threads)", rows, n_shards, "read whole, page cache")
        if args.only in (None, "epoch"):
            for decode in (None, "rgb8"):
                cfg = {**base, "manifest": manifest, "decode": decode}
                rows = rounds(
                    {
                        "window, page cache": {**cfg, "kind": "window"},
                        "block, page cache": {**cfg, "kind": "block"},
                        "window, cold": {**cfg, "kind": "window", "cold": True},
                        "block, cold": {**cfg, "kind": "block", "cold": True},
                    },
                    args.rounds,
                )
                what = "no decode (loader overhead only)" if decode is None else "decode rgb8"
                table(f"Epoch throughput, local disk, {what}", rows, n_shards, "window, page cache")
        if not args.no_s3 and args.only in (None, "index", "epoch"):
            s3(args, meta, files, tmp, n_shards, args.only)
        if args.only in (None, "quality"):
            quality(tmp)
        if args.only in (None, "load"):
            index_load(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def s3(
    args: argparse.Namespace, meta: dict[str, Any], files: list[str], tmp: Path, n_shards: int, only: str | None
) -> None:
    import fsspec.core

    from shardpipe import index_shards
    from tests.servers.seaweed import SeaweedS3

    server = SeaweedS3(tmp / "seaweed", buckets=("bench",))
    server.start()
    try:
        options = server.storage_options()
        fs, _ = fsspec.core.url_to_fs("s3://bench/x", **options)
        for f in files:
            fs.put_file(f, f"bench/ds/{Path(f).name}")
        urls = [f"s3://bench/ds/{Path(f).name}" for f in files]
        remote_manifest = "s3://bench/ds/manifest.json"
        index_shards(urls, remote_manifest, storage_options=options)
        base = {"urls": urls, "local_files": [], "workers": 4, "out": str(tmp / "s3-manifest.json"),
                "storage_options": options}  # fmt: skip
        if only in (None, "index"):
            rows = rounds({"index, S3": {**base, "kind": "index"}, "read whole, S3": {**base, "kind": "read whole"}},
                          args.rounds)  # fmt: skip
            table("Index speed, SeaweedFS S3 on loopback (index: 8 MiB ranged reads, 4 threads)", rows, n_shards,
                  "read whole, S3")  # fmt: skip
        if only not in (None, "epoch"):
            return
        cache = str(tmp / "cache")
        cfg = {**base, "manifest": remote_manifest, "decode": None, "cache_dir": cache}
        rows = {}
        for _ in range(args.rounds):
            for algo in ("window", "block"):
                shutil.rmtree(cache, ignore_errors=True)
                rows.setdefault(f"{algo}, S3 via cache, cold cache", []).append(fresh(algo, cfg))
                rows.setdefault(f"{algo}, S3 via cache, warm cache", []).append(fresh(algo, cfg))
        table("Epoch throughput from S3 through the shard cache, no decode", rows, n_shards,
              "window, S3 via cache, warm cache")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
