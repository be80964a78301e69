"""Per-image kernels (PIL torchvision-style and shardpipe's), timing loops and tables.

Used by ``tools/bench_kernels.py`` (images/s per core, threads and processes) and by the
loader benchmark's kernel ceiling.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop, random_resized_crop_box
from shardpipe.augment.base import SampleRngs
from shardpipe.image.fused import build_image_fn

ImageFn = Callable[[bytes, np.random.Generator], np.ndarray]


def photo_jpegs(n: int, seed: int = 0, workers: int = 0) -> list[bytes]:
    """``n`` generated ImageNet-like JPEGs (``shardpipe.devtools.synth``), deterministic."""
    from shardpipe.devtools.synth import make_dataset

    return [data for _, data, _ in make_dataset(n, seed, workers=workers)]


# -- reference kernels ---------------------------------------------------------------------


def pil_train_kernel(size: int = 224) -> ImageFn:
    """What a torchvision-style PIL loader does per image: decode the whole image with PIL,
    convert to RGB, crop a RandomResizedCrop box, resize it bilinearly (antialiased), flip."""
    from PIL import Image

    def fn(data: bytes, rng: np.random.Generator) -> np.ndarray:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        top, left, h, w = random_resized_crop_box(img.height, img.width, rng)
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(img)

    return fn


def train_transform(size: int = 224) -> Compose:
    """The benchmark's training augmentation: RandomResizedCrop(size) + horizontal flip."""
    return Compose([RandomResizedCrop(size), RandomHorizontalFlip()])


def shardpipe_train_kernel(decoder: str = "auto", size: int = 224, fuse: bool = True, **kw: Any) -> ImageFn:
    """shardpipe's per-image function for the training augmentation."""
    return build_image_fn(decoder, train_transform(size), fuse=fuse, **kw)


def decode_kernel(decoder: str) -> ImageFn:
    """Decode only (whole image to RGB)."""
    return build_image_fn(decoder, None)


# -- timing ----------------------------------------------------------------------------------


def run_kernel(fn: ImageFn, items: Sequence[bytes], threads: int = 1, cpu_clock: bool = False) -> float:
    """Images/s of ``fn`` over ``items`` on ``threads`` threads (each takes a contiguous slice).

    A per-sample generator is derived for each image, as the pipeline does (``SampleRngs``).
    ``cpu_clock`` (one thread): images per CPU-second of this thread, which other load on
    the machine disturbs far less than wall time.
    """
    keys = [f"sample-{i:06d}" for i in range(len(items))]
    rngs = SampleRngs()  # per thread

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            fn(items[i], rngs(0, 0, keys[i]))

    if threads <= 1:
        clock = time.thread_time if cpu_clock else time.perf_counter
        t0 = clock()
        work(0, len(items))
        return len(items) / (clock() - t0)
    bounds = np.linspace(0, len(items), threads + 1).astype(int)
    pool = [threading.Thread(target=work, args=(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(items) / (time.perf_counter() - t0)


def run_kernel_processes(fn: ImageFn, items: Sequence[bytes], processes: int) -> float:
    """Images/s of ``fn`` over ``items`` split across ``processes`` forked processes."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    bounds = np.linspace(0, len(items), processes + 1).astype(int)
    keys = [f"sample-{i:06d}" for i in range(len(items))]
    rngs = SampleRngs()  # per thread

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            fn(items[i], rngs(0, 0, keys[i]))

    procs = [ctx.Process(target=work, args=(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"kernel process failed: exit codes {[p.exitcode for p in procs]}")
    return len(items) / (time.perf_counter() - t0)


def alternate(candidates: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every candidate once per round, in rotating order; collect what each returns."""
    names = list(candidates)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            out[name].append(candidates[name]())
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [
        [
            f"{v:,.0f}" if isinstance(v, float) and abs(v) >= 100 else (f"{v:.2f}" if isinstance(v, float) else str(v))
            for v in row
        ]
        for row in rows
    ]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    body = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([line, "-" * len(line), *body])


class OtherLoad:
    """How busy other processes kept the machine while we measured (Linux ``/proc/stat``).

    ``stop()`` returns the share of all CPUs' time used by processes outside this one and
    its children: a benchmark run with a large share is disturbed and worth repeating.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        import os
        import resource

        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - fields[4]) / tick  # all but idle and iowait
        total = sum(fields) / tick
        own = sum(
            getattr(resource.getrusage(w), k)
            for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for k in ("ru_utime", "ru_stime")
        )
        return busy, total, own

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        busy, total, own = (b - a for a, b in zip(self._start, end))
        return max(0.0, busy - own) / total if total > 0 else None
