#!/usr/bin/env python
"""Crop quality vs PIL: mean absolute difference of the native crop kernel's output from PIL's
(decode whole, crop, antialiased bilinear resize), grouped by the DCT scale each variant picks,
for DCT-scale margins and bilinear resamplers (today's cv2.resize INTER_LINEAR, its exact
variant, cv2.warpAffine); and their CPU cost.

    nice python tools/bench_quality.py --n 40 --large 20 --margins 1 1.5 2
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
    cv2, warp = resample.cv2, resample._bilinear
    linear = {
        "resize INTER_LINEAR": lambda r, h, w: cv2.resize(r, (w, h), interpolation=cv2.INTER_LINEAR),
        "resize LINEAR_EXACT": lambda r, h, w: cv2.resize(r, (w, h), interpolation=cv2.INTER_LINEAR_EXACT),
        "warpAffine": warp,
    }
    for margin in args.margins:
        for lname, fn in linear.items():
            resample._bilinear = fn
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
            cells = "  ".join(
                f"{s}: {np.mean(v):.2f} (max {max(v):.2f}, n={len(v)})" for s, v in sorted(per_scale.items())
            )
            print(
                f"margin {margin:.2f} {lname:18s} mean |diff| {np.mean(allv):.3f}  max {max(allv):.2f}  "
                f"mean signed {np.mean(bias):+.3f}  {1000 * cpu / len(jobs):.2f} CPU ms/box | {cells}"
            )


if __name__ == "__main__":
    main()
