"""The loaders compared side by side, their data, and one measurement (in a child process)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shardpipe.augment import random_resized_crop_box
from shardpipe.devtools.bench.kernels import (
    OtherLoad,
    run_kernel,
    run_kernel_processes,
    shardpipe_train_kernel,
    train_transform,
)

#: what ``prepare_data`` writes: 2 = shardpipe's shards as ``shardpipe write`` makes them since progressive
#: JPEGs became baseline with restart intervals (data cached by an older version is written again)
DATA_VERSION = 2


def prepare_data(root: str, n: int, seed: int = 0, shard_size: int = 250, presize_to: int = 256) -> dict[str, Any]:
    """Write (once; reused when complete) the benchmark's data in every store format.

    ``full`` and ``presized`` are shardpipe's shards as ``shardpipe write`` makes them (JPEGs
    given restart intervals, losslessly); ``plain`` holds the same JPEGs byte for byte, as
    the other loaders' own writers store them, for every reader but shardpipe's. The LMDB store is
    written apart, only for its row (``lmdbstore.write_lmdb``): ``lmdb`` is no dependency of shardpipe.
    """
    import json
    import os

    from shardpipe.image.restart import add_restart_intervals
    from shardpipe.write.presize import presize
    from shardpipe.write.shard_writer import ShardWriter

    base = os.path.join(root, f"n{n}-seed{seed}")
    done = os.path.join(base, "ready.json")
    if os.path.exists(done):
        with open(done) as f:
            info = json.load(f)
        if info.get("version") == DATA_VERSION:  # else written by an older shardpipe (no intervals, progressive kept)
            return info
    from shardpipe.devtools.synth import make_dataset

    for sub in ("full", "plain", f"presized{presize_to}", "imagefolder"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    files: list[tuple[str, int]] = []
    total = marked = 0
    with (
        ShardWriter(os.path.join(base, "full", "train-%06d.tar"), maxcount=shard_size) as full,
        ShardWriter(os.path.join(base, "plain", "train-%06d.tar"), maxcount=shard_size) as plain,
        ShardWriter(os.path.join(base, f"presized{presize_to}", "train-%06d.tar"), maxcount=shard_size) as small,
    ):
        for key, data, label in make_dataset(n, seed, num_classes=100, workers=os.cpu_count() or 1):
            with_intervals = add_restart_intervals(data)
            full.write({"__key__": key, "jpg": with_intervals, "cls": label})
            plain.write({"__key__": key, "jpg": data, "cls": label})
            small_jpg = add_restart_intervals(presize(data, presize_to)[0])
            small.write({"__key__": key, "jpg": small_jpg, "cls": label})
            marked += len(with_intervals)
            path = os.path.join(base, "imagefolder", f"class_{label:03d}", f"{key}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            files.append((path, label))
            total += len(data)
    info = {
        "version": DATA_VERSION,
        "n": n,
        "mean_bytes": total / n,
        "mean_bytes_restart_marked": marked / n,
        "full": os.path.join(base, "full", "manifest.json"),
        "plain": os.path.join(base, "plain", "manifest.json"),
        "presized": os.path.join(base, f"presized{presize_to}", "manifest.json"),
        "files": files,
        "lmdb": os.path.join(base, "lmdb"),
    }
    with open(done, "w") as f:
        json.dump(info, f)
    return info


# -- baselines -----------------------------------------------------------------------------------


class PilTrainTransform:
    """torchvision-style training transform on a PIL image, with PIL: RandomResizedCrop
    (bilinear, antialiased), horizontal flip, then a uint8 CHW tensor (like PILToTensor)."""

    def __init__(self, size: int = 224):
        self.size = size
        self._rng: np.random.Generator | None = None

    def __call__(self, img: Any) -> Any:
        import torch
        from PIL import Image

        if self._rng is None:  # one generator per worker process
            self._rng = np.random.default_rng()
        img = img.convert("RGB")
        top, left, h, w = random_resized_crop_box(img.height, img.width, self._rng)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if self._rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(img)).permute(2, 0, 1)


class FileDataset:
    """The ImageFolder pattern: a list of (path, label); open, decode with PIL, transform."""

    def __init__(self, files: list[tuple[str, int]], size: int):
        self.files, self.transform = files, PilTrainTransform(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.files[i]
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
        return self.transform(img), label


#: the modules each candidate's loader imports: imported before the clock, as torch is (a run is 2,000 images,
#: not an import; the kernel row's imports were always outside its clock)
IMPORTS: dict[str, tuple[str, ...]] = {
    "shardpipe": ("shardpipe.dataset", "shardpipe.loader"),
    "shardpipe-batch": ("shardpipe.dataset", "shardpipe.loader", "shardpipe.batchdecode"),
    "floor": ("shardpipe.devtools.bench.floor",),
    "webdataset": ("webdataset", "PIL.Image"),
    "webdataset-simplejpeg": ("webdataset", "simplejpeg", "cv2"),
    "litdata": ("litdata", "simplejpeg", "cv2"),
    "mosaic": ("streaming.base", "simplejpeg", "cv2"),
    "spdl": ("spdl.io", "spdl.pipeline", "simplejpeg", "cv2"),
    "dali-cpu": ("nvidia.dali", "nvidia.dali.plugin.pytorch"),
    "imagefolder": ("PIL.Image",),
    "lmdb": ("lmdb", "PIL.Image"),
}


def import_loader(kind: str) -> None:
    """Import the modules ``kind``'s loader uses (``IMPORTS``), so that none is imported inside its clock."""
    import importlib

    for name in IMPORTS.get(kind, ()):
        if name == "streaming.base":
            from shardpipe.devtools.bench.peer_loaders import import_streaming

            import_streaming()  # its package __init__ needs torchvision: see there
        else:
            importlib.import_module(name)


def before_clock(cfg: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """What a candidate does before its clock starts: import its modules and resolve shardpipe's decoder
    backend (``cfg["imports_outside"]``, default on) and, for the floor, find its JPEGs' offsets (the
    floor is the kernel fed from the shards, not a tar reader). What it returns goes to ``_loader``."""
    if cfg.get("imports_outside", True):
        import_loader(cfg["kind"])
        if cfg["kind"] in ("shardpipe", "shardpipe-batch", "floor"):
            from shardpipe.image.decoders import get_decoder

            get_decoder(cfg.get("decoder", "auto"))  # its backend's modules (Pillow's plugins too), as the kernel's
    if cfg["kind"] == "floor":
        from shardpipe.devtools.bench.floor import jpeg_records

        return {"records": jpeg_records(manifest_urls(data[cfg.get("shards", "full")]))}
    return {}


def manifest_urls(manifest: str) -> list[str]:
    import json
    import os

    with open(manifest) as f:
        return [os.path.join(os.path.dirname(manifest), s["name"]) for s in json.load(f)["shards"]]


def _loader(cfg: dict[str, Any], data: dict[str, Any], ready: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(iterable of batches, ShardDataset or None) for one candidate; ``ready``: what ``before_clock`` returned."""
    from torch.utils.data import DataLoader

    kind, w, b, size, buf = cfg["kind"], cfg["workers"], cfg["batch"], cfg["size"], cfg["buffer"]
    if kind == "shardpipe":
        from shardpipe.dataset import ShardDataset
        from shardpipe.loader import ShardLoader

        ds = ShardDataset(
            data[cfg.get("shards", "full")],
            shuffle=buf,
            seed=cfg["round"],
            decoder=cfg.get("decoder", "auto"),
            transform=train_transform(size),
            num_threads=cfg.get("threads", 0),
            batch_size=b,
            channels_last=cfg.get("channels_last", False),
        )
        return ShardLoader(ds, num_workers=w), ds
    if kind == "floor":  # the kernel fed by DataLoader workers, no stages (devtools.bench.floor)
        from shardpipe.devtools.bench.floor import floor_loader

        urls = manifest_urls(data[cfg.get("shards", "full")])
        return floor_loader(urls, b, size, w, cfg["round"], (ready or {}).get("records")), None
    if kind == "shardpipe-batch":
        # workers read, untar and shuffle; the main process decodes whole batches
        # (DALI on a GPU when there is one, else crop-aware decode on CPU threads)
        from shardpipe.batchdecode import BatchDecodeLoader, resolve_batch_decoder
        from shardpipe.dataset import ShardDataset
        from shardpipe.loader import ShardLoader

        ds = ShardDataset(data["full"], shuffle=buf, seed=cfg["round"], decode="encoded", batch_size=b)
        decoder = resolve_batch_decoder(cfg.get("batch_decoder", "auto"), size=size, batch_size=b, num_threads=2)
        return BatchDecodeLoader(ShardLoader(ds, num_workers=w), decoder), ds
    if kind == "webdataset":
        import webdataset as wds

        pipe = (
            wds.WebDataset(manifest_urls(data["plain"]), shardshuffle=True, seed=cfg["round"], empty_check=False)
            .shuffle(buf)
            .decode("pil")
            .to_tuple("jpg", "cls")
            .map_tuple(PilTrainTransform(size), int)
            .batched(b)
        )
        return wds.WebLoader(pipe, batch_size=None, num_workers=w), None
    if kind == "imagefolder":
        return DataLoader(FileDataset(data["files"], size), batch_size=b, shuffle=True, num_workers=w), None
    if kind == "lmdb":
        from shardpipe.devtools.bench.lmdbstore import LmdbDataset

        return DataLoader(LmdbDataset(data["lmdb"], data["n"], size), batch_size=b, shuffle=True, num_workers=w), None
    from shardpipe.devtools.bench.peer_loaders import peer_loader

    return peer_loader(cfg, data, manifest_urls(data["plain"])), None


# -- rounds of fresh processes -------------------------------------------------------------------


def run_child(cfg: dict[str, Any], nice: int) -> dict[str, Any]:
    """``measure(cfg)`` in a fresh Python process (niced by ``nice``); its result."""
    import json
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "shardpipe.devtools.bench", "--child"]  # the config goes to stdin
    if nice and hasattr(os, "nice"):
        cmd = ["nice", "-n", str(nice), *cmd]
    # the child imports this very shardpipe, wherever the caller found it
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, input=json.dumps(cfg))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {cfg['kind']}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_bytecode(package_dir: str | None = None) -> int:
    """Compile a package's modules to bytecode, as ``pip install`` does; how many files were missing it.

    Every loader is measured as installed. The peers come from site-packages with their bytecode;
    shardpipe may run from a source tree on a machine that sets ``PYTHONDONTWRITEBYTECODE=1``,
    where each fresh process would otherwise compile shardpipe's modules inside its measured
    run (~35 CPU ms a run here, ~0.02 CPU ms/img at 2,000 images). A tree that is not writable
    is left as it is. ``package_dir``: shardpipe's own by default.
    """
    import compileall
    import importlib.util
    import os

    root = package_dir or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    written = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for path in (os.path.join(folder, name) for name in files if name.endswith(".py")):
            missing = not os.path.exists(importlib.util.cache_from_source(path))
            if compileall.compile_file(path, quiet=2) and missing:
                written += 1
    return written


def run_rounds(
    rows: dict[str, dict[str, Any]],
    data: dict[str, Any],
    rounds: int,
    nice: int,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """Every row's config measured once per round, each in a fresh process, in rotating order."""
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in rows}
    names = list(rows)
    if not names:  # every row asked for was skipped (its package is missing)
        return results
    compile_bytecode()
    load = OtherLoad()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            res = run_child({**rows[name], "round": r, "data": data}, nice)
            results[name].append(res)
            log(
                f"round {r + 1}/{rounds}  {name:34s} {res['rate']:8.0f} img/s  {1000 * res['cpu_per_image']:5.2f} CPU ms/img"
            )
    other = load.stop()
    if other is not None:
        log(f"other processes used {100 * other:.0f}% of the machine's CPU time during the run")
    return results


# -- one measurement, in a child process --------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants, live or reaped."""
    from shardpipe.devtools.bench.proctree import tree_cpu_seconds

    return tree_cpu_seconds()


def _check_batch(images: Any, cfg: dict[str, Any]) -> None:
    """Every loader must deliver the same thing: uint8 images of 3 x size x size."""
    shape, dtype = tuple(images.shape[1:]), str(images.dtype)
    if shape != (3, cfg["size"], cfg["size"]) or "uint8" not in dtype:
        raise RuntimeError(
            f"{cfg['kind']} delivered {dtype} images of shape {shape}, not uint8 (3, {cfg['size']}, ...)"
        )


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one candidate over the data once; what the parent tabulates."""
    import resource

    data = cfg["data"]
    kind = cfg["kind"]
    if kind in ("kernel", "untar-shardpipe", "untar-webdataset"):
        return _measure_simple(cfg, data)
    # torch (~1 s of CPU to import) and each loader's own modules come before the clock, as the
    # kernel's always did: every loader here runs on torch, and a run is 2000 images, not an import
    import torch.utils.data  # noqa: F401

    ready = before_clock(cfg, data)
    own = resource.getrusage(resource.RUSAGE_SELF)
    m0 = own.ru_utime + own.ru_stime
    c0, t0 = _cpu_seconds(), time.perf_counter()
    loader, ds = _loader(cfg, data, ready)  # counted: some loaders read indexes or start work here
    n = n_first = 0
    t_first = t0
    for batch in loader:
        images = batch["jpg"] if isinstance(batch, dict) else batch[0]
        if n == 0:
            t_first, n_first = time.perf_counter(), len(images)
            _check_batch(images, cfg)
        n += len(images)
    t1 = time.perf_counter()
    cpu = _cpu_seconds() - c0  # before the loader shuts down: its workers are still alive here
    from shardpipe.devtools.bench.proctree import worker_peak_rss_mb

    workers_rss, worker_rss = worker_peak_rss_mb()
    decoded = getattr(loader, "images", 0)
    decode_seconds = getattr(loader, "decode_seconds", 0.0)
    del loader  # joins the workers, so their rusage is counted
    import gc

    gc.collect()
    own = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {
        "images": n,
        "rate": (n - n_first) / max(t1 - t_first, 1e-9),
        "rate_total": n / (t1 - t0),
        "first_batch_s": t_first - t0,
        "cpu_per_image": cpu / max(n, 1),
        "main_cpu_per_image": (own.ru_utime + own.ru_stime - m0) / max(n, 1),
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": worker_rss,
        "rss_workers_mb": workers_rss,
    }
    if ds is not None:
        out["stages"] = ds.stats.stage_table()
        if decoded:  # a BatchDecodeLoader: decode ran in this process, on whole batches
            out["stages"]["decode"] = 1000.0 * decode_seconds / decoded
    return out


def _measure_simple(cfg: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The kernel ceiling (images in memory; ``workers`` processes or threads) or untar + group."""
    import resource

    urls = manifest_urls(data[cfg.get("shards", "full")])
    c0 = _cpu_seconds()
    if cfg["kind"] == "kernel":
        from shardpipe.dataset import ShardDataset

        items = [s["jpg"] for s in ShardDataset(urls, decode=None)]
        fn = shardpipe_train_kernel(cfg.get("decoder", "auto"), cfg["size"])
        run_kernel(fn, items[:32], 1)  # warm up
        c0 = _cpu_seconds()
        if cfg.get("mode") == "processes":
            rate = run_kernel_processes(fn, items, cfg["workers"])
        else:
            rate = run_kernel(fn, items, cfg["workers"])
        n = len(items)
    else:
        t0 = time.perf_counter()
        if cfg["kind"] == "untar-shardpipe":
            from shardpipe.dataset import ShardDataset

            n = sum(1 for _ in ShardDataset(urls, decode=None))
        else:
            import webdataset as wds

            n = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False))
        rate = n / (time.perf_counter() - t0)
    return {
        "images": n,
        "rate": rate,
        "cpu_per_image": (_cpu_seconds() - c0) / n,
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
