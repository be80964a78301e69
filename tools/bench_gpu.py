"""Batch decode throughput: DALI (GPU if present, else its CPU operators) vs shardpipe's CPU path.

    nice python tools/bench_gpu.py [-n 512] [--batch-size 128] [--threads N] [--rounds 5]
                                   [--size 224] [--mode train|val] [--device auto|gpu|cpu]

Every method decodes the same generated ImageNet-like JPEGs (``shardpipe.devtools.synth``) into a
``(N, 3, size, size)`` uint8 tensor with the same transform (train: RandomResizedCrop +
flip; val: Resize(size * 8/7) + CenterCrop). Methods run alternately, ``--rounds`` times;
the table shows median images/s, the ratio to the CPU baseline, and process CPU seconds
per 1000 images (all threads; DALI's GPU work is not CPU time).

Methods:
  dali-<device>      DaliBatchDecoder: ROI decode + resize + flip in one DALI pipeline
  cpu-batch          CpuBatchDecoder: shardpipe's crop-aware decode on N threads (the fallback)
  cpu-unfused        get_decoder("auto").decode + RandomResizedCrop, N threads (baseline)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import numpy as np  # noqa: E402
import torch  # noqa: E402

from shardpipe.augment import CenterCrop, Compose, RandomHorizontalFlip, RandomResizedCrop, Resize  # noqa: E402
from shardpipe.batchdecode.cpu import CpuBatchDecoder  # noqa: E402
from shardpipe.devtools.synth import make_dataset  # noqa: E402
from shardpipe.image.decoders import get_decoder  # noqa: E402

Method = Callable[[list[bytes]], torch.Tensor]


def unfused(size: int, train: bool, threads: int) -> tuple[Method, str]:
    """Whole-image decode with the fastest installed decoder, then the transform."""
    dec = get_decoder("auto")
    t = Compose(
        [RandomResizedCrop(size), RandomHorizontalFlip()] if train else [Resize(size * 8 // 7), CenterCrop(size)]
    )
    pool = ThreadPoolExecutor(threads)

    def one(args: tuple[bytes, int]) -> np.ndarray:
        data, seed = args
        return t(dec.decode(data), np.random.default_rng(seed))

    def run(batch: list[bytes]) -> torch.Tensor:
        imgs = list(pool.map(one, zip(batch, range(len(batch)))))
        return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()

    return run, dec.name


def timed(method: Method, images: list[bytes], batch_size: int, sync: bool) -> tuple[float, float]:
    """Decode every image once in batches; return (wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(images), batch_size):
        out = method(images[start : start + batch_size])
        assert out.shape[0] == len(images[start : start + batch_size])
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mode", choices=["train", "val"], default="train")
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto", help="DALI device")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train = args.mode == "train"

    t0 = time.perf_counter()
    images = [data for _, data, _ in make_dataset(args.images, args.seed, workers=min(4, args.threads))]
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(
        f"{len(images)} generated JPEGs ({mean_kb:.0f} KB mean) in {time.perf_counter() - t0:.1f}s; "
        f"mode={args.mode} size={args.size} batch={args.batch_size} threads={args.threads}"
    )

    common = {"train": train, "resize_short": args.size * 8 // 7, "seed": args.seed}
    methods: dict[str, tuple[Method, bool]] = {}
    base_fn, base_name = unfused(args.size, train, args.threads)
    methods[f"cpu-unfused ({base_name})"] = (base_fn, False)
    cpu_batch = CpuBatchDecoder(args.size, num_threads=args.threads, **common)
    methods["cpu-batch (crop-aware)"] = (cpu_batch, False)
    try:
        from shardpipe.batchdecode.dali import DaliBatchDecoder

        dali = DaliBatchDecoder(
            args.size, device=args.device, batch_size=args.batch_size, num_threads=args.threads, **common
        )
        methods[f"dali-{dali.device}"] = (dali, dali.device == "gpu")
    except (ImportError, RuntimeError) as e:
        print(f"DALI skipped: {e}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")

    for method, sync in methods.values():  # warm-up: pipeline builds, thread pools, caches
        timed(method, images[: args.batch_size * 2], args.batch_size, sync)
    walls: dict[str, list[float]] = {name: [] for name in methods}
    cpus: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, (method, sync) in methods.items():
            w, c = timed(method, images, args.batch_size, sync)
            walls[name].append(w)
            cpus[name].append(c)

    base = len(images) / statistics.median(next(iter(walls.values())))
    print(f"\n{'method':<28}{'images/s':>10}{'vs baseline':>13}{'CPU s/1000 img':>16}")
    for name in methods:
        rate = len(images) / statistics.median(walls[name])
        cpu_ms = statistics.median(cpus[name]) / len(images) * 1000
        print(f"{name:<28}{rate:>10.0f}{rate / base:>12.2f}x{cpu_ms:>16.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
