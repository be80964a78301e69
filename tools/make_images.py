"""Generate the project's deterministic photo-like JPEG data set on disk.

    python tools/make_images.py OUT_DIR -n 2000 [--layout flat|imagefolder] [--seed 0] [--workers 2]

flat:        OUT_DIR/sample-NNNNNN.jpg + sample-NNNNNN.cls (webdataset-style files)
imagefolder: OUT_DIR/class_XX/img-NNNNNN.jpg
Prints the count, mean file size, mean dimensions and generation time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from PIL import Image  # noqa: E402

from shardpipe.devtools.synth import write_flat_folder, write_image_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("-n", type=int, default=2000, help="number of images (default 2000)")
    parser.add_argument("--layout", choices=["flat", "imagefolder"], default="flat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=10, help="number of classes (labels = index %% classes)")
    parser.add_argument("--workers", type=int, default=0, help="generator processes (0 = this process)")
    args = parser.parse_args(argv)

    write = write_flat_folder if args.layout == "flat" else write_image_folder
    start = time.perf_counter()
    files = write(args.out_dir, args.n, args.classes, args.seed, workers=args.workers)
    elapsed = time.perf_counter() - start

    total_bytes, width, height = 0, 0, 0
    for rel, _ in files:
        path = args.out_dir / rel
        total_bytes += path.stat().st_size
        with Image.open(path) as img:  # reads the header only
            width += img.width
            height += img.height
    n = max(len(files), 1)
    print(f"images     {len(files)} ({args.layout}, seed {args.seed}, {args.classes} classes) in {args.out_dir}")
    print(f"mean size  {total_bytes / n / 1024:.1f} KB   total {total_bytes / 2**20:.1f} MiB")
    print(f"mean dims  {width / n:.0f} x {height / n:.0f}")
    print(f"time       {elapsed:.1f} s   {len(files) / max(elapsed, 1e-9):.1f} images/s   workers {args.workers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
