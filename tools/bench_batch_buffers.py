#!/usr/bin/env python
"""What a fresh shared-memory batch costs, and what recycling saves (``stages.buffers``).

A DataLoader worker fills uint8 batches (default 64x224x224x3, channels_last) from a ready
image, as the Batch stage does after decode, with an int64 label tensor beside them; the
main process reads one byte per page and drops the batch, as a training step would after
copying it to the GPU. Three variants, each in a fresh process per round, rounds
alternating: ``fresh`` (a new shared segment per tensor per batch, torch's way),
``recycled`` (BatchBuffers, with the main process's track/release calls), and
``handover`` (recycled, and sent as ShardLoader sends it: labels by value, a recycled
buffer the main process holds by reference, ``shardpipe.handover``). CPU ms per batch
(worker + main process).

    nice python tools/bench_batch_buffers.py --batches 200 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _child(variant: str, batches: int, batch: int, size: int) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from shardpipe.handover import pack, unpack
    from shardpipe.stages.batch import empty_uint8
    from shardpipe.stages.buffers import BatchBuffers

    pool = BatchBuffers()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)

    class Batches(IterableDataset):
        def __iter__(self):
            worker = get_worker_info().id
            for _ in range(batches):
                shape = (batch, size, size, 3)
                out = pool.take(shape, worker) if variant != "fresh" else empty_uint8(shape)
                nhwc = out.numpy()
                for i in range(batch):
                    nhwc[i] = image
                item = {"jpg": out.permute(0, 3, 1, 2), "cls": torch.arange(batch)}
                yield worker, pack(item, pool, worker) if variant == "handover" else item

    loader = DataLoader(Batches(), batch_size=None, num_workers=1, prefetch_factor=4)
    step = 4096
    before = resource.getrusage(resource.RUSAGE_SELF)  # imports and set-up are not counted
    for worker, item in loader:
        if variant != "fresh":
            pool.release()
            pool.track(worker, item)
            item = unpack(item, pool, worker)
        tensor = item["jpg"]
        flat = tensor.permute(0, 2, 3, 1).reshape(-1)
        int(flat[::step].sum())  # touch every page, as a copy to the GPU would
        del tensor, flat, item
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - before.ru_utime - before.ru_stime
    faults = sum(u.ru_minflt for u in usage) - before.ru_minflt
    print(json.dumps({"ms_per_batch": 1000 * cpu / batches, "faults_per_batch": faults / batches}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args.child, args.batches, args.batch, args.size)
    from shardpipe.devtools.bench.kernels import format_table, median

    variants = ["fresh", "recycled", "handover"]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            cmd = [sys.executable, __file__, "--child", v, "--batches", str(args.batches)]
            cmd += ["--batch", str(args.batch), "--size", str(args.size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[v].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for v in variants:
        ms = median([x["ms_per_batch"] for x in results[v]])
        rows.append([v, ms, ms / args.batch, median([x["faults_per_batch"] for x in results[v]])])
    print(f"{args.batches} batches of {args.batch}x{args.size}x{args.size}x3 uint8 per round, {args.rounds} rounds")
    print(format_table(["batch buffers", "CPU ms/batch", "CPU ms/img", "page faults/batch"], rows))


if __name__ == "__main__":
    main()
