"""Benchmark ``shardpipe write --engine ray`` against the local engine for the same job on this machine.

    python tools/bench_ray_write.py [-n 400] [--presize 256] [--maxcount 50] [--cpus 2]

Each configuration runs in a fresh process: the local engine with 1 and ``--cpus``
workers, and the Ray engine on a local cluster of ``--cpus`` CPUs with ``--maxcount``
images per shard task and with ``--small`` images per task. Ray's cluster start and
its first (cold worker) job are timed apart from the measured, warm run. The per-task
overhead is the extra core time per task of the small-task run:
``(wall_small - wall_large) * cpus / (tasks_small - tasks_large)``; a no-op task round
trip is measured too. CPU ms per image is this process plus its children: finished ones from
``getrusage`` (local engine), live ones from /proc (Ray's raylet, GCS and workers, which
stay up): on a shared machine, CPU time is steadier than wall time. On a 2-core machine expect overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def tree_cpu_seconds() -> float:
    """CPU time of this process and every live descendant (Ray's raylet, GCS and workers), from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(name)] = int(fields[1])
        ticks[int(name)] = int(fields[11]) + int(fields[12])  # utime + stime
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in mine:
                mine.add(child)
                frontier.append(child)
    return sum(ticks.get(p, 0) for p in mine) / os.sysconf("SC_CLK_TCK")


def one(config: dict) -> dict:
    """Run one configuration in this (fresh) process; returns its measurements."""
    from shardpipe.write.job import write_shards

    out = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    common = {"maxcount": config["maxcount"], "presize": config["presize"], "shuffle": True, "seed": 1}
    result: dict = {}
    try:
        if config["engine"] == "ray":
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=config["cpus"], include_dashboard=False, log_to_driver=False)
            result["start_s"] = time.perf_counter() - t0
            noop = ray.remote(num_cpus=1)(lambda: None)
            ray.get([noop.remote() for _ in range(config["cpus"])])  # workers started
            t0 = time.perf_counter()
            ray.get([noop.remote() for _ in range(200)])
            result["noop_task_ms"] = (time.perf_counter() - t0) * 1000 / 200
            t0 = time.perf_counter()  # a first job imports shardpipe and PIL in the workers
            write_shards(config["data"], str(out / "warm" / "s-%04d.tar"), engine="ray", **common)
            result["cold_job_s"] = time.perf_counter() - t0
        tree0, c0, t0 = tree_cpu_seconds(), cpu_seconds(), time.perf_counter()
        summary = write_shards(
            config["data"], str(out / "run" / "s-%04d.tar"), engine=config["engine"],
            workers=config.get("workers", 1), **common,
        )  # fmt: skip
        wall, cpu, tree = time.perf_counter() - t0, cpu_seconds() - c0, tree_cpu_seconds() - tree0
        # local: rusage counts finished worker processes; ray: its workers live on, /proc counts them
        result.update(wall_s=wall, cpu_s=tree if config["engine"] == "ray" else cpu, images=summary.written_now)
        result["shards"], result["bytes"] = summary.shards, summary.bytes
        if config["engine"] == "ray":
            import ray

            ray.shutdown()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return result


def run_fresh(config: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True, cwd=ROOT, env=env
    )  # the Ray workers import shardpipe from this checkout too
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=400, help="images (default 400)")
    p.add_argument("--data", type=Path, default=Path("bench-data/ray-src"))
    p.add_argument("--presize", type=int, default=256)
    p.add_argument("--maxcount", type=int, default=50, help="images per shard (= per Ray task)")
    p.add_argument("--small", type=int, default=5, help="images per task of the overhead run")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--plan-cores", type=int, default=32, help="cores per machine of the paper plan (default 32)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return 0
    from shardpipe.devtools.synth import write_image_folder

    if len(list(args.data.rglob("*.jpg"))) != args.n:
        shutil.rmtree(args.data, ignore_errors=True)
        write_image_folder(args.data, args.n, num_classes=10, workers=os.cpu_count() or 1)
    base = {"data": str(args.data), "presize": args.presize, "maxcount": args.maxcount, "cpus": args.cpus}
    rows = [
        ("local, 1 worker", run_fresh({**base, "engine": "local", "workers": 1})),
        (f"local, {args.cpus} workers", run_fresh({**base, "engine": "local", "workers": args.cpus})),
        (f"ray, {args.maxcount} images/task", run_fresh({**base, "engine": "ray"})),
        (f"ray, {args.small} images/task", run_fresh({**base, "engine": "ray", "maxcount": args.small})),
    ]
    print(f"{args.n} images, --presize {args.presize}, {args.cpus} CPUs, machine load {os.getloadavg()[0]:.1f}")
    print("| configuration | tasks | CPU ms/img | images/s | wall s | images per CPU-s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['shards']} | {r['cpu_s'] * 1000 / r['images']:.2f} | {r['images'] / r['wall_s']:.0f} "
            f"| {r['wall_s']:.2f} | {r['images'] / r['cpu_s']:.0f} |"
        )
    large, small = rows[2][1], rows[3][1]
    per_task = (small["cpu_s"] - large["cpu_s"]) / max(1, small["shards"] - large["shards"])
    print(f"ray: cluster start {large['start_s']:.1f} s, first (cold) job {large['cold_job_s']:.1f} s, "
          f"no-op task round trip {large['noop_task_ms']:.2f} ms, per-task overhead {per_task * 1000:.0f} ms CPU")  # fmt: skip
    print_plan(large, per_task, large["bytes"] / large["images"], args.plan_cores, large["start_s"])
    return 0


def print_plan(ray_row: dict, per_task: float, out_bytes: float, cores: int, start: float) -> None:
    """Paper plan: the measured Ray CPU per image and per task, spread over N machines of ``cores``."""
    cpu = ray_row["cpu_s"] / ray_row["images"]
    print(f"\npaper plan: {cpu * 1000:.2f} ms CPU/img (Ray, measured), {per_task * 1000:.0f} ms per task, "
          f"10,000 images per task, {out_bytes / 1024:.0f} KiB out per image, {cores} cores per machine")  # fmt: skip
    print("| images | CPU-hours | output | " + " | ".join(f"N={n}" for n in (1, 4, 16, 64)) + " |")
    print("|---:|---:|---:|" + "---:|" * 4)
    for images in (1_280_000, 100_000_000):
        total = images * cpu + (images / 10_000) * per_task
        cells = []
        for n in (1, 4, 16, 64):
            seconds = total / (n * cores) + start
            cells.append(
                f"{seconds:.0f} s"
                if seconds < 120
                else f"{seconds / 60:.0f} min"
                if seconds < 5400
                else f"{seconds / 3600:.1f} h"
            )
        print(f"| {images:,} | {total / 3600:.1f} | {images * out_bytes / 1e9:.0f} GB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
