#!/usr/bin/env python
"""Fuzz the native crop decoder with mutated JPEGs (bit flips, truncations, header fields).

Every case goes through the raw C call (libjpeg's verdict) and through the backend's
crop decode (native, or the PIL fallback); the only acceptable failure is ``DecodeError``.
Chunks run in child processes, so a crash (a signal) is reported with its chunk's seed
instead of ending the run.

    python tools/fuzz_native.py --n 12000 --chunk 1000
    python tools/fuzz_native.py --restart --n 12000   # restart-marked seeds, damaged RST/DRI too
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _chunk(seed: int, n: int, max_pixels: int, restart: bool, queue: mp.Queue) -> None:
    import numpy as np

    from shardpipe.devtools.jpegfuzz import check_decoder, mutants, restart_mutants
    from shardpipe.devtools.synth import make_jpeg
    from shardpipe.image.decoders import get_decoder, registry

    registry.MAX_PIXELS = max_pixels  # mutated sizes stay small enough to decode quickly
    # seeds: baseline 4:2:0 (0, 1), large (3), grey (7), CMYK (17), progressive (27), portrait-ish (48)
    seeds = [make_jpeg(i) for i in (0, 1, 3, 7, 17, 27, 48)]
    cases = mutants(seeds, n, np.random.default_rng(seed))
    if restart:  # the restart-interval crop path: marked seeds (CMYK/progressive stay as they are)
        from shardpipe.image.restart import add_restart_intervals

        seeds = [add_restart_intervals(s) for s in seeds]
        cases = restart_mutants(seeds, n, np.random.default_rng(seed))
    bugs: list[bytes] = []
    counts = check_decoder(get_decoder("native"), cases, np.random.default_rng(seed + 10**6), bugs)
    queue.put((seed, dict(counts), bugs[:3]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12000, help="mutated JPEGs in all (default 12000)")
    ap.add_argument("--chunk", type=int, default=1000, help="cases per child process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-pixels", type=int, default=4_000_000)
    ap.add_argument("--restart", action="store_true", help="restart-marked seeds; damage their RST/DRI markers too")
    ap.add_argument("--save-bugs", default="", help="folder for the inputs that misbehaved")
    args = ap.parse_args(argv)

    ctx = mp.get_context("fork")
    total: Counter = Counter()
    crashes = []
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, args.n, args.chunk)):
        seed = args.seed * 100003 + i
        queue: mp.Queue = ctx.Queue()
        p = ctx.Process(
            target=_chunk, args=(seed, min(args.chunk, args.n - start), args.max_pixels, args.restart, queue)
        )
        p.start()
        result = None
        while p.is_alive() or not queue.empty():
            try:
                result = queue.get(timeout=1)
                break
            except Exception:  # noqa: BLE001 - queue.Empty: keep waiting while the child lives
                continue
        p.join()
        if result is None or p.exitcode != 0:
            crashes.append((seed, p.exitcode))
            print(f"chunk seed {seed}: child died with exit code {p.exitcode}", file=sys.stderr)
            continue
        _, counts, bugs = result
        total.update(counts)
        if args.save_bugs:
            os.makedirs(args.save_bugs, exist_ok=True)
            for j, data in enumerate(bugs):
                with open(os.path.join(args.save_bugs, f"seed{seed}-{j}.jpg"), "wb") as f:
                    f.write(data)
        print(f"chunk {i} (seed {seed}): {counts}", file=sys.stderr)
    n_cases = total["decoded"] + total["DecodeError"] + sum(v for k, v in total.items() if k.startswith("BUG crop"))
    bug_keys = [k for k in total if k.startswith("BUG")]
    print(f"{args.n} mutated JPEGs in {time.perf_counter() - t0:.0f} s; crop decodes accounted: {n_cases}")
    for k in sorted(total):
        print(f"  {k}: {total[k]}")
    print(f"crashes: {len(crashes)}; other exceptions: {sum(total[k] for k in bug_keys)}")
    return 1 if crashes or bug_keys else 0


if __name__ == "__main__":
    sys.exit(main())
