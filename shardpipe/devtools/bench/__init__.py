"""The side-by-side loader benchmark (``shardpipe bench``, ``tools/bench.py``) and its parts.

One invocation generates ImageNet-like JPEGs (``shardpipe.devtools.synth``; cached under
``--data``), stores them as shardpipe's tar shards (full size and presized to 256, JPEGs
given restart intervals as ``shardpipe write`` does), plain tar shards (the same JPEGs
byte for byte, for the other loaders), an ImageFolder tree and an LMDB, then runs, alternating round by round, each in a fresh process with
the same worker count, batch size, shuffle buffer and RandomResizedCrop(224) + flip:

* shardpipe (fastest config), shardpipe with PIL decoding, shardpipe on presized shards;
* webdataset + PIL (torchvision-style crop and flip done with PIL);
* a PIL ImageFolder-style map dataset with a DataLoader; an LMDB store loader;
* the kernel ceiling: decode + crop + resize + flip in ``workers`` processes (and on as
  many threads of one process), no pipeline;
* untar + group alone: shardpipe vs webdataset, no decoding.

A row whose package is missing (``webdataset``, ``lmdb``: no dependencies of shardpipe) is
skipped with its install command, as ``--peers`` skips a peer's.

It reports medians of images/s (steady state, after the first batch), CPU seconds per
image (all processes), peak RSS (main process and largest worker), ratios to
webdataset, shardpipe's per-stage table and the issue's targets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shardpipe.devtools.bench.kernels import (
    ImageFn,
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
    train_transform,
)
from shardpipe.devtools.bench.loaders import measure, prepare_data, run_rounds

__all__ = [
    "ImageFn",
    "OtherLoad",
    "add_arguments",
    "alternate",
    "decode_kernel",
    "format_table",
    "measure",
    "median",
    "photo_jpegs",
    "pil_train_kernel",
    "prepare_data",
    "report",
    "run",
    "run_benchmark",
    "run_kernel",
    "run_kernel_processes",
    "shardpipe_train_kernel",
    "train_transform",
]


def candidates(workers: int, batch: int, size: int, buffer: int, threads: int) -> dict[str, dict[str, Any]]:
    """The loaders compared, by row name (``threads`` = decode threads per shardpipe worker)."""
    common = {"workers": workers, "batch": batch, "size": size, "buffer": buffer}
    return {
        # the fastest configuration: channels_last batches (NCHW shape, NHWC memory)
        "shardpipe": {"kind": "shardpipe", "threads": threads, "channels_last": True, **common},
        "shardpipe, contiguous NCHW": {"kind": "shardpipe", "threads": threads, **common},
        "shardpipe + PIL decode": {"kind": "shardpipe", "decoder": "pil", "threads": threads, **common},
        # batched decode in the main process: DALI on a GPU, else CPU threads (issue #7)
        "shardpipe, batch decode in main": {"kind": "shardpipe-batch", **common},
        "shardpipe, presized 256": {
            "kind": "shardpipe",
            "shards": "presized",
            "threads": threads,
            "channels_last": True,
            **common,
        },
        "webdataset + PIL": {"kind": "webdataset", **common},
        "ImageFolder + PIL (map)": {"kind": "imagefolder", **common},
        "LMDB + PIL (map)": {"kind": "lmdb", **common},
        "kernel ceiling (processes)": {"kind": "kernel", "mode": "processes", **common},
        "kernel (threads)": {"kind": "kernel", "mode": "threads", **common},
        "kernel ceiling, presized 256": {"kind": "kernel", "mode": "processes", "shards": "presized", **common},
        "untar+group shardpipe": {"kind": "untar-shardpipe", **common},
        "untar+group webdataset": {"kind": "untar-webdataset", "shards": "plain", **common},
    }


#: the (module, pip package) pairs a row's kind needs beyond shardpipe's own dependencies
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "webdataset": (("webdataset", "webdataset"),),
    "untar-webdataset": (("webdataset", "webdataset"),),
    "lmdb": (("lmdb", "lmdb"),),
}


def run_benchmark(
    data_dir: str = "bench-data",
    n: int = 3000,
    workers: int = 2,
    batch: int = 64,
    size: int = 224,
    buffer: int = 1000,
    threads: int = 0,
    rounds: int = 3,
    only: Sequence[str] | None = None,
    nice: int = 10,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Prepare the data, then run every installed candidate ``rounds`` times, alternating:
    (raw results by row, skipped rows -> why)."""
    from shardpipe.devtools.bench.peers import not_installed

    rows, skipped = {}, {}
    for name, cfg in candidates(workers, batch, size, buffer, threads).items():
        if name in matching([name], only):
            why = not_installed(NEEDS.get(cfg["kind"], ()))
            if why:
                skipped[name] = why
                log(f"{name}: {why} (skipped)")
            else:
                rows[name] = cfg
    log(f"preparing {n} images under {data_dir} (once) ...")
    data = prepare_data(data_dir, n)
    if any(cfg["kind"] == "lmdb" for cfg in rows.values()):
        from shardpipe.devtools.bench.lmdbstore import write_lmdb

        write_lmdb(data)
    return run_rounds(rows, data, rounds, nice, log), skipped


def report(
    results: dict[str, list[dict[str, Any]]],
    *,
    workers: int,
    batch: int,
    buffer: int,
    mean_bytes: float,
    size: int = 224,
    skipped: dict[str, str] | None = None,
) -> str:
    """Tables of medians, ratios, the per-stage breakdown, the skipped rows and the issue's targets."""
    med = {k: {m: median([r[m] for r in v if m in r]) for m in v[0] if m != "stages"} for k, v in results.items() if v}
    ref = med.get("webdataset + PIL", {}).get("rate")
    rounds = max((len(v) for v in results.values()), default=0)
    lines = [f"workers={workers} batch={batch} shuffle buffer={buffer}; medians of {rounds} rounds", ""]
    rows = []
    for name, m in med.items():
        ratio = m["rate"] / ref if ref else float("nan")
        main_cpu = 1000 * m.get("main_cpu_per_image", float("nan"))
        worker_rss = m.get("rss_worker_mb", float("nan"))
        rows.append([name, m["rate"], ratio, 1000 * m["cpu_per_image"], main_cpu, m["rss_main_mb"], worker_rss])
    headers = ["loader", "img/s", "x webdataset", "CPU ms/img", "main ms/img", "RSS main MB", "RSS worker MB"]
    lines.append(format_table(headers, rows))
    stage_rows = []
    for name, runs in results.items():
        tables = [r["stages"] for r in runs if "stages" in r]
        if tables:
            stage_rows.append([name] + [median([t[s] for t in tables]) for s in tables[0]])
            stage_names = list(tables[0])
    if stage_rows:
        lines += ["", "shardpipe per-stage seconds per 1000 samples (summed over workers and threads)"]
        lines.append(format_table(["loader", *stage_names], stage_rows))
    if skipped:
        lines += ["", *(f"{name}: {why}" for name, why in skipped.items())]
    lines += ["", "targets"]
    get = lambda name: med.get(name, {}).get("rate", float("nan"))  # noqa: E731
    checks = [
        ("full pipeline >= 2.5x webdataset + PIL", get("shardpipe") / get("webdataset + PIL"), 2.5),
        ("full pipeline >= 0.9x kernel ceiling", get("shardpipe") / get("kernel ceiling (processes)"), 0.9),
        ("presized 256 >= 3x full size", get("shardpipe, presized 256") / get("shardpipe"), 3.0),
        ("untar+group >= 2x webdataset", get("untar+group shardpipe") / get("untar+group webdataset"), 2.0),
    ]
    infos = [
        (
            "kernel ceiling: presized 256 / full size",
            get("kernel ceiling, presized 256") / get("kernel ceiling (processes)"),
        ),
        ("kernel ceiling / webdataset + PIL", get("kernel ceiling (processes)") / get("webdataset + PIL")),
    ]
    for text, value in infos:
        if value == value:
            lines.append(f"  ({text}: {value:.2f}x)")
    if "shardpipe" in med:
        bound = (buffer * mean_bytes + 2 * batch * 3 * size * size) / 2**20 + 300
        checks.append(
            ("peak RSS per worker <= buffer + 2 batches + 300 MB", med["shardpipe"]["rss_worker_mb"] / bound, None)
        )
    for text, value, goal in checks:
        if value != value:  # nan: a row not run
            continue
        if goal is None:
            lines.append(f"  {text}: {value:.2f} of the bound ({'met' if value <= 1 else 'MISSED'})")
        else:
            lines.append(f"  {text}: {value:.2f}x ({'met' if value >= goal else 'MISSED'})")
    return "\n".join(lines)


def add_arguments(p: Any) -> None:
    """The options of ``shardpipe bench`` and ``tools/bench.py``."""
    from shardpipe.argtypes import at_least

    p.add_argument("--data", default="bench-data", help="where the generated data is kept (reused)")
    p.add_argument("--n", type=at_least(1), default=None, help="images (default 3000; 2000 with --peers)")
    p.add_argument("--workers", type=at_least(1), default=2, help="DataLoader workers for every loader")
    p.add_argument("--threads", type=at_least(0), default=0, help="shardpipe decode threads per worker")
    p.add_argument("--batch", type=at_least(1), default=64)
    p.add_argument("--size", type=at_least(1), default=224)
    p.add_argument("--buffer", type=at_least(0), default=1000, help="shuffle buffer (samples)")
    p.add_argument("--rounds", type=at_least(1), default=3)
    p.add_argument("--only", nargs="*", help="run the rows whose names contain one of these (case-insensitive)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the measured processes")
    p.add_argument(
        "--peers",
        action="store_true",
        help="compare with the loaders users would pick instead (LitData, MosaicML streaming, SPDL, DALI CPU, "
        "webdataset); missing ones are skipped (make bench-peers installs them into bench-env/)",
    )
    p.add_argument(
        "--report",
        default="bench-peers.txt",
        help="with --peers: where the table is saved; its bar chart goes beside it as .png",
    )


def matching(names: Sequence[str], only: Sequence[str] | None) -> list[str]:
    """The row names that contain one of ``only`` (case-insensitive), or all of them."""
    if not only:
        return list(names)
    wanted = [o.lower() for o in only]
    return [n for n in names if any(o in n.lower() for o in wanted)]


def _check_arguments(args: Any) -> str | None:
    """Why the run cannot go as asked, found before any data is generated; else None."""

    from shardpipe.devtools.bench import peers

    names = [p.name for p in peers.PEERS] if args.peers else list(candidates(1, 1, 1, 1, 1))
    for o in args.only or ():
        if not matching(names, [o]):
            return f"--only {o!r} names no row; the rows: {'; '.join(names)}"
    if args.peers:
        try:  # the table is saved at the end of the run: find out now if it cannot be
            os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        except OSError as e:
            return f"--report {args.report}: its folder cannot be made: {e}"
    return None


def run(args: Any) -> int:
    """Entry point of ``shardpipe bench``."""
    problem = _check_arguments(args)
    if problem:  # a usage error (exit 2, as argparse's), said as the commands say theirs
        print(f"shardpipe bench: error: {problem}", file=sys.stderr)
        return 2
    if args.peers:
        return run_peers_command(args)
    args.n = 3000 if args.n is None else args.n
    results, skipped = run_benchmark(
        args.data,
        args.n,
        args.workers,
        args.batch,
        args.size,
        args.buffer,
        args.threads,
        args.rounds,
        args.only,
        args.nice,
    )
    info = prepare_data(args.data, args.n)
    print()
    print(
        report(
            results,
            workers=args.workers,
            batch=args.batch,
            buffer=args.buffer,
            mean_bytes=info["mean_bytes"],
            size=args.size,
            skipped=skipped,
        )
    )
    return 0


def run_peers_command(args: Any) -> int:
    """``shardpipe bench --peers``: run, print and save the table and its chart."""
    import shlex

    from shardpipe.devtools.bench import peers

    n = 2000 if args.n is None else args.n
    results, skipped, _ = peers.run_peers(
        args.data, n, args.workers, args.batch, args.size, args.buffer, args.rounds, args.only, args.nice
    )
    rows = peers.summarize(results)
    command = f"shardpipe bench --peers --n {n} --rounds {args.rounds} --workers {args.workers} --batch {args.batch}"
    if args.only:
        command += " --only " + " ".join(shlex.quote(o) for o in args.only)
    text = peers.report(rows, skipped, workers=args.workers, batch=args.batch, command=command)
    print()
    print(text)
    if rows:
        peers.save(text, rows, args.report)
    return 0
