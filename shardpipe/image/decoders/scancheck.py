"""A JPEG's scan data cut short, for the decoders that cannot say so (Pillow and OpenCV).

libjpeg meets a marker, or the end of the data, inside a scan (a download cut and closed
with an end marker) with a warning and fills the rest with zero coefficients. Pillow and
OpenCV drop that warning and return the image, grey past the cut (progressive: blurred).
They get a second opinion from the native extension (an entropy-decoding pass at 1/8
scale), but only where the image could be cut: a baseline cut leaves its last pixel the
flat mid-grey of zero coefficients, so a good baseline image costs one pixel read;
progressive and CMYK images (which a cut leaves without that sign) are always checked.
Without the native extension nothing is checked (``available()``).
"""

from __future__ import annotations

import numpy as np

from shardpipe.image.decoders import registry
from shardpipe.image.decoders.jpeg import JpegHeader, read_header

try:
    from shardpipe.image.decoders import _cropjpeg
except ImportError:  # not built: the fast decoders' own checks still hold
    _cropjpeg = None

#: the RGB that libjpeg decodes zero coefficients to (grey and YCbCr alike)
_CUT_GREY = 128


def available() -> bool:
    """True when Pillow's and OpenCV's results can be checked (the native extension is built)."""
    return _cropjpeg is not None


def may_be_cut(last: tuple[int, ...] | np.ndarray, header: JpegHeader) -> bool:
    """False where the decoded image, whose bottom-right RGB pixel is ``last``, cannot hide a cut."""
    if header.progressive or not header.turbo_decodable:
        return True
    return all(int(v) == _CUT_GREY for v in last)


def check(data: bytes, last: tuple[int, ...] | np.ndarray, header: JpegHeader | None = None) -> None:
    """Raise ``CutShortError`` when ``data`` (a JPEG that decoded to an image whose bottom-right
    RGB pixel is ``last``) has scan data that ends early. ``header``: parsed here when not given."""
    if _cropjpeg is None:
        return
    if header is None:
        try:
            header = read_header(data)
        except ValueError:
            return  # the decoder that read it gave the verdict
    if not may_be_cut(last, header):
        return
    # at 1/8 scale: every coefficient is still entropy-decoded, only the IDCT shrinks
    width, height = -(-header.width // 8), -(-header.height // 8)
    out = np.empty((height, width, 3), np.uint8)
    try:
        _cropjpeg.decode(data, out, 1, 8, 0, 0, width, height, _cropjpeg.CMYK, registry.MAX_PIXELS)
    except _cropjpeg.Error as e:  # other refusals: the caller's decoder already decided
        cut = registry.cut_short(e)
        if cut is not None:
            raise cut from None
