#!/usr/bin/env python
"""Crop quality vs PIL: mean absolute difference of the native crop kernel's output from PIL's
(decode whole, crop, antialiased bilinear resize), grouped by the DCT scale each variant picks,
for DCT-scale margins, bilinear resamplers (cv2.resize INTER_LINEAR, its exact variant,
cv2.warpAffine) and prefilters (``exact``: taps with exactly the variance the triangle needs,
the default; ``sampled-gaussian``: the Gaussian sampled at whole pixels it replaced); and their
CPU cost. ``--resize-rounds`` also times the resize alone (the very calls the kernel makes,
replayed per prefilter, rounds alternating).

    nice python tools/bench_quality.py --n 40 --large 20 --margins 1 1.5 2
    nice python tools/bench_quality.py --n 40 --large 12 --margins 1.5 --resamplers warpAffine --resize-rounds 5
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))


def main(argv: list[str] | None = None) -> None:
    from bench_kernels import large_photo_jpegs
    from PIL import Image

    from shardpipe.augment import resample
    from shardpipe.augment.geometry import random_resized_crop_box
    from shardpipe.devtools.bench import photo_jpegs
    from shardpipe.image.decoders.base import POWER_OF_TWO_SCALES, pick_scale
    from shardpipe.image.decoders.jpeg import read_header
    from shardpipe.image.decoders.native import NativeDecoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="ImageNet-like photo JPEGs")
    ap.add_argument("--large", type=int, default=20, help="2000-3000 px photo JPEGs (small DCT scales)")
    ap.add_argument("--boxes", type=int, default=4, help="RandomResizedCrop boxes per image")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--margins", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--resamplers", nargs="+", default=list(RESAMPLERS), choices=list(RESAMPLERS))
    ap.add_argument("--prefilters", nargs="+", default=list(PREFILTERS), choices=list(PREFILTERS))
    ap.add_argument(
        "--resize-rounds", type=int, default=0, help="time the resize alone, this many rounds per prefilter"
    )
    args = ap.parse_args(argv)
    print(f"load average: {os.getloadavg()}")
    items = [d for d in photo_jpegs(args.n) + large_photo_jpegs(args.large) if read_header(d).turbo_decodable]
    rng = np.random.default_rng(0)
    jobs = []
    for data in items:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        for _ in range(args.boxes):
            t, left, h, w = random_resized_crop_box(img.height, img.width, rng)
            ref = np.asarray(img.resize((args.size, args.size), Image.BILINEAR, box=(left, t, left + w, t + h)))
            jobs.append((data, (t, left, h, w), ref))
    print(f"{len(items)} images, {len(jobs)} boxes; grouped by the DCT scale each margin picks")
    cv2, warp, exact = resample.cv2, resample._bilinear, resample._kernel
    linear = {
        "INTER_LINEAR": lambda r, h, w: cv2.resize(r, (w, h), interpolation=cv2.INTER_LINEAR),
        "LINEAR_EXACT": lambda r, h, w: cv2.resize(r, (w, h), interpolation=cv2.INTER_LINEAR_EXACT),
        "warpAffine": warp,
    }
    kernels = {"exact": exact, "sampled-gaussian": sampled_gaussian_kernel}
    for margin, lname, pname in [(m, r, p) for m in args.margins for r in args.resamplers for p in args.prefilters]:
        resample._bilinear, resample._kernel = linear[lname], kernels[pname]
        dec = NativeDecoder(scale_margin=margin)
        per_scale: dict[str, list[float]] = defaultdict(list)
        bias, cpu = [], 0.0
        for data, box, ref in jobs:
            num, den = pick_scale(int(box[3]), int(box[2]), args.size, args.size, POWER_OF_TWO_SCALES, margin)
            scale = f"{num}/{den}"
            t0 = time.thread_time()
            out = dec.decode_crop(data, box, (args.size, args.size))
            cpu += time.thread_time() - t0
            diff = out.astype(np.int16) - ref
            per_scale[scale].append(float(np.abs(diff).mean()))
            bias.append(float(diff.mean()))
        allv = [v for vs in per_scale.values() for v in vs]
        cells = "  ".join(f"{s}: {np.mean(v):.2f} (max {max(v):.2f}, n={len(v)})" for s, v in sorted(per_scale.items()))
        print(
            f"margin {margin:.2f} {lname:12s} {pname:16s} mean |diff| {np.mean(allv):.3f}  max {max(allv):.2f}  "
            f"mean signed {np.mean(bias):+.3f}  {1000 * cpu / len(jobs):.2f} CPU ms/box | {cells}"
        )
    resample._bilinear, resample._kernel = warp, exact
    if args.resize_rounds:
        time_resize(jobs, args.size, max(args.margins), {p: kernels[p] for p in args.prefilters}, args.resize_rounds)


#: names of the bilinear resamplers compared (see ``main``)
RESAMPLERS = ("INTER_LINEAR", "LINEAR_EXACT", "warpAffine")
PREFILTERS = ("exact", "sampled-gaussian")
_SAMPLED: dict[int, np.ndarray] = {}


def sampled_gaussian_kernel(ratio: float, block: int = 1) -> np.ndarray:
    """The prefilter before issue 23's fix: a Gaussian of the right variance sampled at whole
    pixels and cut to 3 or 5 taps (whose own variance then falls short); cached like the library's."""
    key = int(ratio * 100) * 64 + block
    if key in _SAMPLED:
        return _SAMPLED[key]
    r = key // 64 / 100.0
    var = max(0.0, (r * r / 6.0 - (block * block - 1) / 12.0) / (block * block) - 1.0 / 6.0)
    x = np.arange(3 if var <= 0.5 else 5, dtype=np.float64)
    x -= len(x) // 2
    w = np.exp(-0.5 * x * x / var) if var > 0 else (x == 0).astype(np.float64)
    k = _SAMPLED[key] = (w / w.sum()).astype(np.float32)
    return k


def time_resize(jobs: list, size: int, margin: float, kernels: dict, rounds: int) -> None:
    """CPU ms per box of ``resized_crop`` alone, on the regions the native kernel decodes,
    each prefilter in turn per round (kernel caches warmed first); medians over rounds."""
    from shardpipe.augment import resample
    from shardpipe.image.decoders import native

    calls = []
    real = native.resized_crop
    native.resized_crop = lambda *a: calls.append(a) or real(*a)
    try:
        dec = native.NativeDecoder(scale_margin=margin)
        for data, box, _ in jobs:
            dec.decode_crop(data, box, (size, size))
    finally:
        native.resized_crop = real
    times: dict[str, list[float]] = defaultdict(list)
    for kernel in kernels.values():  # warm each kernel cache
        resample._kernel = kernel
        for a in calls:
            resample.resized_crop(*a)
    for _ in range(rounds):
        for name, kernel in kernels.items():
            resample._kernel = kernel
            t0 = time.thread_time()
            for a in calls:
                resample.resized_crop(*a)
            times[name].append(1000 * (time.thread_time() - t0) / len(calls))
    resample._kernel = kernels.get("exact", resample._kernel)
    for name, ts in times.items():
        print(f"resize alone, {name:16s}: {np.median(ts):.4f} CPU ms/box (rounds {min(ts):.4f}-{max(ts):.4f})")


if __name__ == "__main__":
    main()
