"""Start-up cost of DataLoader workers per start method: first-batch latency, 2 workers.

Each method runs in a fresh process (so the first loader pays for starting a forkserver,
or spawn's imports), then ``--loaders`` more fresh ShardLoaders; prints the first
loader's latency and the median of the rest, in ms, plus the CPU ms of all processes.

    python tools/bench_worker_start.py [--loaders 8] [--methods fork,forkserver,spawn]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(method: str, loaders: int, data: str) -> None:
    import resource

    from shardpipe import ShardDataset, ShardLoader
    from shardpipe.augment import RandomResizedCrop

    urls = sorted(str(p) for p in Path(data).glob("*.tar"))
    latencies = []
    for _ in range(loaders + 1):
        loader = ShardLoader(
            ShardDataset(urls, transform=RandomResizedCrop(64), batch_size=8),
            num_workers=2,
            multiprocessing_context=method,
        )
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)
        latencies.append(1000 * (time.perf_counter() - t0))
        for _ in it:
            pass
    cpu = forkserver_cpu() + sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    print(
        json.dumps(
            {
                "method": method,
                "first_ms": latencies[0],
                "median_ms": statistics.median(latencies[1:]),
                "cpu_ms_per_loader": 1000 * cpu / (loaders + 1),
            }
        )
    )


def forkserver_cpu() -> float:
    """CPU seconds of the forkserver and the workers it forked and reaped (not in RUSAGE_CHILDREN)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loaders", type=int, default=8)
    ap.add_argument("--methods", default="fork,forkserver,spawn")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.data)
        return
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as data:
        write_data(Path(data))
        print(f"{'method':<11} {'first loader ms':>16} {'later loaders ms (median)':>26} {'CPU ms/loader':>14}")
        for method in args.methods.split(","):
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--child", method, str(args.loaders), "--data", data],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            print(f"{method:<11} {r['first_ms']:>16.0f} {r['median_ms']:>26.0f} {r['cpu_ms_per_loader']:>14.0f}")


def write_data(root: Path, shards: int = 4, per_shard: int = 16) -> None:
    """Photo-like JPEGs from the project's generator (``shardpipe.devtools.synth``)."""
    from shardpipe import TarWriter
    from shardpipe.devtools.synth import make_jpeg

    for s in range(shards):
        with open(root / f"shard-{s:04d}.tar", "wb") as f:
            tw = TarWriter(f)
            for i in range(s * per_shard, (s + 1) * per_shard):
                tw.write({"__key__": f"img{i:05d}", "jpg": make_jpeg(i), "cls": i % 10})
            tw.close()


if __name__ == "__main__":
    main()
