"""Build the per-image function that turns image bytes into an augmented RGB array.

``build_image_fn(decoder, transform)`` returns ``fn(data, rng) -> np.ndarray``. When the
transform is (or starts with) ``RandomResizedCrop``, ``Resize`` (optionally followed by
``CenterCrop``) or ``CenterCrop``, decode and geometry are fused ("crop-aware decode"):

1. read ``(width, height)`` from the header (no pixels decoded);
2. draw the crop box exactly as the unfused transform would (same ``rng`` draws, so the
   output distribution and the per-seed result are those of decode-then-crop);
3. pick the smallest DCT scale that keeps the scaled box at least the output size, and
   let libjpeg-turbo decode at that scale (its 1/2, 1/4, 1/8 IDCTs are the fast ones);
   a backend with ``decode_crop`` (the native decoder) decodes only the box's pixels;
4. crop and resize with an antialiasing filter (optionally, ``yuv=True``, at full scale
   with the PyTurboJPEG backend and OpenCV: crop the YUV planes instead, so that chroma
   upsampling and colour conversion run on the output pixels only; the decode is ~10%
   faster, but the extra resampling eats the gain here, so it is off by default);
5. apply the rest of the Compose (flips, colour, ...).

Every function built here is thread-safe: it keeps no state between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from shardpipe.augment.base import Compose, Transform, as_transform
from shardpipe.augment.geometry import CenterCrop, RandomResizedCrop, Resize
from shardpipe.augment.resample import HAVE_CV2, resized_crop, yuv_resized_crop
from shardpipe.image.decoders import ImageDecoder, get_decoder
from shardpipe.image.decoders.base import POWER_OF_TWO_SCALES, Scale, pick_scale, scaled_dim


class ImageFn(Protocol):
    """``fn(data, rng, out=None)``: image bytes to an augmented RGB uint8 HWC array.

    ``out`` (a hint): an array the result may be written into, such as the image's row of
    a batch, so that its pixels are written once; the result lies in ``out``'s memory when
    it was used, else elsewhere (the caller then copies it, as it would without ``out``).
    """

    def __call__(self, data: bytes, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray: ...


Box = tuple[float, float, float, float]  # top, left, height, width (pixels of the full image)

#: "pow2": DCT scales 1/1, 1/2, 1/4, 1/8 only (libjpeg-turbo's SIMD IDCTs: measured faster
#: end to end); "all": every n/8 scale the backend offers (less resizing, slower IDCT)
SCALE_POLICIES = ("pow2", "all", "none")


def _chroma_subsampling(sampling: tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
    """(horizontal, vertical) chroma factors of a 3-component YCbCr frame, if regular."""
    (yh, yv), (bh, bv), (rh, rv) = sampling
    if (bh, bv) != (rh, rv) or yh % bh or yv % bv or yh < max(bh, rh) or yv < max(bv, rv):
        return None
    return yh // bh, yv // bv


class FusedDecoder:
    """Decode ``box`` of an image straight to an ``(out_h, out_w)`` RGB array."""

    def __init__(self, decoder: ImageDecoder, scales: str = "pow2", yuv: bool = False):
        if scales not in SCALE_POLICIES:
            raise ValueError(f"scales must be one of {SCALE_POLICIES}, not {scales!r}")
        self.image_decoder = decoder
        offered: tuple[Scale, ...] = tuple(getattr(decoder, "scale_factors", ((1, 1),)))
        if scales == "pow2":
            offered = tuple(s for s in offered if s in POWER_OF_TWO_SCALES)
        elif scales == "none" or not hasattr(decoder, "decode_scaled"):
            offered = ((1, 1),)
        self.factors = offered
        self.yuv = yuv and HAVE_CV2 and hasattr(decoder, "decode_yuv")
        #: ``decode_crop(data, box, (out_h, out_w), factors)``, where the backend has one
        self.crop = getattr(decoder, "decode_crop", None)
        self._probe = getattr(decoder, "probe", None) if self.crop is not None else None

    def size(self, data: bytes) -> tuple[int, int]:
        return self.image_decoder.size(data)

    def probe(self, data: bytes) -> tuple[int, int, Any]:
        """``(width, height, header)``: a backend with ``probe`` (the native decoder) parses the
        header once for the size and the decode; others give ``None`` as the header."""
        if self._probe is not None:
            return self._probe(data)  # type: ignore[no-any-return]
        width, height = self.image_decoder.size(data)
        return width, height, None

    def decode_box(
        self,
        data: bytes,
        width: int,
        height: int,
        box: Box,
        out_h: int,
        out_w: int,
        header: Any = None,
        out: np.ndarray | None = None,
        window: bool = False,
    ) -> np.ndarray:
        """The ``box`` of the ``width`` x ``height`` image in ``data``, resized to (out_h, out_w);
        ``header``: what :meth:`probe` returned for ``data``, if it was called; ``out``: see ``ImageFn``;
        ``window``: the box is a window onto the resized whole image (see ``resample.resized_crop``)."""
        if self.crop is not None:  # the backend decodes only the box (the native decoder)
            if self._probe is not None and header is not None:
                return self.crop(data, box, (out_h, out_w), self.factors, header, out=out, window=window)
            return self.crop(data, box, (out_h, out_w), self.factors, out=out, window=window)
        top, left, bh, bw = box
        scale = pick_scale(int(bw), int(bh), out_w, out_h, self.factors)
        f = scale[0] / scale[1]
        # YUV planes at full scale only: when scaling, libjpeg reconstructs subsampled chroma
        # at twice the planes' resolution on the RGB route (a larger chroma IDCT), which the
        # planes cannot match
        if self.yuv and scale == (1, 1):
            got = self.image_decoder.decode_yuv(data, scale)  # type: ignore[attr-defined]
            if got is not None:
                planes, hdr = got
                sub = (1, 1) if len(planes) == 1 else _chroma_subsampling(hdr.sampling)
                if sub is not None:
                    return yuv_resized_crop(planes, (height, width), sub, box, out_h, out_w, window)
        if scale == (1, 1) or not hasattr(self.image_decoder, "decode_scaled"):
            img = self.image_decoder.decode(data)
        else:
            img = self.image_decoder.decode_scaled(data, scale)  # type: ignore[attr-defined]
        fy = f if img.shape[0] == scaled_dim(height, scale) else img.shape[0] / height
        fx = f if img.shape[1] == scaled_dim(width, scale) else img.shape[1] / width
        return resized_crop(img, (top * fy, left * fx, bh * fy, bw * fx), out_h, out_w, out, window)


def _split(t: Transform) -> tuple[Transform, list[Transform]]:
    if isinstance(t, Compose) and t.transforms:
        return t.transforms[0], list(t.transforms[1:])
    return t, []


def _apply_rest(
    img: np.ndarray, rest: list[Transform], rng: np.random.Generator, out: np.ndarray | None = None
) -> np.ndarray:
    """The transforms after the fused geometry; the last one writes into ``out`` where it can."""
    for i, t in enumerate(rest):
        img = t.into(img, rng, out) if out is not None and i == len(rest) - 1 else t(img, rng)
    return img


def fusable(transform: Callable[..., Any] | None) -> bool:
    """True when ``transform`` starts with a geometry the decode can be fused with
    (``RandomResizedCrop``, ``Resize`` or ``CenterCrop``): :func:`build_image_fn` fuses exactly these."""
    if transform is None:
        return False
    first, _ = _split(as_transform(transform))
    return isinstance(first, (RandomResizedCrop, Resize, CenterCrop))


def build_image_fn(
    decoder: str | ImageDecoder = "auto",
    transform: Callable[..., Any] | None = None,
    *,
    fuse: bool = True,
    scales: str = "pow2",
    yuv: bool = False,
) -> ImageFn:
    """Return ``fn(data, rng)``: decode ``data`` to RGB uint8 HWC and apply ``transform``.

    ``fuse=False`` always decodes the whole image first (the reference behaviour);
    ``scales`` picks the DCT scales the fused path may use (see ``SCALE_POLICIES``);
    ``yuv=True`` takes the YUV-plane route where it applies (see the module docstring).
    """
    dec = get_decoder(decoder) if isinstance(decoder, str) else decoder
    if transform is None:
        return lambda data, rng, out=None: dec.decode(data)
    t: Transform = as_transform(transform)
    first, rest = _split(t)
    if not fuse or not fusable(first):
        return lambda data, rng, out=None: t(dec.decode(data), rng)
    fused = FusedDecoder(dec, scales, yuv)
    if isinstance(first, CenterCrop):
        return _centre_crop_fn(fused, t, first, rest)

    if isinstance(first, RandomResizedCrop):
        rrc = first
        out_h, out_w = rrc.size

        def rrc_fn(data: bytes, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
            width, height, header = fused.probe(data)
            box = rrc.get_params(height, width, rng)
            img = fused.decode_box(data, width, height, box, out_h, out_w, header, out)
            return _apply_rest(img, rest, rng, out)

        return rrc_fn

    resize_t: Resize = first  # type: ignore[assignment]
    crop = rest[0] if rest and isinstance(rest[0], CenterCrop) else None
    after = rest[1:] if crop is not None else rest

    def resize_fn(data: bytes, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
        width, height = fused.size(data)
        out_h, out_w = resize_t.output_size(height, width)
        if crop is not None and crop.size[0] <= out_h and crop.size[1] <= out_w:
            # Resize + CenterCrop: the centre box of the resized image, mapped back onto the
            # source, resized straight to the crop size (the same sample positions, and a window:
            # the pixels around the box weigh in at its edges, as in the resized image)
            (th, tw), sy, sx = crop.size, height / out_h, width / out_w
            top, left = _centre_offset(out_h, out_w, th, tw)
            box = (top * sy, left * sx, th * sy, tw * sx)
            img = fused.decode_box(data, width, height, box, th, tw, out=out, window=True)
            return _apply_rest(img, after, rng, out)
        img = fused.decode_box(data, width, height, (0, 0, height, width), out_h, out_w, out=out)
        return _apply_rest(img, rest, rng, out)

    return resize_fn


def _centre_offset(height: int, width: int, th: int, tw: int) -> tuple[int, int]:
    """Where ``CenterCrop`` puts a ``th`` x ``tw`` box in a ``height`` x ``width`` image."""
    return int(round((height - th) / 2.0)), int(round((width - tw) / 2.0))


def _centre_crop_fn(fused: FusedDecoder, t: Transform, crop: CenterCrop, rest: list[Transform]) -> ImageFn:
    """CenterCrop first: decode only the centre box (images smaller than it: unfused, padded)."""
    th, tw = crop.size

    def centre_fn(data: bytes, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
        width, height = fused.size(data)
        if height < th or width < tw:
            return t(fused.image_decoder.decode(data), rng)
        top, left = _centre_offset(height, width, th, tw)
        img = fused.decode_box(data, width, height, (top, left, th, tw), th, tw, out=out)
        return _apply_rest(img, rest, rng, out)

    return centre_fn
