"""Progressive resizing: what an epoch costs at each crop size with the crop-aware decode.

Writes photo-like JPEGs (full size, not presized, as a user converting originals would)
into shards once, then streams one epoch per round at each size, alternating sizes, each
in a fresh process: ShardLoader with 2 workers, RandomResizedCrop(size) + flip, uint8
batches of 64. Reports CPU ms per image (all processes; steady on a shared machine) and
images/s, medians over rounds.

    python tools/bench_ramp.py --n 2000 --rounds 3 --sizes 128 160 192 224
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _write(root: str, n: int) -> str:
    from shardpipe import ShardWriter
    from shardpipe.devtools.synth import make_dataset

    manifest = os.path.join(root, "manifest.json")
    if not os.path.exists(manifest):
        with ShardWriter(os.path.join(root, "train-%06d.tar"), maxcount=250) as w:
            for key, data, label in make_dataset(n, 0, num_classes=100, workers=os.cpu_count() or 1):
                w.write({"__key__": key, "jpg": data, "cls": label})
    return manifest


def _cpu() -> float:
    import resource

    return sum(
        getattr(resource.getrusage(w), k)
        for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for k in ("ru_utime", "ru_stime")
    )


def _child(manifest: str, size: int, workers: int) -> None:

    from shardpipe import ShardDataset, ShardLoader
    from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop

    ds = ShardDataset(
        manifest, shuffle=1000, seed=0, transform=Compose([RandomResizedCrop(size), RandomHorizontalFlip()]),
        batch_size=64,
    )  # fmt: skip
    loader = ShardLoader(ds, num_workers=workers)
    c0, t0 = _cpu(), time.perf_counter()  # after start-up: imports are not the epoch's cost
    n = sum(len(b["jpg"]) for b in loader)
    wall = time.perf_counter() - t0
    del loader  # joins the workers, so their time is counted
    cpu = _cpu() - c0
    print(json.dumps({"images": n, "wall": wall, "cpu": cpu}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192, 224])
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "shardpipe-bench-ramp"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.workers)
        return 0
    root = os.path.join(args.data, f"n{args.n}")
    os.makedirs(root, exist_ok=True)
    manifest = _write(root, args.n)
    results: dict[int, list[dict]] = {s: [] for s in args.sizes}
    for _ in range(args.rounds):
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--workers", str(args.workers), "--child", manifest, str(size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[size].append(json.loads(out.strip().splitlines()[-1]))
    base = statistics.median(1000 * r["cpu"] / r["images"] for r in results[max(args.sizes)])
    print(f"{args.n} photo-like JPEGs, {args.workers} workers, RandomResizedCrop(size) + flip, batches of 64, "
          f"median of {args.rounds} rounds")  # fmt: skip
    print(f"{'size':>5} {'CPU ms/img':>11} {'images/s':>9} {'CPU vs largest':>15}")
    for size in args.sizes:
        cpu = statistics.median(1000 * r["cpu"] / r["images"] for r in results[size])
        rate = statistics.median(r["images"] / r["wall"] for r in results[size])
        print(f"{size:>5} {cpu:>11.2f} {rate:>9.0f} {cpu / base:>14.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
