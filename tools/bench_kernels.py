#!/usr/bin/env python
"""Per-image kernels in a tight loop: decode backends, and decode + RandomResizedCrop + flip.

Prints images/s on 1 thread (per core), on 2 threads (GIL release: ~2x when the kernel
releases it) and on 2 processes (the 2-core ceiling), medians over alternating rounds,
and ratios to PIL (decode) or PIL torchvision-style (decode + crop).
No pipeline, no tar, no batching: this is the ceiling a loader can approach.

    nice python tools/bench_kernels.py --n 300 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from shardpipe.devtools.bench import (  # noqa: E402
    OtherLoad,
    alternate,
    decode_kernel,
    format_table,
    median,
    photo_jpegs,
    pil_train_kernel,
    run_kernel,
    run_kernel_processes,
    shardpipe_train_kernel,
)
from shardpipe.image.decoders import AUTO_ORDER, available_decoders  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="generated JPEGs (default 300)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--processes", type=int, default=2, help="also run on this many processes (0: skip)")
    ap.add_argument("--only", choices=["decode", "train", "all"], default="all")
    args = ap.parse_args(argv)

    try:
        import cv2

        cv2.setNumThreads(1)  # the loader's threads are the parallelism; no nested pools
    except ImportError:
        pass
    print(f"generating {args.n} photo-like JPEGs ...", file=sys.stderr)
    items = photo_jpegs(args.n, workers=min(2, os.cpu_count() or 1))
    mean_kb = sum(map(len, items)) / len(items) / 1000
    print(f"{len(items)} JPEGs, mean {mean_kb:.0f} KB; backends: {available_decoders()}; auto order {AUTO_ORDER}\n")

    backends = [b for b in available_decoders()]
    kernels: dict[str, object] = {}
    if args.only in ("decode", "all"):
        for b in backends:
            kernels[f"decode {b}"] = decode_kernel(b)
    if args.only in ("train", "all"):
        kernels["rrc+flip PIL torchvision-style"] = pil_train_kernel(args.size)
        for b in backends:
            kernels[f"rrc+flip unfused {b}"] = shardpipe_train_kernel(b, args.size, fuse=False)
        for b in backends:
            kernels[f"rrc+flip fused {b}"] = shardpipe_train_kernel(b, args.size)
        for b in ("turbo", "simplejpeg"):
            if b in backends:
                kernels[f"rrc+flip fused {b} all n/8 scales"] = shardpipe_train_kernel(b, args.size, scales="all")
        if "turbo" in backends:
            kernels["rrc+flip fused turbo YUV planes"] = shardpipe_train_kernel("turbo", args.size, yuv=True)

    candidates = {}
    for name, fn in kernels.items():
        for t in args.threads:
            candidates[(name, t)] = lambda fn=fn, t=t: run_kernel(fn, items, t)
        candidates[(name, "cpu")] = lambda fn=fn: run_kernel(fn, items, 1, cpu_clock=True)
        if args.processes:
            candidates[(name, "p")] = lambda fn=fn: run_kernel_processes(fn, items, args.processes)
    for fn in kernels.values():  # warm up (imports, first-call allocations)
        for data in items[:5]:
            run_kernel(fn, [data], 1)
    load = OtherLoad()
    results = alternate(candidates, args.rounds)
    other = load.stop()

    ref = "rrc+flip PIL torchvision-style"
    rows = []
    for name in kernels:
        row: list[object] = [name, median(results[(name, "cpu")])]
        for t in args.threads:
            row.append(median(results[(name, t)]))
        if len(args.threads) > 1:
            row.append(median(results[(name, args.threads[-1])]) / median(results[(name, args.threads[0])]))
        if args.processes:
            row.append(median(results[(name, "p")]))
        base = ref if name.startswith("rrc") else "decode pil"
        if base in kernels:
            row.append(median(results[(name, "cpu")]) / median(results[(base, "cpu")]))
        rows.append(row)
    headers = ["kernel", "img/CPU-s"] + [f"img/s {t} thr" for t in args.threads]
    if len(args.threads) > 1:
        headers.append(f"{args.threads[-1]}/{args.threads[0]} thr")
    if args.processes:
        headers.append(f"img/s {args.processes} proc")
    headers.append("vs PIL (CPU)")
    print(format_table(headers, rows))
    if other is not None:
        print(f"\nother processes used {100 * other:.0f}% of the machine's CPU time during the run")


if __name__ == "__main__":
    main()
