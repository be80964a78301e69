"""Deterministic photo-like test images and JPEGs, so tests and benchmarks never download data.

Every image is a pure function of ``(index, seed)``. The content is built to compress like a
photo: smooth low-frequency colour gradients and illumination, hard-edged shapes (ellipses,
polygons, rectangles), band-limited texture whose strength differs per region, and fine
sensor-like noise. Sizes follow ImageNet's shape: mostly 500x375, ~25% portrait, some varied
aspect ratios (0.6-1.8), ~8% large (long side 1000-1600) and ~3% small (long side < 256).

Special JPEGs (unless ``plain=True``), by ``index % 50``:
  ``7`` greyscale ('L'), ``17`` CMYK (Adobe), ``27`` progressive RGB. Everything else is a
  baseline RGB JPEG with 4:2:0 chroma subsampling and quality 88-92.
Labels are ``index % num_classes``.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPECIAL_PERIOD = 50
GREY_INDEX = 7  #: index % 50 == 7 -> greyscale JPEG
CMYK_INDEX = 17  #: index % 50 == 17 -> CMYK JPEG
PROGRESSIVE_INDEX = 27  #: index % 50 == 27 -> progressive JPEG
TEXTURE = 100.0  # peak texture amplitude (grey levels); tuned for ~110 KB mean JPEGs
NOISE = (3.0, 5.0)  # sensor-noise std range (grey levels)


def _rng(index: int, seed: int, stream: int) -> np.random.Generator:
    """An independent random stream per (seed, index, purpose)."""
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index} seed={seed}")
    return np.random.default_rng([seed, index, stream])


def image_size(index: int, seed: int = 0) -> tuple[int, int]:
    """The ``(width, height)`` that ``make_image(index, seed)`` uses by default."""
    r = _rng(index, seed, 0)
    u = r.random()
    if u < 0.50:
        return 500, 375
    if u < 0.66:
        return 375, 500
    if u < 0.89:  # varied aspect, long side 500
        aspect = r.uniform(0.6, 1.8)
        return (500, round(500 / aspect)) if aspect >= 1 else (round(500 * aspect), 500)
    # large (8%) or small (3%) with a camera-like aspect, 20% of them portrait
    long = int(r.integers(1000, 1601)) if u < 0.97 else int(r.integers(96, 256))
    short = round(long / r.uniform(1.25, 1.5))
    return (short, long) if r.random() < 0.2 else (long, short)


def _field(r: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise of shape (h, w), unit-ish amplitude, features about ``cell`` px wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = Image.fromarray(r.standard_normal((gh, gw), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((w, h), Image.BICUBIC))


def _low_res(r: np.random.Generator, h: int, w: int) -> tuple[Image.Image, Image.Image]:
    """Background colours (RGB) and illumination (F), built small and upsampled: they are smooth."""
    bh, bw = max(2, -(-h // 8)), max(2, -(-w // 8))
    c0, c1 = r.uniform(0, 255, 3).astype(np.float32), r.uniform(0, 255, 3).astype(np.float32)
    theta = r.uniform(0, 2 * np.pi)
    t = np.arange(bw, dtype=np.float32)[None, :] * np.cos(theta) + np.arange(bh, dtype=np.float32)[:, None] * np.sin(
        theta
    )
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    base = c0 + (c1 - c0) * t[..., None]
    base += 35 * np.stack([_field(r, bh, bw, max(bh, bw) / 3) for _ in range(3)], axis=-1)
    vy = ((np.arange(bh, dtype=np.float32) + 0.5) / bh - 0.5) ** 2
    vx = ((np.arange(bw, dtype=np.float32) + 0.5) / bw - 0.5) ** 2
    light = (1 + 0.2 * _field(r, bh, bw, max(bh, bw) / 2)) * (1 - 0.35 * (vy[:, None] + vx[None, :]))
    rgb = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB").resize((w, h), Image.BICUBIC)
    return rgb, Image.fromarray(light.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC)


def make_image(index: int, seed: int = 0, *, size: tuple[int, int] | None = None) -> Image.Image:
    """A deterministic photo-like RGB image for ``(index, seed)``; ``size`` is (width, height)."""
    w, h = size if size is not None else image_size(index, seed)
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {(w, h)}")
    r = _rng(index, seed, 1)
    long = max(w, h)
    zoom = max(1.0, long / 500)  # big images have proportionally bigger features, like photos
    canvas, light = _low_res(r, h, w)

    # Hard-edged shapes over the background; each region gets its own texture strength.
    regions = Image.new("L", (w, h), 0)
    paint, label = ImageDraw.Draw(canvas), ImageDraw.Draw(regions)
    n_shapes = int(r.integers(4, 10))
    for k in range(1, n_shapes + 1):
        cx, cy = r.uniform(-0.1, 1.1) * w, r.uniform(-0.1, 1.1) * h
        rad = r.uniform(0.05, 0.4) * long
        colour = tuple(int(v) for v in r.integers(0, 256, 3))
        kind = r.integers(3)
        if kind == 0:
            rx, ry = rad, rad * r.uniform(0.3, 1.0)
            box = [cx - rx, cy - ry, cx + rx, cy + ry]
            paint.ellipse(box, fill=colour)
            label.ellipse(box, fill=k)
        else:
            n_vert = 4 if kind == 1 else int(r.integers(3, 8))
            angles = np.sort(r.uniform(0, 2 * np.pi, n_vert))
            radii = rad * r.uniform(0.5, 1.0, n_vert)
            pts = [(float(cx + a * np.cos(b)), float(cy + a * np.sin(b))) for a, b in zip(radii, angles)]
            paint.polygon(pts, fill=colour)
            label.polygon(pts, fill=k)
    img = np.asarray(canvas, dtype=np.float32)

    # Band-limited texture at two scales (luminance, slightly tinted), strength per region.
    strength = (TEXTURE * r.uniform(0.05, 1, n_shapes + 1) ** 1.5).astype(np.float32)
    texture = _field(r, h, w, r.uniform(5, 10) * zoom) * 0.6 + _field(r, h, w, r.uniform(1.5, 2.5) * zoom)
    texture *= np.take(strength, np.asarray(regions))
    img += texture[..., None] * r.uniform(0.7, 1.3, 3).astype(np.float32)

    # Illumination shading, then fine sensor noise: uniform, from random bytes through a
    # 256-entry table (several times cheaper than Gaussian floats; looks the same).
    img *= np.asarray(light)[..., None]
    levels = (np.arange(256, dtype=np.float32) - 127.5) * np.float32(r.uniform(*NOISE) * 3.46 / 256)
    img += np.take(levels, np.frombuffer(r.bytes(h * w * 3), np.uint8).reshape(h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def jpeg_quality(index: int, seed: int = 0) -> int:
    """The default JPEG quality (88-92) of ``index``."""
    return int(_rng(index, seed, 2).integers(88, 93))


def make_jpeg(index: int, seed: int = 0, *, quality: int | None = None, plain: bool = False) -> bytes:
    """``make_image(index, seed)`` encoded as JPEG; special modes by ``index % 50`` unless ``plain``."""
    img = make_image(index, seed)
    q = jpeg_quality(index, seed) if quality is None else quality
    special = -1 if plain else index % SPECIAL_PERIOD
    options: dict = {}
    if special == GREY_INDEX:
        img = img.convert("L")
    elif special == CMYK_INDEX:
        img = img.convert("CMYK")
    elif special == PROGRESSIVE_INDEX:
        options["progressive"] = True
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q, **options)
    return buf.getvalue()


def _item(index: int, seed: int, num_classes: int) -> tuple[str, bytes, int]:
    return f"sample-{index:06d}", make_jpeg(index, seed), index % num_classes


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_dataset(n: int, seed: int = 0, num_classes: int = 10, *, workers: int = 0) -> Iterator[tuple[str, bytes, int]]:
    """Yield ``(key, jpeg_bytes, label)`` for indices ``0..n-1`` in order.

    ``workers > 1`` generates in that many processes (order preserved).
    """
    if n < 0 or num_classes < 1:
        raise ValueError(f"need n >= 0 and num_classes >= 1, got n={n} num_classes={num_classes}")
    item = partial(_item, seed=seed, num_classes=num_classes)
    if workers <= 1 or n < 2:
        yield from map(item, range(n))
        return
    # spawn: safe even when the parent has threads (torch); the cost is one import per worker.
    # Ctrl-C reaches the whole process group: the parent stops the pool, the workers print nothing
    with mp.get_context("spawn").Pool(workers, initializer=_ignore_sigint) as pool:
        yield from pool.imap(item, range(n), chunksize=8)


def write_image_folder(
    root: str | Path, n: int, num_classes: int = 10, seed: int = 0, *, workers: int = 0
) -> list[tuple[str, int]]:
    """Write an ImageFolder tree ``root/class_XX/img-NNNNNN.jpg``; return (relative path, class)."""
    root = Path(root)
    out = []
    for key, data, label in make_dataset(n, seed, num_classes, workers=workers):
        rel = f"class_{label:02d}/img-{key.rsplit('-', 1)[1]}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out.append((rel, label))
    return out


def write_flat_folder(
    root: str | Path, n: int, num_classes: int = 10, seed: int = 0, *, workers: int = 0
) -> list[tuple[str, int]]:
    """Write webdataset-style files ``root/sample-NNNNNN.jpg`` + ``.cls``; return (jpg path, class)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for key, data, label in make_dataset(n, seed, num_classes, workers=workers):
        (root / f"{key}.jpg").write_bytes(data)
        (root / f"{key}.cls").write_text(str(label))
        out.append((f"{key}.jpg", label))
    return out
