"""Benchmark ``shardpipe write``: images/s for a byte copy (``--no-restart-intervals``), the
default (JPEGs given restart intervals) and ``--presize`` with 1 and 2 workers, and the
shards' size.

    python tools/bench_write.py [-n 1000] [--data bench-data/write-src] [--repeats 3] [--presize 256]

Generates ``n`` photo-like JPEGs once (an ImageFolder tree, reused on later runs), then
writes them into shards with each configuration, alternating configurations within each
repeat, and prints the median images/s, MB/s of input read, CPU time per image
(this process plus its worker processes) and the shards' MB, side by side with a
"raw copy" baseline: read every file and append it to one file, then fsync, which is what
the disk and page cache allow with no tar, hashing or Python per-image work.
Input files are read from the page cache after the first repeat (as in any re-run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from shardpipe.devtools.synth import write_image_folder  # noqa: E402
from shardpipe.write.job import write_shards  # noqa: E402


def ensure_data(root: Path, n: int) -> list[Path]:
    files = sorted(root.rglob("*.jpg")) if root.is_dir() else []
    if len(files) != n:
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        write_image_folder(root, n, num_classes=10, workers=os.cpu_count() or 1)
        print(f"generated {n} images in {time.perf_counter() - t0:.1f} s into {root}")
        files = sorted(root.rglob("*.jpg"))
    return files


def raw_copy(files: list[Path], out_dir: Path) -> float:
    """Seconds to read every file and write them into one file, fsync'd."""
    t0 = time.perf_counter()
    with open(out_dir / "raw.bin", "wb") as f:
        for p in files:
            with open(p, "rb") as src:
                f.write(src.read())
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="images (default 1000)")
    parser.add_argument("--data", type=Path, default=Path("bench-data/write-src"), help="where the images live")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder for shards (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presize", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--maxcount", type=int, default=250)
    args = parser.parse_args(argv)

    files = ensure_data(args.data, args.n)
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    configs = [("raw copy (disk baseline)", None, 1, False)]
    configs += [("copy (no restart intervals)", None, w, False) for w in args.workers]
    configs += [("restart intervals (default)", None, w, True) for w in args.workers]
    configs += [(f"presize {args.presize}", args.presize, w, True) for w in args.workers]
    times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    out_mb: dict[int, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench-write-", dir=args.out))
    try:
        for _ in range(args.repeats):
            for i, (name, presize, workers, restart) in enumerate(configs):
                out = scratch / f"c{i}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                c0 = os.times()
                if presize is None and name.startswith("raw"):
                    times[i].append(raw_copy(files, out))
                else:
                    s = write_shards(
                        args.data, str(out / "train-%06d.tar"), maxcount=args.maxcount,
                        workers=workers, presize=presize, restart_intervals=restart,
                    )  # fmt: skip
                    assert s.written == len(files), s.format()
                    times[i].append(s.seconds)
                    out_mb[i] = s.bytes / 1e6
                c1 = os.times()  # this process and its (joined) worker processes
                cpu[i].append(sum(c1[:4]) - sum(c0[:4]))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{len(files)} images, {total_mb:.0f} MB, median of {args.repeats} runs, {os.cpu_count()} CPUs")
    print(
        f"{'configuration':<28} {'workers':>7} {'images/s':>9} {'MB/s in':>8} {'CPU ms/img':>10} "
        f"{'vs raw copy':>11} {'shards MB':>9}"
    )
    raw = statistics.median(times[0])
    for i, (name, _, workers, _restart) in enumerate(configs):
        t = statistics.median(times[i])
        ms = statistics.median(cpu[i]) / len(files) * 1000
        size = f"{out_mb[i]:>9.1f}" if i in out_mb else f"{'':>9}"
        print(
            f"{name:<28} {workers:>7} {len(files) / t:>9.0f} {total_mb / t:>8.0f} {ms:>10.2f} {raw / t:>10.2f}x {size}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
