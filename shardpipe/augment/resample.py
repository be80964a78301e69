"""Resampling kernels on uint8 arrays: antialiased resize, resized crops, YUV-plane crops.

PIL and torchvision's antialiased bilinear resize weigh the source with a triangle as
wide as the scale ratio ``r``. With OpenCV installed we get nearly the same result several
times faster (within about a grey level on photos, BENCHMARKS.md; on pixel-level noise the
two filters cut detail differently: white noise differs by a mean of 1.4-6 levels, most near
ratios 1.6 and 3.4): a small separable
prefilter whose variance tops bilinear sampling's own up to the triangle's (``r^2 / 6``
source pixels squared), then bilinear sampling; beyond ``r = 3``, first exact k x k block
means (OpenCV's fast integer ``INTER_AREA``), counted in the variance. The prefilter's
3 or 5 taps have exactly that variance (a Gaussian sampled at whole pixels and cut to a few
taps falls well short of it for small ratios, which left crops near full size too sharp).
Upscaling is bilinear. Without OpenCV, PIL's antialiased bilinear does the work, one channel
at a time (``split_channels``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

try:
    import cv2

    # shardpipe parallelises with its own threads and worker processes; OpenCV's internal
    # thread pool would only oversubscribe the cores, and after a fork (DataLoader workers)
    # a pool inherited from the parent deadlocks the child
    cv2.setNumThreads(1)
except ImportError:  # OpenCV is optional (pip install opencv-python-headless)
    cv2 = None  # type: ignore[assignment]

HAVE_CV2 = cv2 is not None
#: below this downscale ratio, plain bilinear sampling (the prefilter would be a no-op)
_BLUR_FROM = 1.05
#: above this ratio, average k x k blocks first
_BLOCKS_FROM = 3.0
_KERNELS: dict[int, np.ndarray] = {}


def _block(ratio: float) -> int:
    """The block size averaged before filtering a downscale by ``ratio``."""
    return math.ceil(ratio / _BLOCKS_FROM) if ratio > _BLOCKS_FROM else 1


def _taps(var: float) -> np.ndarray:
    """A symmetric smoothing kernel whose variance is exactly ``var`` (pixels squared, <= 2).

    Up to 0.5: 3 taps ``[a, 1 - 2a, a]`` with ``2a = var``; above: a 5-tap Gaussian whose
    width is solved (by bisection) so that the taps' own variance is ``var``.
    """
    if var <= 0.5:
        a = max(0.0, var) / 2.0
        return np.array([a, 1.0 - 2.0 * a, a], np.float32)
    var = min(var, 1.99)  # a flat 5-tap kernel's variance is 2: the most 5 taps can do
    x2 = (np.arange(5, dtype=np.float64) - 2.0) ** 2
    lo, hi = 0.1, 1e3
    for _ in range(60):  # the taps' variance grows with the Gaussian's
        mid = 0.5 * (lo + hi)
        w = np.exp(-0.5 * x2 / mid)
        if float((w * x2).sum() / w.sum()) < var:
            lo = mid
        else:
            hi = mid
    w = np.exp(-0.5 * x2 / (0.5 * (lo + hi)))
    return (w / w.sum()).astype(np.float32)


def _kernel(ratio: float, block: int = 1) -> np.ndarray:
    """The prefilter (3 or 5 taps) that, after ``block`` means, widens bilinear sampling's
    footprint to a ``ratio``-wide triangle; cached by ratio/100."""
    key = int(ratio * 100) * 64 + block
    k = _KERNELS.get(key)
    if k is None:
        r = key // 64 / 100.0
        # variances in the (block-reduced) grid: triangle r^2/6, box (b^2-1)/12, bilinear 1/6
        var = max(0.0, (r * r / 6.0 - (block * block - 1) / 12.0) / (block * block) - 1.0 / 6.0)
        k = _KERNELS[key] = _taps(var)
    return k


def fits(out: np.ndarray | None, height: int, width: int, channels: int) -> bool:
    """True when ``out`` can take a ``(height, width, channels)`` uint8 result as it is."""
    return (
        out is not None
        and out.shape == (height, width, channels)
        and out.dtype == np.uint8
        and out.flags.c_contiguous
        and out.flags.writeable
    )


def _bilinear(region: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Bilinear resize of the whole ``region`` (pixel centres aligned, edges replicated),
    into ``out`` when it fits.

    ``cv2.warpAffine`` rather than ``cv2.resize(INTER_LINEAR)``: the latter's uint8 SIMD
    path truncates, darkening every image by ~0.1 grey levels, and its exact variant costs
    3.5x more; warpAffine rounds correctly and is the fastest of the three (BENCHMARKS.md).
    """
    h, w = region.shape[:2]
    sx, sy = w / width, h / height
    m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
    return _warp(region, m, height, width, out)


def _warp(region: np.ndarray, m: np.ndarray, height: int, width: int, out: np.ndarray | None) -> np.ndarray:
    dst = out if region.ndim == 3 and fits(out, height, width, region.shape[2]) else None
    return cv2.warpAffine(
        region,
        m,
        (width, height),
        dst=dst,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of an HxW or HxWxC uint8 array to ``(height, width)``."""
    h, w = img.shape[:2]
    if h == height and w == width:
        return img
    return resized_crop(img, (0, 0, h, w), height, width)


def _is_integral(*values: float) -> bool:
    return all(float(v).is_integer() for v in values)


def resized_crop(
    img: np.ndarray,
    box: tuple[float, float, float, float],
    height: int,
    width: int,
    out: np.ndarray | None = None,
    window: bool = False,
) -> np.ndarray:
    """Resize the ``box`` = (top, left, h, w) of ``img`` to ``(height, width)``, antialiased.

    The box may have fractional bounds (a box mapped onto a DCT-scaled image): output
    pixels are then sampled at their exact positions, since a half-pixel shift is visible
    on fine texture. See the module docstring for the filter.

    ``out``: where to write the result if it ``fits`` (e.g. a row of a batch: the pixels are
    then written once); the result then lies in ``out``'s memory, else in a new array.
    ``window``: the box is a window onto the whole image resized (``Resize`` + ``CenterCrop``),
    so the pixels around it weigh in at its edges as they do there; by default the box is a
    crop whose own edge pixels extend it (``RandomResizedCrop``), where it is whole pixels.
    """
    top, left, bh, bw = (float(v) for v in box)
    if cv2 is None:
        return _pil_resized_crop(img, (left, top, left + bw, top + bh), height, width)
    rx, ry = bw / width, bh / height
    kx, ky = _block(rx), _block(ry)
    blur = rx > _BLUR_FROM or ry > _BLUR_FROM
    if kx == 1 and ky == 1 and not window and _is_integral(top, left, bh, bw):  # the common case
        t, lft = int(top), int(left)
        region = img[t : t + int(bh), lft : lft + int(bw)]
        if blur:
            region = cv2.sepFilter2D(region, -1, _kernel(rx), _kernel(ry), borderType=cv2.BORDER_REFLECT)
        return _bilinear(region, height, width, out).reshape(height, width, *img.shape[2:])
    # the rows and columns the output reads, plus the filters' margins
    t0, l0 = max(0, int(top) - 3 * ky), max(0, int(left) - 3 * kx)
    t1, l1 = min(img.shape[0], int(top + bh) + 4 * ky), min(img.shape[1], int(left + bw) + 4 * kx)
    region = img[t0:t1, l0:l1]
    top, left = top - t0, left - l0
    if kx > 1 or ky > 1:  # exact block means (OpenCV's fast integer area path)
        rh, rw = region.shape[0] // ky, region.shape[1] // kx
        region = cv2.resize(region[: rh * ky, : rw * kx], (rw, rh), interpolation=cv2.INTER_AREA)
        top, left, bh, bw = top / ky, left / kx, bh / ky, bw / kx
    if blur:
        region = cv2.sepFilter2D(region, -1, _kernel(rx, kx), _kernel(ry, ky), borderType=cv2.BORDER_REFLECT)
    sx, sy = bw / width, bh / height
    # dst pixel centre (x + .5) -> source position left + (x + .5) * sx, as a pixel-centre index
    m = np.array([[sx, 0.0, left + 0.5 * sx - 0.5], [0.0, sy, top + 0.5 * sy - 0.5]])
    return _warp(region, m, height, width, out).reshape(height, width, *img.shape[2:])


def _pil_resized_crop(img: np.ndarray, box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """``resized_crop`` without OpenCV: PIL's antialiased bilinear on each channel (see ``split_channels``).

    uint8 channels resize as ``"L"`` images (to the bit what PIL does to an RGB image), others as ``"F"``.
    """
    dtype = np.uint8 if img.dtype == np.uint8 else np.float32
    bands = [band(c, dtype).resize((width, height), Image.BILINEAR, box=box) for c in split_channels(img)]
    return stack(bands, img)


def split_channels(img: np.ndarray) -> list[np.ndarray]:
    """The channels of an HxW or HxWxC array, each HxW.

    PIL's fallbacks work on one channel at a time: its modes take no (H, W, 1) array nor most
    multichannel dtypes, and it premultiplies alpha ("LA", "RGBA") when it resamples, which
    changes colours near (and under) transparent pixels; OpenCV's paths treat channels alike.
    """
    flat = img.reshape(img.shape[0], img.shape[1], -1)
    return [flat[:, :, c] for c in range(flat.shape[2])]


def band(channel: np.ndarray, dtype: type[np.generic]) -> Image.Image:
    """An HxW channel as a one-band PIL image: ``"L"`` for ``np.uint8``, ``"F"`` for ``np.float32``."""
    return Image.fromarray(np.ascontiguousarray(channel, dtype=dtype))


def stack(bands: list[Image.Image], like: np.ndarray) -> np.ndarray:
    """One-band results back in ``like``'s layout (HxW or HxWxC) and dtype; integers rounded and clipped."""
    out = np.stack([np.asarray(b) for b in bands], axis=2)
    if out.dtype != like.dtype and np.issubdtype(like.dtype, np.integer):
        info = np.iinfo(like.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(like.dtype, copy=False).reshape(*out.shape[:2], *like.shape[2:])


def yuv_resized_crop(
    planes: list[np.ndarray],
    image_hw: tuple[int, int],
    subsampling: tuple[int, int],
    box: tuple[float, float, float, float],
    height: int,
    width: int,
    window: bool = False,
) -> np.ndarray:
    """Crop ``box`` from decoded JPEG planes and resize it to RGB ``(height, width)``.

    ``planes`` are ``[Y]`` or ``[Y, Cb, Cr]`` (rows may be padded beyond ``image_hw``, the
    luma size); ``subsampling`` is the chroma's (horizontal, vertical) factor. Luma is
    resized like ``resized_crop``. Chroma is resampled the same way (JPEG's centred siting)
    to the output size divided by the subsampling factors, since it carries no more
    detail than that, then upsampled bilinearly: what libjpeg's "fancy" upsampling does,
    on output pixels only.
    Only the output pixels are colour-converted; ``window`` as in ``resized_crop``. Needs OpenCV.
    """
    h, w = image_hw
    luma = resized_crop(planes[0][:h, :w], box, height, width, window=window)
    if len(planes) == 1:
        return cv2.cvtColor(luma, cv2.COLOR_GRAY2RGB)
    top, left, bh, bw = box
    sx, sy = subsampling
    # chroma at the output size divided by the subsampling: a pixel there stands for sy x sx
    # output pixels, so the chroma box spans sy * ch rows and sx * cw columns of the output
    ch, cw = -(-height // sy), -(-width // sx)
    cbox = (top / sy, left / sx, ch * bh / height, cw * bw / width)
    chroma = []
    for plane in (planes[2], planes[1]):  # Cr, Cb: OpenCV's YCrCb order
        small = resized_crop(plane, cbox, ch, cw, window=window)
        if sx > 1 or sy > 1:
            small = _bilinear(small, sy * ch, sx * cw)[:height, :width]
        chroma.append(small)
    return cv2.cvtColor(cv2.merge((luma, *chroma)), cv2.COLOR_YCrCb2RGB)
