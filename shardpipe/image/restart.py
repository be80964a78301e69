"""Restart intervals: a lossless JPEG transcode that lets the crop decoder skip most of a file.

A baseline JPEG's entropy-coded data can only be decoded from its start, so a crop decode
still Huffman-decodes everything above (and beside) the crop. With a restart interval the
data restarts at byte-aligned RSTn markers and the DC predictors reset, so the native
decoder (``NativeDecoder``, flag ``INTERVALS``) decodes only the intervals that cover the
crop. :func:`add_restart_intervals` re-encodes the DCT coefficients unchanged (pixels are
bit-identical, like ``jpegtran -restart``), keeps the EXIF/ICC/comment markers and
optimizes the Huffman tables, which more than pays for the markers' bytes.

How the interval is chosen: each MCU row is cut into at most ``per_row`` (default 8)
intervals of equal length, the shortest of at least 2 MCUs that divides the row (intervals
must tile the rows so that the decoder can select columns as well as rows; a prime number
of MCUs per row gets one interval per row). Each interval costs ~3-4 bytes (marker, padding,
a DC value coded whole); 4, 8, 16 and 32 per row decoded crops equally fast within noise on
ImageNet-sized photos, 8 keeps column selection useful on large images at ~0.3% more bytes
than 4 (BENCHMARKS.md, "Restart intervals").

Progressive files become baseline ones with intervals: the same coefficients (pixels stay
bit-identical), ~6-8% more bytes than the progressive original, and a crop that costs ~1.3
instead of ~4.8 CPU ms (a progressive file's crop decodes every scan of the whole image
first); ``progressive_growth`` bounds that growth (``None``: leave them as they are).
Arithmetic-coded, CMYK/YCCK/RGB-coded and multi-scan baseline files, files that already
have usable intervals, and corrupt ones are returned unchanged. Without the native
extension nothing is transcoded (``available()`` is False).
"""

from __future__ import annotations

from shardpipe.image.decoders import registry
from shardpipe.image.decoders.jpeg import read_header

try:
    from shardpipe.image.decoders import _cropjpeg
except ImportError:  # the optional extension was not built: nothing to transcode with
    _cropjpeg = None

#: intervals per MCU row (at most); see the module docstring
DEFAULT_PER_ROW = 8
#: a transcoded file more than this much larger than the original is not used
MAX_GROWTH = 0.02
#: the same for a progressive original made baseline (its crops get ~3.7x cheaper)
PROGRESSIVE_MAX_GROWTH = 0.10


def available() -> bool:
    """True when the native extension (which does the transcode) is built."""
    return _cropjpeg is not None


def restart_layout(data: bytes) -> tuple[int, int, int] | None:
    """``(interval in MCUs, intervals per MCU row, MCU rows per interval)`` when the crop
    decoder can use ``data``'s restart intervals, else ``None`` (also without the extension)."""
    if _cropjpeg is None:
        return None
    return _cropjpeg.restart_layout(data)


def add_restart_intervals(
    data: bytes,
    per_row: int = DEFAULT_PER_ROW,
    max_growth: float = MAX_GROWTH,
    progressive_growth: float | None = PROGRESSIVE_MAX_GROWTH,
) -> bytes:
    """``data`` losslessly re-encoded with restart intervals, or ``data`` itself when it is
    not a candidate (see the module docstring), is corrupt, or would grow by more than
    ``max_growth`` (``progressive_growth`` for a progressive original; ``None`` leaves
    progressive files as they are)."""
    if per_row < 1:
        raise ValueError(f"per_row must be at least 1, got {per_row}")
    if _cropjpeg is None or len(data) < 4 or data[:2] != b"\xff\xd8":
        return data
    progressive = _is_progressive(data)
    if progressive and progressive_growth is None:
        return data
    try:
        result = _cropjpeg.add_restarts(data, per_row, registry.MAX_PIXELS)
    except _cropjpeg.Error:  # corrupt, or over the pixel limit: leave it to the readers' checks
        return data
    if result is None:
        return data
    out, _interval = result
    bound = progressive_growth if progressive else max_growth
    return out if len(out) <= len(data) * (1 + bound) else data  # type: ignore[operator]


def _is_progressive(data: bytes) -> bool:
    try:
        return read_header(data).progressive
    except ValueError:
        return False
