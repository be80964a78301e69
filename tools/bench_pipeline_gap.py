#!/usr/bin/env python
"""Where the pipeline spends CPU beyond its kernel: a per-stage breakdown by ablation.

Each variant runs in a fresh process per round (rounds rotate the order) over the same
shards and reports CPU ms/img (process CPU time; with workers, the whole process tree:
the main process, live workers read from /proc, reaped ones from rusage):

- ``kernel``: decode + RandomResizedCrop(224) + flip on the shards' JPEGs held in memory,
  one thread (the per-image work and nothing else);
- ``floor``: what any pipeline of this shape costs at least, in-process: each JPEG read from its
  shard with one ``pread`` at an offset found beforehand, in a seeded random order, and put
  through the kernel into its row of one of three recycled batch arrays; no stages, no
  per-sample Python beyond the loop (the kernel's per-sample generator included);
- ``floor/loader``: the same loop in a plain ``DataLoader``'s workers
  (``shardpipe.devtools.bench.floor``: each takes every ``--workers``-th image and writes its
  batches into a few shared-memory tensors it made): what the pipeline would cost with no
  per-sample Python at all, worker start-up and hand-over included;
- ``untar``: read + untar + group samples, no decode (in-process, ``num_workers=0``);
- ``+shuffle``: the same through the shuffle buffer;
- ``+decode``: + the Decode stage (kernel + per-sample Python), samples out;
- ``+batch``: + collate into channels_last uint8 batches of 64 (``--nchw``: contiguous NCHW,
  the default layout): the whole pipeline in-process;
- ``loader``: the same pipeline in a ``ShardLoader`` with ``--workers`` worker processes
  (+ worker start-up, shared-memory hand-over, the main process), main process CPU beside it;
- ``loader/4``: the same on the first quarter of the shards: with ``loader``, it splits the
  loader's cost into a fixed part per run (start-up, first shuffle window, fresh shared-memory
  batches) and a marginal cost per image, the steady state of a long epoch;
- ``loader/steady``: ``loader`` with persistent workers, epochs 2 and 3 measured (the workers,
  their heaps and their buffer pools already made): what each epoch after the first costs a
  training run.

Differences between rows give each stage's cost. Also prints the load average.

    nice python tools/bench_pipeline_gap.py SHARDS/manifest.json --rounds 3
    nice python tools/bench_pipeline_gap.py --make /tmp/gap --n 2000   # write restart-marked shards first
    nice python tools/bench_pipeline_gap.py SHARDS/manifest.json --code /path/to/other/checkout
    nice python tools/bench_pipeline_gap.py SHARDS/manifest.json --versus /path/to/other/checkout  # side by side
    nice python tools/bench_pipeline_gap.py SHARDS/manifest.json --versus-copy  # decode into rows, or not

``--versus-copy`` is an ablation: the same code with the decode kept from writing into the batch's rows
(``Decode.writes_into`` off, so every image is copied into the batch as before), interleaved round by
round; both side-by-side modes also print the median of the paired per-round differences.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

#: the checkout a child measures: ``--code DIR`` (e.g. the code before a change), else this one
sys.path.insert(0, os.environ.get("BENCH_GAP_CODE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

VARIANTS = (
    "kernel",
    "floor",
    "floor/loader",
    "untar",
    "+shuffle",
    "+decode",
    "+batch",
    "loader",
    "loader/4",
    "loader/steady",
)
#: epochs a ``loader/steady`` child runs with persistent workers; all but the first are measured
STEADY_EPOCHS = 3


def _dataset(manifest: str, variant: str, buffer: int, batch: int, nchw: bool = False, decode: str = "rgb8"):  # noqa: ANN202
    from shardpipe.dataset import ShardDataset
    from shardpipe.devtools.bench.kernels import train_transform
    from shardpipe.devtools.bench.loaders import manifest_urls

    if variant == "loader/4":
        urls = manifest_urls(manifest)
        manifest = urls[: max(1, len(urls) // 4)]  # type: ignore[assignment]

    kw: dict = {"seed": 0, "shuffle": buffer if variant != "untar" else False}
    if variant in ("untar", "+shuffle"):
        kw["decode"] = None
    else:
        kw.update(transform=train_transform(224), decode=decode)
    if variant in ("+batch", "loader", "loader/4", "loader/steady") and batch:
        kw.update(batch_size=batch, channels_last=not nchw)
    return ShardDataset(manifest, **kw)


def _tree_minor_faults() -> int:
    """Minor page faults of this process, its reaped children and its live descendants (Linux).

    Here, not in shardpipe: ``--code``/``--versus`` import shardpipe from a checkout that may
    predate it.
    """
    import resource

    total = sum(resource.getrusage(w).ru_minflt for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    table: dict[int, tuple[int, int]] = {}  # pid -> (parent, faults of it and its reaped children)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(name)] = (int(fields[1]), int(fields[7]) + int(fields[8]))
    todo = [p for p, (parent, _) in table.items() if parent == os.getpid()]
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        todo.extend(p for p, (parent, _) in table.items() if parent == pid)
    return total


def _child(
    variant: str, manifest: str, buffer: int, batch: int, workers: int, nchw: bool = False, decode: str = "rgb8"
) -> dict:
    from shardpipe.devtools.bench.proctree import tree_cpu_seconds

    if variant == "kernel":
        from shardpipe.dataset import ShardDataset
        from shardpipe.devtools.bench import run_kernel, shardpipe_train_kernel

        items = [s["jpg"] for s in ShardDataset(manifest, decode=None)]
        fn = shardpipe_train_kernel("auto", 224)
        run_kernel(fn, items[:16], 1)
        t0 = time.process_time()
        run_kernel(fn, items, 1)
        return {"ms": (time.process_time() - t0) * 1000 / len(items)}
    if variant == "floor":
        return _floor(manifest, batch or 64)
    if variant == "floor/loader":
        return _floor_loader(manifest, batch or 64, workers)
    ds = _dataset(manifest, variant, buffer, batch, nchw, decode)
    if variant.startswith("loader"):
        from shardpipe.loader import ShardLoader

        steady = variant == "loader/steady"
        loader = ShardLoader(ds, num_workers=workers, persistent_workers=steady)
        if steady:  # the first epoch starts the workers and fills their buffer pools: not measured
            for _ in loader:
                pass
        m0, c0, f0 = time.process_time(), tree_cpu_seconds(), _tree_minor_faults()
        n = 0
        for _ in range(STEADY_EPOCHS - 1 if steady else 1):
            n += sum(len(b["jpg"]) if batch else 1 for b in loader)
        cpu, main = tree_cpu_seconds() - c0, time.process_time() - m0
        faults = _tree_minor_faults() - f0
        return {"ms": cpu * 1000 / n, "main_ms": main * 1000 / n, "cpu_s": cpu, "n": n, "faults": faults / n}
    t0 = time.process_time()
    n = 0
    for item in ds:
        n += len(item["jpg"]) if variant == "+batch" and batch else 1
    return {"ms": (time.process_time() - t0) * 1000 / n}


def _floor_loader(manifest: str, batch: int, workers: int) -> dict:
    """The ``floor/loader`` variant (see the module docstring): ``shardpipe.devtools.bench.floor``."""
    from shardpipe.devtools.bench.floor import floor_loader
    from shardpipe.devtools.bench.loaders import manifest_urls
    from shardpipe.devtools.bench.proctree import tree_cpu_seconds

    loader = floor_loader(manifest_urls(manifest), batch, 224, workers)  # the records are read here
    c0 = tree_cpu_seconds()
    n = sum(len(b["jpg"]) for b in loader)
    return {"ms": (tree_cpu_seconds() - c0) * 1000 / n, "n": n}


def _floor(manifest: str, batch: int) -> dict:
    """The ``floor`` variant (see the module docstring)."""
    import numpy as np

    from shardpipe.augment.base import SampleRngs
    from shardpipe.devtools.bench import shardpipe_train_kernel
    from shardpipe.devtools.bench.floor import jpeg_records
    from shardpipe.devtools.bench.loaders import manifest_urls

    paths = manifest_urls(manifest)
    fds = {path: os.open(path, os.O_RDONLY) for path in paths}
    records = [(fds[path], at, size, key) for path, at, size, key in jpeg_records(paths)]  # before the clock
    fn = shardpipe_train_kernel("auto", 224)
    rngs = SampleRngs()
    batches = [np.full((batch, 224, 224, 3), 1, np.uint8) for _ in range(3)]  # written: no first-touch faults
    order = np.random.default_rng(0).permutation(len(records))
    fd, at, size, key = records[0]
    fn(os.pread(fd, size, at), rngs(0, 0, key), batches[0][0])  # warm up
    t0 = time.process_time()
    for i, j in enumerate(order.tolist()):
        fd, at, size, key = records[j]
        fn(os.pread(fd, size, at), rngs(0, 0, key), batches[(i // batch) % 3][i % batch])
    ms = (time.process_time() - t0) * 1000 / len(records)
    for fd in fds.values():
        os.close(fd)
    return {"ms": ms, "n": len(records)}


def _make(root: str, n: int) -> str:
    """Restart-marked photo-like JPEG shards (what `shardpipe write` produces) under ``root``."""
    from shardpipe.devtools.synth import make_dataset
    from shardpipe.image.restart import add_restart_intervals
    from shardpipe.write.shard_writer import ShardWriter

    os.makedirs(root, exist_ok=True)
    with ShardWriter(os.path.join(root, "train-%06d.tar"), maxcount=max(1, min(250, n // 8))) as w:
        for key, data, label in make_dataset(n, 0, num_classes=100, workers=os.cpu_count() or 1):
            w.write({"__key__": key, "jpg": add_restart_intervals(data), "cls": label})
    return os.path.join(root, "manifest.json")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", nargs="?", help="the shards' manifest.json")
    ap.add_argument("--make", metavar="DIR", help="first write --n restart-marked photo-like JPEGs as shards in DIR")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--buffer", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64, help="0: no batching, each sample an item")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--nchw", action="store_true", help="contiguous NCHW batches (the default layout), not channels_last"
    )
    ap.add_argument(
        "--decode", default="rgb8", choices=["rgb8", "torchrgb8"], help="what samples hold: arrays or tensors"
    )
    ap.add_argument("--only", nargs="*", choices=VARIANTS)
    ap.add_argument("--code", help="measure the shardpipe of this checkout (e.g. the code before a change)")
    ap.add_argument("--versus", help="also run every variant on this checkout, interleaved round by round")
    ap.add_argument(
        "--versus-copy",
        action="store_true",
        help="also run every variant with the decode kept from writing into the batch rows (an ablation)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if os.environ.get("BENCH_GAP_COPY_ROWS"):  # the ablation: every image copied into its batch
            from shardpipe.stages.decode import Decode

            Decode.writes_into = property(lambda self: False)  # type: ignore[assignment,method-assign]
        print(
            json.dumps(_child(args.child, args.manifest, args.buffer, args.batch, args.workers, args.nchw, args.decode))
        )
        return
    manifest = _make(args.make, args.n) if args.make else args.manifest
    if not manifest:
        ap.error("give the shards' manifest.json or --make DIR")
    print(
        f"load average before: {os.getloadavg()}; code: {os.path.abspath(args.code or os.path.dirname(__file__) + '/..')}"
    )
    names = list(args.only or VARIANTS)
    codes = {"": args.code}
    if args.versus:
        codes[" (versus)"] = args.versus
    if args.versus_copy:
        codes[" (copy)"] = args.code
    runs = [(v, tag) for v in names for tag in codes]
    from shardpipe.devtools.bench.loaders import compile_bytecode

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    for code in {os.path.abspath(c or here) for c in codes.values()}:  # measured as installed
        compile_bytecode(os.path.join(code, "shardpipe"))
    got: dict[str, list[dict]] = {v + tag: [] for v, tag in runs}
    for r in range(args.rounds):
        for v, tag in runs[r % len(runs) :] + runs[: r % len(runs)]:
            cmd = [sys.executable, __file__, manifest, "--child", v, "--buffer", str(args.buffer)]
            cmd += ["--batch", str(args.batch), "--workers", str(args.workers), "--decode", args.decode]
            cmd += ["--nchw"] if args.nchw else []
            code = codes[tag]
            env = {**os.environ, "BENCH_GAP_CODE": os.path.abspath(code)} if code else dict(os.environ)
            if tag == " (copy)":
                env["BENCH_GAP_COPY_ROWS"] = "1"
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            got[v + tag].append(json.loads(out.strip().splitlines()[-1]))
    if len(codes) > 1:
        if args.versus:
            print(f"versus: {os.path.abspath(args.versus)}")
        for tag in codes:
            _report({v: got[v + tag] for v in names}, names, tag)
        for tag in list(codes)[1:]:
            for v in names:  # rounds alternate the order, so each round's pair ran side by side
                diffs = [a["ms"] - b["ms"] for a, b in zip(got[v], got[v + tag])]
                print(f"{v}: this minus{tag}, paired by round: median {statistics.median(diffs):+.3f} CPU ms/img")
    else:
        _report(got, names, "")
    print(f"load average after: {os.getloadavg()}")


def _report(got: dict[str, list[dict]], names: list[str], tag: str) -> None:
    """The table and the ratios of one checkout's runs."""
    med = {v: statistics.median(r["ms"] for r in got[v]) for v in names}
    prev = None
    print(f"{'variant' + tag:10s} {'CPU ms/img':>10s} {'range':>13s} {'step':>7s}")
    for v in names:
        ms = [r["ms"] for r in got[v]]
        alone = ("kernel", "floor", "floor/loader", "loader/4", "loader/steady")  # rows not built on the one before
        step = "" if prev is None or v in alone else f"{med[v] - med[prev]:+.3f}"
        extra = (
            f"  main process {statistics.median(r['main_ms'] for r in got[v]):.3f}"
            f"  page faults/img {statistics.median(r['faults'] for r in got[v]):.1f}"
            if "main_ms" in got[v][0]
            else ""
        )
        print(f"{v:10s} {med[v]:10.3f} {min(ms):6.3f}-{max(ms):6.3f} {step:>7s}{extra}")
        prev = v if v not in alone else prev
    if "kernel" in med and "loader" in med:
        print(f"kernel / loader = {med['kernel'] / med['loader']:.3f}")
    if "kernel" in med and "loader/steady" in med:
        print(
            f"kernel / loader in epochs 2-{STEADY_EPOCHS} (persistent workers) = {med['kernel'] / med['loader/steady']:.3f}"
        )
    for v in ("loader", "loader/steady"):
        if "kernel" in med and v in med:  # each round ran both close in time: steadier than a ratio of medians
            ratios = [k["ms"] / x["ms"] for k, x in zip(got["kernel"], got[v])]
            print(
                f"kernel / {v}, paired by round: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})"
            )
    if "loader" in med and "loader/4" in med:
        full, part = (statistics.median(r["cpu_s"] for r in got[v]) for v in ("loader", "loader/4"))
        n_full, n_part = got["loader"][0]["n"], got["loader/4"][0]["n"]
        if n_full <= n_part:
            raise SystemExit("loader/4 needs shards to split: the data has a single shard")
        marginal = (full - part) * 1000 / (n_full - n_part)
        fixed = full * 1000 - marginal * n_full
        print(f"loader: fixed {fixed:.0f} CPU ms per run + {marginal:.3f} CPU ms/img (from loader and loader/4)")
        if "kernel" in med:
            print(f"kernel / loader's marginal cost per image = {med['kernel'] / marginal:.3f}")
    if "kernel" in med and "+batch" in med:
        print(f"kernel / in-process pipeline = {med['kernel'] / med['+batch']:.3f}")
    if "kernel" in med and "floor" in med:
        print(f"kernel / floor (read + kernel into batch rows, no stages) = {med['kernel'] / med['floor']:.3f}")
    if "kernel" in med and "floor/loader" in med:
        print(
            f"kernel / floor/loader (no per-sample Python, in DataLoader workers) = {med['kernel'] / med['floor/loader']:.3f}"
        )
    if "floor/loader" in med and "loader" in med:
        print(f"floor/loader / loader = {med['floor/loader'] / med['loader']:.3f} (what the stages cost in workers)")
    if "floor" in med and "+batch" in med:
        print(f"floor / in-process pipeline = {med['floor'] / med['+batch']:.3f} (what the stages cost)")


if __name__ == "__main__":
    main()
