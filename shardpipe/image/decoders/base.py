"""Shared logic of the fast JPEG backends: routing, size limit, and the PIL fallback.

A fast backend only ever sees what libjpeg-turbo decodes straight to RGB: a complete,
Huffman-coded, grey or three-component JPEG within the size limit (``accepts``; the
native backend also takes CMYK/YCCK, converted with PIL's formula). Everything else
(PNG, WebP, CMYK/YCCK, lossless or arithmetic JPEG, a missing end marker, any error
from the library) goes to PIL, which either decodes it (so CMYK colours match PIL's
conversion) or raises a ``DecodeError`` that says what is wrong. Scan data that libjpeg
finds cut short is a ``CutShortError`` at once (PIL would fill the rest with grey).
Corrupt data therefore ends in an exception, never in a crash: libjpeg-turbo's TurboJPEG
API recovers from errors with setjmp, and a truncated stream never reaches it.
"""

from __future__ import annotations

import numpy as np

from shardpipe.image.decoders.jpeg import JpegHeader, has_end_marker, is_jpeg, read_header
from shardpipe.image.decoders.pil import PilDecoder
from shardpipe.image.decoders.registry import CutShortError, ImageTooLargeError, check_scans, check_size, cut_short
from shardpipe.image.size import image_size

Scale = tuple[int, int]


def scaled_dim(size: int, scale: Scale) -> int:
    """libjpeg's scaled dimension: ceil(size * num / den)."""
    return -(-size * scale[0] // scale[1])


class JpegBackend:
    """Base class: subclasses implement ``_decode(data, header, scale) -> RGB array``."""

    name = "base"
    #: DCT scales this backend decodes at, full size first
    scale_factors: tuple[Scale, ...] = ((1, 1),)

    def __init__(self) -> None:
        self._pil = PilDecoder()

    # -- what subclasses provide -------------------------------------------------------
    def _decode(self, data: bytes, header: JpegHeader, scale: Scale) -> np.ndarray:
        raise NotImplementedError

    # -- routing -------------------------------------------------------------------------
    def header(self, data: bytes) -> JpegHeader | None:
        """The JPEG header when the fast path can take ``data``, else ``None`` (use PIL).

        Raises ``ImageTooLargeError`` for a declared size or scan count beyond the limits
        (before any decoder, so no fallback decodes what a limit refused).
        """
        if not is_jpeg(data):
            return None
        check_scans(data)
        try:
            hdr = read_header(data)
        except ValueError:
            return None  # PIL gives the verdict (and the error message)
        check_size(hdr.width, hdr.height)
        if not self.accepts(hdr) or not has_end_marker(data, hdr.scan_offset):
            return None
        return hdr

    def accepts(self, hdr: JpegHeader) -> bool:
        """True for the frames this backend decodes itself (others go to PIL)."""
        return hdr.turbo_decodable

    def size(self, data: bytes) -> tuple[int, int]:
        return image_size(data)

    def decode(self, data: bytes) -> np.ndarray:
        return self.decode_scaled(data, (1, 1))

    def decode_scaled(self, data: bytes, scale: Scale = (1, 1)) -> np.ndarray:
        """Decode at ``scale`` (one of ``scale_factors``); fallback images may come back larger.

        Callers read the scale actually used from the output's shape.
        """
        hdr = self.header(data)
        if hdr is not None:
            try:
                return self._decode(data, hdr, scale)
            except (ImageTooLargeError, CutShortError):
                raise  # a limit, or data cut short: the fallback must not undo it (PIL would fill grey)
            except Exception as e:  # noqa: BLE001 - the library refused it: PIL decides
                cut = cut_short(e)
                if cut is not None:
                    raise cut from None
        return self._pil.decode_scaled(data, scale)


#: the scales libjpeg-turbo decodes fastest (SIMD IDCTs); n/8 others are slower than 1/1
POWER_OF_TWO_SCALES: tuple[Scale, ...] = ((1, 1), (1, 2), (1, 4), (1, 8))


#: DCT-scale margin: libjpeg's reduced IDCT is a poorer low-pass filter than the antialiased
#: resize, so a scale is picked only if the resize still shrinks by this much. 1.25 keeps
#: every DCT scale within 1 grey level of PIL (1.0, the least work, does not: 1.8 at 1/8)
#: and decodes large photos ~10% cheaper than 1.5 (tools/bench_quality.py, BENCHMARKS.md)
SCALE_MARGIN = 1.25


def pick_scale(
    width: int,
    height: int,
    min_width: int,
    min_height: int,
    factors: tuple[Scale, ...],
    margin: float = SCALE_MARGIN,
) -> Scale:
    """The smallest of ``factors`` that keeps ``(width, height)`` scaled at least ``margin``
    times the minimum (a margin leaves the antialiasing filter some downscaling to do)."""
    best: Scale = (1, 1)
    min_width, min_height = min_width * margin, min_height * margin
    for num, den in factors:
        smaller = num * best[1] < best[0] * den
        if smaller and width * num >= min_width * den and height * num >= min_height * den:
            best = (num, den)
    return best
