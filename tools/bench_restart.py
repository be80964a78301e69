#!/usr/bin/env python
"""Restart intervals: the crop kernel on restart-marked vs plain JPEGs, and the files' growth.

Kernel = decode + RandomResizedCrop(224) + flip on one thread, CPU ms/img, each kernel in a
fresh process per round (rounds alternate the order); the same images, boxes and seeds for
every kernel. Also reports the transcode's size change and cost, and the load average.

    nice python tools/bench_restart.py --n 300 --rounds 5
    nice python tools/bench_restart.py --large --n 40 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from blobs import load_items, save_items  # tools/, beside this script

if "--child" not in sys.argv or "main" not in sys.argv:  # the baseline child imports the baseline's shardpipe
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


#: name -> (which files, kernel)
KERNELS = {
    "native crop, plain (main checkout: today)": ("plain", "main"),
    "native crop, restart-marked, today's scale + resize": ("marked", "intervals-only"),
    "native crop, restart-marked (new defaults)": ("marked", "native"),
    "native crop, plain (new defaults)": ("plain", "native"),
    "PIL decode + crop + resize, plain": ("plain", "pil"),
}


def _child(kernel: str, path: str, size: int) -> None:
    from shardpipe.devtools.bench import pil_train_kernel, run_kernel
    from shardpipe.devtools.bench.kernels import train_transform
    from shardpipe.image.decoders.native import NativeDecoder
    from shardpipe.image.fused import build_image_fn

    if kernel == "pil":
        fn = pil_train_kernel(size)
    elif kernel == "native":
        fn = build_image_fn(NativeDecoder(), train_transform(size))
    elif kernel == "main":  # the baseline checkout's shardpipe (PYTHONPATH), its defaults
        fn = build_image_fn(NativeDecoder(), train_transform(size))
    else:  # restart intervals alone: today's scale choice and resize
        from shardpipe.augment import resample

        cv2 = resample.cv2
        resample._bilinear = lambda r, h, w: cv2.resize(r, (w, h), interpolation=cv2.INTER_LINEAR)
        fn = build_image_fn(NativeDecoder(scale_margin=1.0), train_transform(size))
    items = load_items(path)
    run_kernel(fn, items[:5], 1)
    t0 = time.thread_time()
    run_kernel(fn, items, 1)
    import shardpipe

    print(json.dumps({"ms": (time.thread_time() - t0) * 1000 / len(items), "from": shardpipe.__file__}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--per-row", type=int, default=None, help="intervals per MCU row (default: the library's)")
    ap.add_argument("--large", action="store_true", help="2000-3000 px photo-like JPEGs")
    ap.add_argument(
        "--baseline",
        help="a checkout of the code before restart intervals, measured as 'today' (without it that row is skipped)",
    )
    ap.add_argument("--child", nargs=2, metavar=("KERNEL", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.size)
        return
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_kernels import large_photo_jpegs

    from shardpipe.devtools.bench import OtherLoad, format_table, median, photo_jpegs
    from shardpipe.image.restart import DEFAULT_PER_ROW, add_restart_intervals, restart_layout

    per_row = args.per_row or DEFAULT_PER_ROW
    print(f"load average before: {os.getloadavg()}")
    plain = large_photo_jpegs(args.n) if args.large else photo_jpegs(args.n, workers=min(2, os.cpu_count() or 1))
    t0 = time.process_time()
    marked = [add_restart_intervals(d, per_row) for d in plain]
    t_mark = (time.process_time() - t0) * 1000 / len(plain)
    n_marked = sum(restart_layout(d) is not None for d in marked)
    growth = sum(map(len, marked)) / sum(map(len, plain)) - 1
    print(
        f"{len(plain)} JPEGs, mean {sum(map(len, plain)) / len(plain) / 1000:.0f} KB; {n_marked} restart-marked "
        f"({per_row} per MCU row at most), size change {100 * growth:+.2f}%, transcode {t_mark:.2f} CPU ms/img"
    )
    results: dict[str, list[float]] = {k: [] for k in KERNELS}
    load = OtherLoad()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"plain": os.path.join(tmp, "plain.bin"), "marked": os.path.join(tmp, "marked.bin")}
        save_items(plain, paths["plain"])
        save_items(marked, paths["marked"])
        names = [k for k in KERNELS if args.baseline or KERNELS[k][1] != "main"]
        if not args.baseline:
            print("the 'today' row is skipped: give --baseline DIR (a checkout of the code before this change)")
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                files, kernel = KERNELS[name]
                cmd = [sys.executable, __file__, "--child", kernel, paths[files], "--size", str(args.size)]
                env = dict(os.environ)
                if kernel == "main":
                    env["PYTHONPATH"] = args.baseline
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                got = json.loads(out.strip().splitlines()[-1])
                if kernel == "main" and not got["from"].startswith(os.path.abspath(args.baseline)):
                    raise SystemExit(f"the baseline child imported {got['from']}, not {args.baseline}'s shardpipe")
                results[name].append(got["ms"])
    other = load.stop()
    ref = median(results[names[0]])
    rows = [[k, median(v), min(v), max(v), 1000 / median(v), ref / median(v)] for k in names for v in [results[k]]]
    ratio = "x today" if args.baseline else "x first row"
    print(format_table(["kernel (decode + RRC(224) + flip)", "CPU ms/img", "min", "max", "img/CPU-s", ratio], rows))
    print(f"load average after: {os.getloadavg()}")
    if other is not None:
        print(f"other processes used {100 * other:.0f}% of the machine's CPU time during the run")


if __name__ == "__main__":
    main()
