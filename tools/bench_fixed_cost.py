#!/usr/bin/env python
"""Split each reference row of ``shardpipe bench --peers`` into a fixed cost per run and a cost per image.

The pipeline target of issue 23 compares CPU ms/img over a run of a few thousand images, so a
cost paid once per run (workers started, fresh shared-memory buffers faulted in, the first
shuffle window) weighs on the ratio as much as one paid on every image. This tool measures
each row twice, on all the shards and on the first quarter of them (each in a fresh process,
rounds rotating the order, exactly as ``bench --peers`` measures them: ``measure`` in
``shardpipe.devtools.bench.loaders``), and solves ``cpu = fixed + n * marginal`` from the
medians: the marginal cost is what a long epoch pays per image, the fixed cost what each run
(each epoch, without persistent workers) pays once.

    nice python tools/bench_fixed_cost.py bench-data/n2000-seed0/full/manifest.json --rounds 6
    nice python tools/bench_fixed_cost.py MANIFEST --rows shardpipe kernel   # some rows only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shardpipe.devtools.bench.peers import FLOOR, KERNEL, PEERS, SHARDPIPE  # noqa: E402

#: the rows, configured as ``bench --peers`` configures them
ROWS = {
    short: next(p.config for p in PEERS if p.name == name)
    for short, name in (("shardpipe", SHARDPIPE), ("kernel", KERNEL), ("floor", FLOOR))
}


def quarter_manifest(manifest: str, folder: str) -> str:
    """A manifest of the first quarter of ``manifest``'s shards (at least one), written in ``folder`` beside
    symbolic links to those shards under their own names (the manifest's ``index`` is left out)."""
    with open(manifest) as f:
        doc = json.load(f)
    shards = doc["shards"][: max(1, len(doc["shards"]) // 4)]
    for shard in shards:
        os.symlink(
            os.path.join(os.path.dirname(os.path.abspath(manifest)), shard["name"]), os.path.join(folder, shard["name"])
        )
    doc.pop("index", None)
    doc["shards"] = shards
    doc["samples"] = sum(s["samples"] for s in shards)
    if "bytes" in doc:
        doc["bytes"] = sum(s.get("bytes", 0) for s in shards)
    out = os.path.join(folder, "manifest.json")
    with open(out, "w") as f:
        json.dump(doc, f)
    return out


def split(full: tuple[float, int], part: tuple[float, int]) -> tuple[float, float]:
    """(fixed CPU seconds a run, marginal CPU seconds an image) from two runs' (CPU seconds, images)."""
    (cpu_full, n_full), (cpu_part, n_part) = full, part
    if n_full == n_part:
        raise ValueError("the two runs must differ in size")
    marginal = (cpu_full - cpu_part) / (n_full - n_part)
    return cpu_part - marginal * n_part, marginal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--buffer", type=int, default=1000)
    ap.add_argument("--nice", type=int, default=0)
    args = ap.parse_args()

    from shardpipe.devtools.bench.loaders import compile_bytecode, run_child

    compile_bytecode()
    print(f"load average before: {os.getloadavg()}")
    common = {"workers": args.workers, "batch": args.batch, "size": 224, "buffer": args.buffer, "decoder": "auto"}
    runs: dict[tuple[str, str], list[tuple[float, int]]] = {}  # (row, size) -> (CPU seconds, images) a run
    with tempfile.TemporaryDirectory() as folder:
        sizes = {"all": args.manifest, "quarter": quarter_manifest(args.manifest, folder)}
        for r in range(args.rounds):
            names = args.rows[r % len(args.rows) :] + args.rows[: r % len(args.rows)]
            for name in names:
                for size, manifest in sizes.items():
                    cfg = {**common, **ROWS[name], "round": r, "data": {"full": manifest}}
                    out = run_child(cfg, args.nice)
                    n = out["images"]
                    runs.setdefault((name, size), []).append((out["cpu_per_image"] * n, n))
    print(f"load average after: {os.getloadavg()}")
    print(f"{'row':10s} {'all ms/img':>10s} {'quarter':>8s} {'fixed ms/run':>13s} {'marginal ms/img':>16s}")
    marginals = {}
    for name in args.rows:
        full = [c for c, _ in runs[(name, "all")]]
        part = [c for c, _ in runs[(name, "quarter")]]
        n_full, n_part = runs[(name, "all")][0][1], runs[(name, "quarter")][0][1]
        fixed, marginal = split((statistics.median(full), n_full), (statistics.median(part), n_part))
        marginals[name] = marginal
        print(
            f"{name:10s} {1000 * statistics.median(full) / n_full:10.3f} {1000 * statistics.median(part) / n_part:8.3f} "
            f"{1000 * fixed:13.0f} {1000 * marginal:16.3f}"
        )
    for a, b in (("kernel", "floor"), ("kernel", "shardpipe"), ("floor", "shardpipe")):
        if a in marginals and b in marginals:
            print(f"marginal: {a} / {b} = {marginals[a] / marginals[b]:.3f}")


if __name__ == "__main__":
    main()
