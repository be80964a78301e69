#!/usr/bin/env python
"""A/B of two variants of this checkout inside one process: small effects the VM's drift would hide.

Between fresh processes this machine's speed moves 5-10% from round to round, so a 1-2% change
cannot be seen by comparing processes (``bench_pipeline_gap.py --versus``). Here one process
alternates the variants pass by pass over the same shards: variant A is the code as it is,
variant B the same code with each ``--swap TARGET REPLACEMENT`` applied (``module:attribute``
names; ``Class.attribute`` works too). With ``--workers`` > 0 every pass starts fresh DataLoader
workers, which fork from this process and so run the variant it switched to; CPU counts the
whole process tree. Prints the medians and the median of the per-pair differences (B - A).

    nice python tools/bench_ab.py SHARDS/manifest.json --pairs 10 \\
        --swap shardpipe.format.tar.reader:header_sum builtins:sum   # the tar checksum, as before part 8
    nice python tools/bench_ab.py SHARDS/manifest.json --workers 0 --swap ...   # in-process pipeline

A swapped function must be looked up at call time (a module global or a method), not bound
into other objects when they are made.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_pipeline_gap: the same pipeline


def resolve(name: str) -> tuple[Any, str]:
    """``"pkg.module:Class.attr"`` -> (the object holding the attribute, the attribute's name)."""
    module, sep, path = name.partition(":")
    if not sep or not path:
        raise SystemExit(f"--swap names look like module:attribute, not {name!r}")
    owner: Any = importlib.import_module(module)
    *parents, attr = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    if not hasattr(owner, attr):
        raise SystemExit(f"{name}: {owner!r} has no attribute {attr!r}")
    return owner, attr


def lookup(name: str) -> Any:
    owner, attr = resolve(name)
    return getattr(owner, attr)


@contextmanager
def swapped(swaps: list[tuple[str, str]]) -> Iterator[None]:
    """Apply ``(target, replacement)`` swaps, restoring the originals afterwards."""
    missing = object()  # an attribute the owner inherits: deleted again afterwards, not set on it
    saved = []
    try:
        for target, replacement in swaps:
            owner, attr = resolve(target)
            saved.append((owner, attr, vars(owner).get(attr, missing)))
            setattr(owner, attr, lookup(replacement))
        yield
    finally:
        for owner, attr, value in reversed(saved):
            if value is missing:
                delattr(owner, attr)
            else:
                setattr(owner, attr, value)


def one_pass(dataset: Any, loader: Any) -> tuple[float, int]:
    """CPU seconds of the process tree for one epoch, and the images it yielded."""
    from shardpipe.devtools.bench.proctree import tree_cpu_seconds

    c0 = tree_cpu_seconds()
    n = sum(len(batch["jpg"]) for batch in (loader if loader is not None else dataset))
    return tree_cpu_seconds() - c0, n


def run_ab(manifest: str, swaps: list[tuple[str, str]], pairs: int, workers: int, batch: int, buffer: int) -> dict:
    """Per-pass CPU ms/img of A and B, alternating (ABBA...); the first pass of each is a warm-up."""
    from bench_pipeline_gap import _dataset

    from shardpipe.loader import ShardLoader

    ds = _dataset(manifest, "+batch", buffer, batch)  # the pipeline bench_pipeline_gap's loader rows measure
    loader = ShardLoader(ds, num_workers=workers) if workers else None
    with swapped(swaps):
        one_pass(ds, loader)  # B's first pass: imports, the decoder's first calls
    one_pass(ds, loader)
    got: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(pairs):
        for variant in ("A", "B") if i % 2 == 0 else ("B", "A"):
            with swapped(swaps if variant == "B" else []):
                cpu, n = one_pass(ds, loader)
            got[variant].append(cpu * 1000 / n)
    return got


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="the shards' manifest.json (e.g. bench-data/n2000-seed0/full/manifest.json)")
    ap.add_argument(
        "--swap", nargs=2, action="append", metavar=("TARGET", "REPLACEMENT"), required=True,
        help="variant B: set module:attribute TARGET to the object REPLACEMENT names (repeatable)",
    )  # fmt: skip
    ap.add_argument("--pairs", type=int, default=10, help="pass pairs measured (after one warm-up pass each)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers; 0: the pipeline in this process")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--buffer", type=int, default=1000, help="shuffle window")
    args = ap.parse_args(argv)
    swaps = [tuple(s) for s in args.swap]
    for target, replacement in swaps:  # fail before any pass
        resolve(target), lookup(replacement)
    print(f"load average before: {os.getloadavg()}")
    t0 = time.perf_counter()
    got = run_ab(args.manifest, swaps, args.pairs, args.workers, args.batch, args.buffer)  # type: ignore[arg-type]
    where = f"{args.workers} workers, fresh each pass" if args.workers else "in-process"
    print(f"B = A with {', '.join(f'{t} -> {r}' for t, r in swaps)}; {where}; {args.pairs} pass pairs")
    for variant in ("A", "B"):
        ms = got[variant]
        print(f"{variant}  CPU ms/img median {statistics.median(ms):.4f}  range {min(ms):.3f}-{max(ms):.3f}")
    diffs = [b - a for a, b in zip(got["A"], got["B"])]
    print(f"B - A, paired by pass pair: median {statistics.median(diffs):+.4f} CPU ms/img  "
          f"({' '.join(f'{d:+.3f}' for d in diffs)})")  # fmt: skip
    print(f"load average after: {os.getloadavg()}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
