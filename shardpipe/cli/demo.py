"""``shardpipe demo``: the main job on built-in data, start to finish, with numbers.

1. generate photo-like JPEGs (deterministic, no download);
2. write them into shards with a manifest, JPEGs given restart intervals as ``shardpipe write`` does;
3. stream the shards through the full pipeline (shuffle, crop-aware decode,
   RandomResizedCrop + flip, uint8 NCHW batches) with DataLoader workers;
4. print images/s and the per-stage table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from shardpipe.argtypes import at_least
from shardpipe.cli.common import DATA_PROBLEM, INTERRUPTED_STATUS, OK, USAGE, fail
from shardpipe.errors import ShardpipeError
from shardpipe.report import format_stage_table

EXIT_DETAILS = "  (demo: 1 when a shard reused from --dir is damaged; 2 when --dir cannot be written)"

#: what a rerun after Ctrl-C does
INTERRUPTED = "interrupted: the shards are kept only once all are written (a rerun then reuses them)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.image.decoders.registry import DECODERS

    p.add_argument("--dir", default="demo-data", help="working directory (default: ./demo-data)")
    p.add_argument("-n", "--images", type=at_least(1), default=1000, help="images to generate (default 1000)")
    p.add_argument("--workers", type=at_least(0), default=min(2, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--threads", type=at_least(0), default=1, help="decode threads per worker")
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--size", type=at_least(1), default=224, help="output crop size")
    p.add_argument("--epochs", type=at_least(1), default=2)
    p.add_argument(
        "--decoder", default="auto",
        help=f"image decoder backend: {', '.join(DECODERS.choices())} (default: auto, the fastest installed)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)


def _prepare(root: Path, n: int, seed: int) -> Path:
    """Generate the images and write shards, unless an identical set is already there."""
    from shardpipe import ShardWriter
    from shardpipe.devtools.synth import make_dataset
    from shardpipe.image.restart import add_restart_intervals

    manifest = root / "shards" / "manifest.json"
    demo = {"images": n, "seed": seed, "restart_intervals": True}
    if manifest.exists():
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError):  # cut short or damaged: written again below
            meta = {}
        if isinstance(meta, dict) and meta.get("demo") == demo:
            print(f"reusing {meta['samples']} samples in {len(meta['shards'])} shards from {manifest.parent}")
            return manifest
    t0 = time.perf_counter()
    total = 0
    writer = ShardWriter(str(root / "shards" / "demo-%06d.tar"), maxcount=max(1, n // 8), metadata={"demo": demo})
    try:
        with writer:
            for key, data, label in make_dataset(n, seed, num_classes=10, workers=os.cpu_count() or 1):
                data = add_restart_intervals(data)  # lossless; the crop decoder then skips what a crop leaves out
                writer.write({"__key__": key, "jpg": data, "cls": label})
                total += len(data)
    except BaseException:  # Ctrl-C, a full disk: no shards without a manifest are left behind
        for entry in writer.shards:
            (root / "shards" / entry["name"]).unlink(missing_ok=True)
        raise
    dt = time.perf_counter() - t0
    print(
        f"generated and wrote {n} JPEGs ({total / n / 1024:.0f} KB mean, {total / 2**20:.0f} MB) "
        f"into {len(writer.shards)} shards in {dt:.1f} s"
    )
    return manifest


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_STATUS


def _run(args: argparse.Namespace) -> int:
    from shardpipe import ShardDataset, ShardLoader
    from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop
    from shardpipe.image.decoders import get_decoder

    try:
        decoder = get_decoder(args.decoder).name  # before any image is generated
    except (ValueError, ImportError) as e:
        return fail("demo", f"--decoder: {e}", USAGE)
    root = Path(args.dir)
    try:
        manifest = _prepare(root, args.images, args.seed)
    except OSError as e:  # no permission, a full disk, --dir a file
        return fail("demo", f"cannot write the demo data under {root}: {e}", USAGE)
    transform = Compose([RandomResizedCrop(args.size), RandomHorizontalFlip()])
    ds = ShardDataset(
        str(manifest),
        shuffle=1000,
        seed=args.seed,
        transform=transform,
        decoder=args.decoder,
        num_threads=args.threads,
        batch_size=args.batch_size,
        channels_last=True,  # NCHW batches in NHWC memory: the cheapest collate, what GPUs prefer
        require=["jpg", "cls"],
    )
    loader = ShardLoader(ds, num_workers=args.workers)
    print(
        f"streaming: decoder={decoder} workers={args.workers} threads={args.threads} "
        f"batch={args.batch_size} crop={args.size}"
    )
    try:
        return _stream(args, ds, loader)
    except ShardpipeError as e:  # a damaged shard in a reused --dir
        return fail("demo", f"{e} (to start afresh, delete {root / 'shards'})", DATA_PROBLEM)


def _stream(args: argparse.Namespace, ds: Any, loader: Any) -> int:
    from tqdm import tqdm

    # no monitor thread: beside it, ShardLoader starts workers from its forkserver, and the first
    # epoch would wait for that server's one-time start (docs/reference.md, "Worker start and stalls")
    tqdm.monitor_interval = 0

    rates = []
    for epoch in range(args.epochs):
        ds.stats.reset()
        images = 0
        t0 = time.perf_counter()
        with tqdm(total=args.images, unit="img", desc=f"epoch {epoch}", leave=True) as bar:
            for batch in loader:
                x = batch["jpg"]
                assert x.dtype.is_floating_point is False and x.shape[1] == 3
                images += x.shape[0]
                bar.update(x.shape[0])
        dt = time.perf_counter() - t0
        rates.append(images / dt)
        print(f"epoch {epoch}: {images} images in {dt:.2f} s = {images / dt:.0f} images/s")
    print()
    print(format_stage_table(ds.stats, wall_seconds=dt, images=images))
    errors = ds.stats.errors()
    print(f"skipped: {errors if errors else 'nothing'}")
    print(f"throughput: {max(rates):.0f} images/s (best epoch of {args.epochs}, {args.workers} workers)")
    return OK
