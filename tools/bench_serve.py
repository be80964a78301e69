#!/usr/bin/env python
"""Decode fleet benchmark: loopback receive throughput, and an epoch served vs local.

wire   A sender process speaks the fleet protocol from one pre-built 64x3x224x224 uint8
       batch (so decode is out of the picture); the trainer is a real RemoteLoader.
       Reports GB/s, batches/s, the trainer process's CPU ms per batch (all its threads,
       ZMQ's I/O thread included) and the senders' (from /proc, start-up excluded), for
       several credit windows and 1-2 senders.
       tensorcom, the project this design comes from, published 1.26 GB/s.
epoch  One epoch of photo-like JPEGs (synth, ~500x375) through RandomResizedCrop(224),
       batches of 32: a local ShardLoader (2 workers) vs RemoteLoader on 1 server x 2
       workers and on 2 servers x 1 worker, all on this machine. Reports wall ms per batch,
       the trainer's CPU ms per batch, the CPU ms per image of all processes (servers
       included), and the overhead per batch against the local loader.

Each measurement runs in a fresh trainer process (and fresh servers), variants alternating
round by round.

    python tools/bench_serve.py --rounds 3            # both parts
    python tools/bench_serve.py wire --batches 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TICKS = os.sysconf("SC_CLK_TCK")


# -- the wire part -------------------------------------------------------------------
def sender(batches: int) -> None:
    """A minimal fleet server: hello, then ``batches`` copies of one batch under credit control."""
    import torch
    import zmq

    from shardpipe.serve.wire import control, pack, unpack

    batch = {
        "jpg": torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8),
        "cls": torch.arange(64),
        "__key__": [f"k{i:06d}" for i in range(64)],
    }
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.sndhwm = 0
    sock.bind("tcp://127.0.0.1:*")
    print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    jobs: dict[Any, list[int]] = {}  # (client, assignment) -> [credits, sent]
    while True:
        if not any(c > 0 and s < batches for c, s in jobs.values()) or sock.poll(0):
            client, *frames = sock.recv_multipart()
            header, _ = unpack(frames)
            if header["type"] == "hello":
                sock.send_multipart([client, *control("hello", workers=1, fingerprint="bench", rejected=0)])
            elif header["type"] == "assign":
                jobs[(client, header["assignment"])] = [header["credits"], 0]
            elif header["type"] == "credit" and (client, header["assignment"]) in jobs:
                jobs[(client, header["assignment"])][0] += header["n"]
            continue
        for (client, assignment), job in jobs.items():
            if job[0] > 0 and job[1] < batches:
                state = {"version": 1, "epoch": 0, "stages": {"sent": job[1]}}
                frames = pack({"type": "batch", "assignment": assignment, "state": state}, batch)
                sock.send_multipart([client, *frames], copy=False)
                job[0] -= 1
                job[1] += 1
                if job[1] == batches:
                    sock.send_multipart([client, *control("end", assignment=assignment, sent=batches)])


def wire_trainer(endpoints: list[str], credits: int, warmup: int = 10) -> dict[str, float]:
    from shardpipe import RemoteLoader

    loader = RemoteLoader(endpoints, parts=len(endpoints), credits=credits, timeout=60)
    n = nbytes = 0
    t0 = c0 = 0.0
    for i, batch in enumerate(loader):
        if i == warmup:
            t0, c0, n, nbytes = time.perf_counter(), time.process_time(), 0, 0
        n += 1
        nbytes += batch["jpg"].numel()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"gbps": nbytes / wall / 1e9, "batches_s": n / wall, "cpu_ms": cpu / n * 1e3}


def start_sender(batches: int) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, __file__, "_sender", str(batches)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, p.stdout.readline().strip()


def run_wire(args: argparse.Namespace) -> None:
    variants = [(1, 1), (1, 2), (1, 4), (2, 2)]  # (senders, credits)
    results: dict[tuple[int, int], list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for senders, credits in variants:
            started = [start_sender(args.batches // senders) for _ in range(senders)]
            try:
                before = sum(tree_cpu(p.pid) for p, _ in started)  # the senders are ready: start-up excluded
                out = _child(["_wire_trainer", str(credits), *[e for _, e in started]])
                out["sender_cpu_ms"] = (sum(tree_cpu(p.pid) for p, _ in started) - before) / args.batches * 1e3
            finally:
                for p, _ in started:
                    p.kill()
                    p.wait()
            results[(senders, credits)].append(out)
            print(f"round {r} senders={senders} credits={credits}: {out}", flush=True)
    print(
        "\n| senders | credits | GB/s | batches/s | trainer CPU ms/batch | sender CPU ms/batch |\n|---|---|---|---|---|---|"
    )
    for (senders, credits), rows in results.items():
        med = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
        print(
            f"| {senders} | {credits} | {med['gbps']:.2f} | {med['batches_s']:.1f} | {med['cpu_ms']:.2f} "
            f"| {med['sender_cpu_ms']:.1f} |"
        )


# -- the epoch part ------------------------------------------------------------------
def make_data(root: Path, n: int) -> Path:
    import yaml

    from shardpipe import ShardWriter
    from shardpipe.devtools.synth import make_dataset

    config = root / "serve.yaml"
    stamp = root / f".n{n}"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        print(f"generating {n} images into {root} ...", flush=True)
        with ShardWriter(f"{root}/train-%06d.tar", maxcount=64) as w:
            for key, jpg, label in make_dataset(n, workers=os.cpu_count() or 1):
                w.write({"__key__": key, "jpg": jpg, "cls": label})
        stamp.touch()
    spec = {
        "dataset": {"urls": str(root / "manifest.json"), "batch_size": 32, "seed": 0, "require": ["jpg", "cls"]},
        "transform": [{"RandomResizedCrop": {"size": 224}}, {"RandomHorizontalFlip": {}}],
        "loader": {"num_workers": 2},
    }
    config.write_text(yaml.safe_dump(spec))
    return config


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (from /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def epoch_trainer(config: str, endpoints: list[str]) -> dict[str, float]:
    from shardpipe import RemoteLoader
    from shardpipe.config import load_config

    if endpoints:
        loader: Any = RemoteLoader(endpoints, timeout=120)
    else:
        loader = load_config(config)[1]
    t0, c0 = time.perf_counter(), time.process_time()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = images = 0
    for batch in loader:
        n += 1
        images += len(batch["__key__"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    return {"batches": n, "images": images, "wall": wall, "trainer_cpu": cpu, "worker_cpu": workers}


def run_epoch(args: argparse.Namespace) -> None:
    from tests.fleet_helpers import ServerProcess

    config = make_data(Path(args.data), args.n)
    variants = {"local 2 workers": (0, 0), "1 server x 2 workers": (1, 2), "2 servers x 1 worker": (2, 1)}
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for name, (servers, workers) in variants.items():
            procs = [ServerProcess(config, workers) for _ in range(servers)]
            try:
                for p in procs:
                    p.wait_ready()
                before = sum(tree_cpu(p.pid) for p in procs)
                out = _child(["_epoch_trainer", str(config), *[p.endpoint for p in procs]])
                out["worker_cpu"] += sum(tree_cpu(p.pid) for p in procs) - before
            finally:
                for p in procs:
                    p.stop()
            results[name].append(out)
            print(f"round {r} {name}: {out}", flush=True)
    print(
        "\n| loader | wall ms/batch | overhead ms/batch vs local | trainer CPU ms/batch | all CPU ms/image |"
        "\n|---|---|---|---|---|"
    )
    local = None
    for name, rows in results.items():
        wall = statistics.median(x["wall"] / x["batches"] for x in rows) * 1e3
        trainer = statistics.median(x["trainer_cpu"] / x["batches"] for x in rows) * 1e3
        total = statistics.median((x["trainer_cpu"] + x["worker_cpu"]) / x["images"] for x in rows) * 1e3
        local = wall if local is None else local
        print(f"| {name} | {wall:.0f} | {wall - local:+.0f} | {trainer:.2f} | {total:.2f} |")


def _child(argv: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, rest = sys.argv[1], sys.argv[2:]
        if mode == "_sender":
            sender(int(rest[0]))
        elif mode == "_wire_trainer":
            print(json.dumps(wire_trainer(rest[1:], int(rest[0]))))
        elif mode == "_epoch_trainer":
            print(json.dumps(epoch_trainer(rest[0], rest[1:])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", choices=["wire", "epoch", "all"], default="all")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=200, help="wire: batches per trainer")
    p.add_argument("--n", type=int, default=512, help="epoch: images")
    p.add_argument("--data", default=str(ROOT / "bench-data" / "serve"))
    args = p.parse_args()
    if args.part in ("wire", "all"):
        run_wire(args)
    if args.part in ("epoch", "all"):
        run_epoch(args)


if __name__ == "__main__":
    main()
