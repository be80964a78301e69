"""Crop quality against the reference users compare with: PIL decoding the whole image, cropping
and resizing it with its antialiased bilinear filter. The bounds sit ~10% above what the
resampler measures today (BENCHMARKS.md, issue 23) and below what its previous filter gave,
so a filter that drifts from PIL's fails here; the issue's targets are mean <= 1.0 grey levels
at every DCT scale and no image above 6."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shardpipe.augment import resample
from shardpipe.augment.geometry import random_resized_crop_box
from shardpipe.devtools.synth import make_image, make_jpeg

SIZE = 224


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def pil_crop(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, h, w = box
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR, box=(left, top, left + w, top + h)))


def boxes(jpegs: list[bytes], per_image: int, seed: int) -> list[tuple[bytes, Image.Image, tuple[int, int, int, int]]]:
    """RandomResizedCrop boxes (torchvision's distribution), seeded: the same set every run."""
    rng = np.random.default_rng(seed)
    out = []
    for data in jpegs:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        out += [(data, img, random_resized_crop_box(img.height, img.width, rng)) for _ in range(per_image)]
    return out


@pytest.fixture(scope="module")
def imagenet_like() -> list[tuple[bytes, Image.Image, tuple[int, int, int, int]]]:
    """64 boxes on 16 ImageNet-sized photo-like JPEGs: mostly DCT scale 1/1, ratios 0.5-3."""
    return boxes([make_jpeg(i, plain=True) for i in range(16)], 4, seed=23)


@pytest.fixture(scope="module")
def large() -> list[tuple[bytes, Image.Image, tuple[int, int, int, int]]]:
    """24 boxes on 4 photo-like 2400x1600 JPEGs: DCT scales 1/2 and 1/4."""
    jpegs = []
    for i in range(4):
        buf = io.BytesIO()
        make_image(i, size=(2400, 1600)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    return boxes(jpegs, 6, seed=23)


@pytest.mark.parametrize("var", [0.0, 0.01, 0.09, 0.2, 0.34, 0.5, 0.51, 0.87, 1.33, 1.9])
def test_prefilter_taps_have_exactly_the_variance_asked_for(var: float) -> None:
    k = resample._taps(var).astype(np.float64)
    x = np.arange(len(k)) - len(k) // 2
    assert len(k) == (3 if var <= 0.5 else 5)
    assert np.all(k >= 0) and np.allclose(k, k[::-1]) and abs(k.sum() - 1) < 1e-6
    assert abs(float((k * x * x).sum()) - var) < 1e-4


def test_the_prefilter_tops_bilinear_sampling_up_to_the_triangles_variance() -> None:
    for ratio in (1.1, 1.25, 1.5, 2.0, 2.9):
        k = resample._kernel(ratio).astype(np.float64)
        x = np.arange(len(k)) - len(k) // 2
        r = int(ratio * 100) / 100  # the cache key's precision
        assert abs(float((k * x * x).sum()) + 1 / 6 - r * r / 6) < 1e-4, ratio


@pytest.mark.skipif(not resample.HAVE_CV2, reason="without OpenCV the resize is PIL's own")
def test_resized_crop_stays_close_to_pil(imagenet_like) -> None:
    by_ratio: dict[str, list[float]] = {"up": [], "1-2": [], "2+": []}
    for _, img, box in imagenet_like:
        out = resample.resized_crop(np.asarray(img), box, SIZE, SIZE)
        ratio = box[3] / SIZE
        by_ratio["up" if ratio < 1 else "1-2" if ratio < 2 else "2+"].append(mean_abs_diff(out, pil_crop(img, box)))
    every = [d for ds in by_ratio.values() for d in ds]
    assert all(by_ratio.values()), {k: len(v) for k, v in by_ratio.items()}  # every regime is exercised
    assert np.mean(every) <= 0.95 and max(every) <= 6.0, (np.mean(every), max(every))
    # downscales by 1-2x are where a prefilter short of the triangle's width shows (the old one: 1.47)
    assert np.mean(by_ratio["1-2"]) <= 1.35, np.mean(by_ratio["1-2"])


def test_native_crop_decode_meets_the_quality_target_at_every_dct_scale(imagenet_like, large) -> None:
    native = pytest.importorskip("shardpipe.image.decoders.native", reason="native crop decoder not built")
    from shardpipe.image.decoders.base import POWER_OF_TWO_SCALES, pick_scale

    dec = native.NativeDecoder()
    per_scale: dict[tuple[int, int], list[float]] = {}
    for data, img, box in imagenet_like + large:
        scale = pick_scale(box[3], box[2], SIZE, SIZE, POWER_OF_TWO_SCALES, dec.scale_margin)
        out = dec.decode_crop(data, box, (SIZE, SIZE))
        per_scale.setdefault(scale, []).append(mean_abs_diff(out, pil_crop(img, box)))
    assert {(1, 1), (1, 2), (1, 4)} <= set(per_scale), sorted(per_scale)
    for scale, diffs in per_scale.items():
        assert np.mean(diffs) <= 1.0 and max(diffs) <= 6.0, (scale, np.mean(diffs), max(diffs))
    assert np.mean(per_scale[(1, 1)]) <= 0.95, np.mean(per_scale[(1, 1)])  # the old filter: 1.06
