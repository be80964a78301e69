"""Native backend: shardpipe's own crop-aware JPEG decoder (``_cropjpeg``, C, system libjpeg-turbo).

``decode_crop(data, box, out_size)`` decodes only what a crop needs: libjpeg-turbo picks
the DCT scale, inverse-transforms, upsamples and colour-converts only the box's columns,
entropy-decodes the rows above it without pixel work, and stops after its last row. The
small region (the box plus the resampling filter's margins) is then resized with the
same antialiasing kernel as the decode-then-crop path (``augment.resample``), so the
output matches that path's pixel for pixel wherever libjpeg decodes the region's pixels
as it would in the whole image (it does, away from the region's iMCU-aligned edges,
which the margins keep out of reach).

Routing is the other fast backends' (``base.JpegBackend``), except that CMYK/YCCK JPEGs
are decoded here too (converted to RGB with Pillow's formula, so the pixels are PIL's):
lossless or arithmetic JPEGs, PNG & co, truncated files, and anything libjpeg refuses or
warns about go to PIL, which decodes them or raises the ``DecodeError``; scan data cut short
(libjpeg's "premature end") raises ``CutShortError`` here, where the decode reaches the cut
(a crop wholly above it is intact data and is returned). Decompression bombs are
refused from the header. The extension is optional: when it was not built (no compiler
or no ``jpeglib.h`` at install time), importing this module raises ``ImportError`` and
``decoder="auto"`` takes the next backend (the registry logs why, once).
"""

from __future__ import annotations

import math

import numpy as np

from shardpipe.augment.resample import resized_crop
from shardpipe.errors import DecodeError
from shardpipe.image.decoders import registry
from shardpipe.image.decoders.base import (
    POWER_OF_TWO_SCALES,
    SCALE_MARGIN,
    JpegBackend,
    Scale,
    pick_scale,
    scaled_dim,
)
from shardpipe.image.decoders.jpeg import JpegHeader
from shardpipe.image.decoders.registry import CutShortError, ImageTooLargeError, cut_short

try:
    from shardpipe.image.decoders import _cropjpeg
except ImportError as e:  # not built here (the registry's message says how to get it)
    raise ImportError(f"shardpipe's native crop decoder was not built: {e}") from e

Box = tuple[float, float, float, float]  # top, left, height, width (pixels of the full image)

#: libjpeg flags (off by default; see BENCHMARKS.md): a faster, less exact integer IDCT, and
#: nearest-neighbour chroma upsampling instead of libjpeg's triangle filter
FAST_IDCT = _cropjpeg.FAST_IDCT
FAST_UPSAMPLE = _cropjpeg.FAST_UPSAMPLE
#: decode only the restart intervals that cover a crop (files without usable ones: no change)
INTERVALS = _cropjpeg.INTERVALS
#: CMYK/YCCK JPEGs too, converted to RGB exactly as Pillow converts them (else they go to PIL)
CMYK = _cropjpeg.CMYK
#: libjpeg frames with four components: CMYK or YCCK (baseline, extended, progressive Huffman)
_CMYK_FRAMES = (0xC0, 0xC1, 0xC2)
#: all n/8 DCT scales from 1/1 down, as reduced fractions
ALL_SCALES: tuple[Scale, ...] = tuple((n // math.gcd(n, 8), 8 // math.gcd(n, 8)) for n in range(8, 0, -1))
#: decoded pixels beyond the box on each side: the resampling filter reads up to 4 block
#: widths past the box (``resample.resized_crop``), and libjpeg's fancy upsampling differs
#: at the region's own edge by a pixel
_MARGIN_BLOCKS = 4
_MARGIN_EXTRA = 2
#: ``decode_crop``'s default: parse the header itself
_PARSE = object()


def _block(ratio: float) -> int:
    """The block size ``resized_crop`` averages before filtering (see ``resample._block``)."""
    return math.ceil(ratio / 3.0) if ratio > 3.0 else 1


def _check_box(box: Box, width: int, height: int) -> None:
    top, left, bh, bw = box
    if not (0 <= top and 0 <= left and 0 < bh and 0 < bw and top + bh <= height and left + bw <= width):
        raise ValueError(f"crop box (top, left, height, width) = {box} is not inside the {width}x{height} image")


class NativeDecoder(JpegBackend):
    """Crop-aware decode with shardpipe's C extension; whole images through the same call."""

    name = "native"
    scale_factors = ALL_SCALES

    def __init__(
        self,
        flags: int = 0,
        factors: tuple[Scale, ...] = POWER_OF_TWO_SCALES,
        intervals: bool = True,
        scale_margin: float = SCALE_MARGIN,
    ) -> None:
        super().__init__()
        #: ``intervals``: use restart intervals where a file has them (``shardpipe.image.restart``)
        self.flags = flags | (INTERVALS if intervals else 0) | CMYK
        #: the DCT scales ``decode_crop`` picks from by default (measured: BENCHMARKS.md)
        self.crop_factors = factors
        #: a DCT scale is picked only if it keeps the box this many times the output size
        self.scale_margin = scale_margin

    def accepts(self, hdr: JpegHeader) -> bool:
        """Grey, YCbCr and RGB frames, and CMYK/YCCK ones (converted as Pillow converts them)."""
        return hdr.turbo_decodable or (hdr.components == 4 and hdr.sof in _CMYK_FRAMES and hdr.height > 0)

    # -- the C call ------------------------------------------------------------------------
    def decode_region(self, data: bytes, scale: Scale, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels ``[y, y + height) x [x, x + width)`` of the image scaled by ``scale``, RGB.

        Raises ``DecodeError`` (libjpeg's message) for corrupt or unsupported data, with
        no fallback; ``ImageTooLargeError`` for a header beyond the pixel limit.
        """
        out = np.empty((height, width, 3), np.uint8)
        num = 8 * scale[0] // scale[1]
        try:
            _cropjpeg.decode(data, out, num, 8, x, y, width, height, self.flags, registry.MAX_PIXELS)
        except _cropjpeg.TooLarge as e:
            raise ImageTooLargeError(
                f"{e} (shardpipe.image.decoders.registry.MAX_PIXELS); refusing to decode a possible decompression bomb"
            ) from None
        except _cropjpeg.Error as e:
            raise cut_short(e) or DecodeError(str(e)) from None
        return out

    def _decode(self, data: bytes, header: JpegHeader, scale: Scale) -> np.ndarray:
        w, h = scaled_dim(header.width, scale), scaled_dim(header.height, scale)
        return self.decode_region(data, scale, 0, 0, w, h)

    # -- crop-aware decode -----------------------------------------------------------------
    def probe(self, data: bytes) -> tuple[int, int, JpegHeader | None]:
        """``(width, height, header)``, the header parsed once for both the size and
        ``decode_crop(..., header=)``; ``None`` where the fast path does not take ``data``."""
        hdr = self.header(data)  # None: not for the fast path; refuses bombs
        if hdr is not None:
            return hdr.width, hdr.height, hdr
        width, height = self.size(data)
        return width, height, None

    def decode_crop(
        self,
        data: bytes,
        box: Box,
        out_size: tuple[int, int],
        factors: tuple[Scale, ...] | None = None,
        header: JpegHeader | None | object = _PARSE,
        out: np.ndarray | None = None,
        window: bool = False,
    ) -> np.ndarray:
        """``box`` = (top, left, height, width) of the image, resized to ``out_size`` = (h, w).

        Picks the smallest DCT scale among ``factors`` (default ``crop_factors``) that keeps
        the box at least ``out_size``, decodes only the box (plus filter margins) at that
        scale, then resizes it antialiased. Images the fast path does not take go to PIL.
        ``header``: what :meth:`probe` returned for ``data`` (parsed here when not given);
        ``out``: where to write the result when it fits, ``window``: the box is a window onto
        the resized whole image, whose edges read the pixels around it (``resample.resized_crop``).
        """
        top, left, bh, bw = (float(v) for v in box)
        out_h, out_w = out_size
        hdr = self.header(data) if header is _PARSE else header
        if hdr is not None:
            assert isinstance(hdr, JpegHeader)
            _check_box(box, hdr.width, hdr.height)
            scale = pick_scale(int(bw), int(bh), out_w, out_h, factors or self.crop_factors, self.scale_margin)
            f = scale[0] / scale[1]
            sw, sh = scaled_dim(hdr.width, scale), scaled_dim(hdr.height, scale)
            st, sl, sbh, sbw = top * f, left * f, bh * f, bw * f
            kx, ky = _block(sbw / out_w), _block(sbh / out_h)
            whole = st.is_integer() and sl.is_integer() and sbh.is_integer() and sbw.is_integer()
            if kx == ky == 1 and whole and not window:
                mx = my = 0  # resized_crop reads exactly the box (reflecting at its edges)
            else:
                mx, my = _MARGIN_BLOCKS * kx + _MARGIN_EXTRA, _MARGIN_BLOCKS * ky + _MARGIN_EXTRA
            x0, y0 = max(0, math.floor(sl) - mx), max(0, math.floor(st) - my)
            x1, y1 = min(sw, math.ceil(sl + sbw) + mx), min(sh, math.ceil(st + sbh) + my)
            if x1 > x0 and y1 > y0:
                try:
                    region = self.decode_region(data, scale, x0, y0, x1 - x0, y1 - y0)
                except (ImageTooLargeError, CutShortError):
                    raise  # PIL must not undo a limit, nor fill a cut image with grey
                except Exception:  # noqa: BLE001 - libjpeg refused or warned: PIL decides below
                    region = None
                if region is not None:
                    return resized_crop(region, (st - y0, sl - x0, sbh, sbw), out_h, out_w, out, window)
        return self._fallback_crop(data, hdr, box, out_size, out, window)  # type: ignore[arg-type]

    def _fallback_crop(
        self,
        data: bytes,
        hdr: JpegHeader | None,
        box: Box,
        out_size: tuple[int, int],
        out: np.ndarray | None = None,
        window: bool = False,
    ) -> np.ndarray:
        """Decode with PIL (at a 1/2^k scale where the box allows it), then crop and resize."""
        top, left, bh, bw = box
        width, height = (hdr.width, hdr.height) if hdr is not None else self.size(data)  # the caller's size
        _check_box(box, width, height)
        scale = pick_scale(int(bw), int(bh), out_size[1], out_size[0], POWER_OF_TWO_SCALES)
        img = self._pil.decode_scaled(data, scale)
        f = scale[0] / scale[1]
        fy = f if img.shape[0] == scaled_dim(height, scale) else img.shape[0] / height
        fx = f if img.shape[1] == scaled_dim(width, scale) else img.shape[1] / width
        return resized_crop(img, (top * fy, left * fx, bh * fy, bw * fx), *out_size, out, window)
