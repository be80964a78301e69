#!/usr/bin/env python
"""Per-image kernels in a tight loop: decode backends, and decode + RandomResizedCrop + flip.

Prints images/s on 1 thread (per core), on 2 threads (GIL release: ~2x when the kernel
releases it) and on 2 processes (the 2-core ceiling), medians over alternating rounds,
and ratios to PIL (decode) or PIL torchvision-style (decode + crop).
No pipeline, no tar, no batching: this is the ceiling a loader can approach.

    nice python tools/bench_kernels.py --n 300 --rounds 5

``--fresh`` compares a few decode + RandomResizedCrop + flip kernels (the native crop decoder
and its flags against the fused simplejpeg kernel) in CPU ms/img, each kernel in a fresh
process per round, rounds alternating; ``--large`` uses large photo-like images instead:

    nice python tools/bench_kernels.py --fresh --n 300 --rounds 5
    nice python tools/bench_kernels.py --fresh --large --n 60 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from blobs import load_items, save_items  # tools/, beside this script

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

#: the --fresh kernels: name -> (decoder, build_image_fn options, native flags)
FRESH_KERNELS = {
    "fused simplejpeg (today)": ("simplejpeg", {}, 0),
    "native crop": ("native", {}, 0),
    "native crop, all n/8 scales": ("native", {"scales": "all"}, 0),
    "native crop, fast IDCT": ("native", {}, 1),
    "native crop, fast upsampling": ("native", {}, 2),
}


def _fresh_child(name: str, data_path: str, size: int) -> None:
    """One round of one kernel in this (fresh) process: print CPU ms/img as JSON."""
    import json
    import time

    from shardpipe.devtools.bench.kernels import train_transform
    from shardpipe.image.fused import build_image_fn

    decoder, options, flags = FRESH_KERNELS[name]
    if decoder == "native":
        from shardpipe.image.decoders.native import NativeDecoder

        dec: object = NativeDecoder(flags)
    else:
        dec = decoder
    fn = build_image_fn(dec, train_transform(size), **options)  # type: ignore[arg-type]
    items = load_items(data_path)
    run_kernel(fn, items[:5], 1)  # warm up: imports, first allocations
    t0 = time.thread_time()
    run_kernel(fn, items, 1)
    print(json.dumps({"ms": (time.thread_time() - t0) * 1000 / len(items)}))


def large_photo_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` large photo-like JPEGs (2000-3000 px long side, camera aspect, quality 88-92)."""
    import io

    from shardpipe.devtools.synth import jpeg_quality, make_image

    out = []
    for i in range(n):
        r = np.random.default_rng([seed, i, 99])
        long = int(r.integers(2000, 3001))
        short = round(long / r.uniform(1.25, 1.5))
        size = (short, long) if r.random() < 0.2 else (long, short)
        buf = io.BytesIO()
        make_image(i, seed, size=size).save(buf, "JPEG", quality=jpeg_quality(i, seed))
        out.append(buf.getvalue())
    return out


def fresh_main(args: argparse.Namespace) -> None:
    import json
    import subprocess
    import tempfile

    names = [k for k in FRESH_KERNELS if "native" not in FRESH_KERNELS[k][0] or "native" in available_decoders()]
    print(f"generating {args.n} {'large ' if args.large else ''}photo-like JPEGs ...", file=sys.stderr)
    items = large_photo_jpegs(args.n) if args.large else photo_jpegs(args.n, workers=min(2, os.cpu_count() or 1))
    mean_kb = sum(map(len, items)) / len(items) / 1000
    print(f"{len(items)} JPEGs, mean {mean_kb:.0f} KB; each kernel in a fresh process per round, {args.rounds} rounds")
    results: dict[str, list[float]] = {k: [] for k in names}
    load = OtherLoad()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "items.bin")
        save_items(items, path)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, "--data", path, "--size", str(args.size)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1])["ms"])
    other = load.stop()
    ref = median(results[names[0]])
    rows = [[k, median(v), min(v), max(v), 1000 / median(v), ref / median(v)] for k, v in results.items()]
    print(format_table(["kernel (decode + RRC(224) + flip)", "CPU ms/img", "min", "max", "img/CPU-s", "x today"], rows))
    if other is not None:
        print(f"\nother processes used {100 * other:.0f}% of the machine's CPU time during the run")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="generated JPEGs (default 300)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--processes", type=int, default=2, help="also run on this many processes (0: skip)")
    ap.add_argument("--only", choices=["decode", "train", "all"], default="all")
    ap.add_argument("--fresh", action="store_true", help="native vs fused simplejpeg, fresh process per round")
    ap.add_argument("--large", action="store_true", help="with --fresh: large photo-like images")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _fresh_child(args.child, args.data, args.size)
    if args.fresh:
        return fresh_main(args)

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
