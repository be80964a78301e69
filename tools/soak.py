"""Soak: many epochs, recording RSS and open file descriptors of the main process and each worker.

Every epoch iterates a ShardLoader with 2 workers over the same shards: a fresh loader
per epoch (``--mode fresh``), one loader re-iterated (``--mode same``), or one loader
with persistent workers (``--mode persistent``, where ShardLoader supports it).
``--busy`` adds parent threads looping torch, numpy's RNG, OpenCV and logging (the
workers then start from a forkserver). Worker figures are read halfway through each
epoch; main-process figures after it. Prints one row per epoch and the growth from the
first epoch after ``--warmup`` to the last.

    python tools/soak.py --epochs 60 --mode fresh [--busy]
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from shardpipe import ShardDataset, ShardLoader, TarWriter
from shardpipe.augment import RandomResizedCrop
from shardpipe.devtools.synth import make_jpeg


def write_data(root: Path, shards: int, per_shard: int) -> list[str]:
    urls = []
    for s in range(shards):
        path = root / f"shard-{s:04d}.tar"
        with open(path, "wb") as f:
            tw = TarWriter(f)
            for i in range(s * per_shard, (s + 1) * per_shard):
                tw.write({"__key__": f"img{i:05d}", "jpg": make_jpeg(i), "cls": i % 10})
            tw.close()
        urls.append(str(path))
    return urls


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def workers_of(parent: int) -> list[int]:
    """DataLoader workers: children of this process or of its forkserver, running Python."""
    from multiprocessing import forkserver

    server = getattr(forkserver._forkserver, "_forkserver_pid", None)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid not in (parent, server) or int(entry) == server:
            continue
        if b"resource_tracker" not in Path(f"/proc/{entry}/cmdline").read_bytes():
            out.append(int(entry))
    return sorted(out)


def busy_threads(stop: threading.Event) -> list[threading.Thread]:
    import cv2

    log = logging.getLogger("soak-busy")

    def run() -> None:
        img = np.zeros((480, 640, 3), np.uint8)
        while not stop.is_set():
            a = torch.randn(128, 128)
            (a @ a).sum()
            np.random.randint(0, 255, (32, 32))
            cv2.resize(img, (320, 240))
            log.debug("step")
            time.sleep(0.002)

    threads = [threading.Thread(target=run, name=f"busy-{i}", daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    return threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--mode", choices=("fresh", "same", "persistent"), default="fresh")
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    persistent = args.mode == "persistent"
    if persistent and "persistent_workers" not in inspect.signature(ShardLoader.__init__).parameters:
        raise SystemExit("this ShardLoader has no persistent_workers option yet")
    stop = threading.Event()
    threads = busy_threads(stop) if args.busy else []
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_data(Path(tmp), args.shards, args.per_shard)

        def make_loader() -> ShardLoader:
            ds = ShardDataset(urls, transform=RandomResizedCrop(96), batch_size=16, shuffle=64)
            extra = {"persistent_workers": True} if persistent else {}
            return ShardLoader(ds, num_workers=2, **extra)

        loader = None if args.mode == "fresh" else make_loader()
        rows = []
        print(f"{'epoch':>5} {'s':>5} {'main RSS MB':>11} {'main fds':>8} {'worker RSS MB':>15} {'worker fds':>11}")
        for epoch in range(args.epochs):
            cur = make_loader() if loader is None else loader
            t0 = time.perf_counter()
            batches, half = 0, args.shards * args.per_shard // 16 // 2
            w_rss: list[float] = []
            w_fds: list[int] = []
            for batch in cur:
                batches += 1
                assert batch["jpg"].shape[1:] == (3, 96, 96)
                if batches == half:
                    for pid in workers_of(os.getpid()):
                        try:
                            w_rss.append(rss_mb(pid))
                            w_fds.append(fds(pid))
                        except OSError:
                            pass
                del batch
            assert batches == args.shards * args.per_shard // 16, batches
            del cur
            row = (epoch, time.perf_counter() - t0, rss_mb(), fds(), w_rss, w_fds)
            rows.append(row)
            print(
                f"{epoch:>5} {row[1]:>5.2f} {row[2]:>11.1f} {row[3]:>8} "
                f"{'/'.join(f'{r:.0f}' for r in w_rss):>15} {'/'.join(map(str, w_fds)):>11}",
                flush=True,
            )
    stop.set()
    for t in threads:
        t.join()
    first, last = rows[min(args.warmup, len(rows) - 1)], rows[-1]

    def span(i: int) -> str:
        vals = [r[i] for r in rows[args.warmup :]]
        return f"{min(vals):.1f}..{max(vals):.1f}"

    wr = [max(r[4]) for r in rows[args.warmup :] if r[4]]
    wf = [max(r[5]) for r in rows[args.warmup :] if r[5]]
    print(
        f"after {args.warmup} warm-up epochs, epochs {first[0]}..{last[0]} ({args.mode}{', busy parent' if args.busy else ''}): "
        f"main RSS {first[2]:.1f} -> {last[2]:.1f} MB (range {span(2)}), main fds {first[3]} -> {last[3]} "
        f"(range {span(3)}), worker RSS max {min(wr):.0f}..{max(wr):.0f} MB, worker fds {min(wf)}..{max(wf)}"
    )


if __name__ == "__main__":
    main()
