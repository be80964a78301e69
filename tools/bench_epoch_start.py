#!/usr/bin/env python
"""Epoch start-up with fresh vs persistent DataLoader workers, and memory over many epochs.

Each round runs every variant in a fresh process (alternating), over the same shards:

    fresh       ShardLoader(ds, num_workers=W)                          workers restarted each epoch
    persistent  ShardLoader(ds, num_workers=W, persistent_workers=True) workers kept across epochs

Per epoch it records the first-batch latency (from ``iter(loader)`` to the first batch),
the epoch's wall time, and, right after the first batch, the resident memory (RSS) and
open file descriptors of the main process and of each worker (from /proc). The summary
leads with CPU ms per image (main process plus workers), then the latencies, then memory
and descriptors at a few epochs, so growth over the run shows.

    python tools/bench_epoch_start.py --n 256 --epochs 60 --workers 2 --rounds 2
    python tools/bench_epoch_start.py --context spawn      # workers started with spawn
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("fresh", "persistent")
PAGE = os.sysconf("SC_PAGE_SIZE")


def make_shards(root: Path, n: int) -> str:
    """Photo-like JPEG shards (generated once, reused); returns the manifest path."""
    from shardpipe import ShardWriter
    from shardpipe.devtools.synth import make_dataset

    manifest, stamp = root / "manifest.json", root / f".n{n}"
    if not stamp.exists():
        root.mkdir(parents=True, exist_ok=True)
        print(f"generating {n} images into {root} ...", flush=True)
        with ShardWriter(f"{root}/train-%06d.tar", maxcount=max(n // 8, 1)) as w:
            for key, jpg, label in make_dataset(n, workers=os.cpu_count() or 1):
                w.write({"__key__": key, "jpg": jpg, "cls": label})
        stamp.touch()
    return str(manifest)


def proc_usage(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a process."""
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * PAGE / 1e6
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def children() -> list[int]:
    """Live child processes (the DataLoader workers); exited ones not yet reaped are left out."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            pids.update(int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split())
        except OSError:
            pass
    live = []
    for pid in sorted(pids):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                live.append(pid)
        except OSError:
            pass
    return live


def run_child(args: argparse.Namespace) -> None:
    """One variant in this process: print one JSON line per epoch, then a totals line."""
    from shardpipe import ShardDataset, ShardLoader
    from shardpipe.augment import RandomResizedCrop

    ds = ShardDataset(args.data, shuffle=64, seed=1, batch_size=args.batch, transform=RandomResizedCrop(args.crop))
    loader = ShardLoader(
        ds,
        num_workers=args.workers,
        persistent_workers=args.child == "persistent",
        multiprocessing_context=args.context,
    )
    c0 = time.process_time()
    images = 0
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        it = iter(loader)
        first = next(it)
        first_s = time.perf_counter() - t0
        main = proc_usage(os.getpid())
        workers = [proc_usage(pid) for pid in children()]
        images += len(first["__key__"]) + sum(len(b["__key__"]) for b in it)
        del it, first
        record = {"epoch": epoch, "first_s": first_s, "epoch_s": time.perf_counter() - t0, "main": main}
        print(json.dumps({**record, "workers": workers}), flush=True)
    del loader  # joins the workers, so their CPU time counts below
    import gc

    gc.collect()
    cpu = (
        time.process_time()
        - c0
        + sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) for f in ("ru_utime", "ru_stime"))
    )
    print(json.dumps({"images": images, "cpu_s": cpu}), flush=True)


def run_variant(variant: str, args: argparse.Namespace, manifest: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cmd = [sys.executable, __file__, "--child", variant, "--data", manifest]
    for name in ("epochs", "workers", "batch", "crop", "context"):
        cmd += [f"--{name}", str(getattr(args, name))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines[:-1], lines[-1]


def summarise(variant: str, runs: list[tuple[list[dict[str, Any]], dict[str, Any]]]) -> None:
    cpu_ms = statistics.median(1000 * t["cpu_s"] / t["images"] for _, t in runs)
    later = [e["first_s"] * 1000 for epochs, _ in runs for e in epochs[1:]]
    first = statistics.median(epochs[0]["first_s"] * 1000 for epochs, _ in runs)
    epoch_s = statistics.median(e["epoch_s"] for epochs, _ in runs for e in epochs[1:])
    images = runs[0][1]["images"] / len(runs[0][0])
    q = statistics.quantiles(later, n=10) if len(later) > 1 else later * 9
    print(
        f"{variant:<11} {cpu_ms:8.2f} CPU ms/img  first batch: epoch 0 {first:7.1f} ms, later epochs median "
        f"{statistics.median(later):7.1f} ms (p90 {q[-1]:.1f})  epoch {epoch_s:.3f} s ({images / epoch_s:.0f} img/s)"
    )
    epochs = runs[-1][0]
    marks = sorted({1, 5, 10, 25, 50, len(epochs)} & set(range(1, len(epochs) + 1)))
    for label, pick in (("main", lambda e: [e["main"]]), ("workers", lambda e: e["workers"])):
        cells = []
        for m in marks:
            usage = pick(epochs[m - 1])
            cells.append(f"e{m}: " + " ".join(f"{rss:.0f}MB/{fds}fd" for rss, fds in usage))
        print(f"    {label:<8} " + " | ".join(cells))
    steady = epochs[min(4, len(epochs) - 1) :]
    main_rss = [e["main"][0] for e in steady]
    main_fds = [e["main"][1] for e in steady]
    worker_rss = [w[0] for e in steady for w in e["workers"]] or [0.0]
    worker_fds = [w[1] for e in steady for w in e["workers"]] or [0]
    print(
        f"    epochs 5..{len(epochs)}: main RSS {min(main_rss):.0f}..{max(main_rss):.0f} MB, fds "
        f"{min(main_fds)}..{max(main_fds)}; workers RSS {min(worker_rss):.0f}..{max(worker_rss):.0f} MB, "
        f"fds {min(worker_fds)}..{max(worker_fds)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="images in the data set (one epoch)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--context", default="fork", help="multiprocessing start method of the workers")
    p.add_argument("--root", default=str(ROOT / "bench-data" / "epoch-start"))
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args)
        return
    manifest = make_shards(Path(args.root) / f"n{args.n}", args.n)
    print(
        f"{args.n} images/epoch, {args.epochs} epochs, {args.workers} workers ({args.context}), "
        f"batch {args.batch}, crop {args.crop}, {args.rounds} rounds, {os.cpu_count()} CPUs",
        flush=True,
    )
    runs: dict[str, list[Any]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            runs[variant].append(run_variant(variant, args, manifest))
    for variant in VARIANTS:
        summarise(variant, runs[variant])


if __name__ == "__main__":
    main()
