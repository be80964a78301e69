"""A small JPEG header reader: size, components, coding and chroma layout, in pure Python.

Reading the markers up to the first scan costs a few microseconds and touches no pixel
data. The fast backends use it to route each image (baseline/progressive YCbCr or grey
to libjpeg-turbo, and CMYK too for the native decoder; lossless, arithmetic-coded or
non-JPEG data, and CMYK for the others, to PIL), to refuse
decompression bombs before any pixel is decoded, and to plan crop-aware decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# start-of-frame markers (C4 = DHT, C8 = JPG extension, CC = DAC are not frames)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
#: frames libjpeg-turbo decodes: baseline, extended and progressive Huffman coding
_TURBO_FRAMES = {0xC0, 0xC1, 0xC2}
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header says about a JPEG."""

    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
    sof: int  # the start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...)
    sampling: tuple[tuple[int, int], ...]  # (h, v) sampling factors per component
    adobe_transform: int | None  # APP14 "Adobe" colour transform flag, if present
    scan_offset: int  # byte offset of the first start-of-scan marker

    @property
    def progressive(self) -> bool:
        return self.sof in _PROGRESSIVE

    @property
    def is_ycbcr(self) -> bool:
        """Three components stored as YCbCr (not RGB): the usual colour JPEG."""
        return self.components == 3 and self.adobe_transform != 0

    @property
    def turbo_decodable(self) -> bool:
        """True when libjpeg-turbo decodes it straight to RGB (grey or 3-component, Huffman)."""
        return self.sof in _TURBO_FRAMES and self.components in (1, 3) and self.height > 0


def is_jpeg(data: bytes) -> bool:
    """True when ``data`` starts like a JPEG (SOI followed by a marker)."""
    return len(data) >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF


def has_end_marker(data: bytes, after: int = 0) -> bool:
    """True when an end-of-image marker follows ``after``: a missing one means truncation.

    Entropy-coded data cannot contain FF D9 (FF bytes are stuffed), so the last EOI is
    found quickly from the end; trailing bytes after it (some cameras add them) are fine.
    """
    n = len(data)
    if n - after >= 2 and data[n - 2] == 0xFF and data[n - 1] == 0xD9:
        return True  # the usual case, and the only one that needs no search
    return (data if isinstance(data, bytes) else bytes(data)).rfind(EOI, after) >= 0


def read_header(data: bytes) -> JpegHeader:
    """Parse the markers of ``data`` up to the first scan; ``ValueError`` if malformed."""
    if not is_jpeg(data):
        raise ValueError("not a JPEG (no start-of-image marker)")
    n = len(data)
    pos = 2
    frame: tuple[int, int, int, int, tuple[tuple[int, int], ...]] | None = None
    adobe: int | None = None
    while True:
        # a marker is FF xx, optionally preceded by fill bytes (FF FF ...)
        if pos < n and data[pos] != 0xFF:  # garbage between segments: libjpeg skips it too
            pos = (data if isinstance(data, bytes) else bytes(data)).find(b"\xff", pos)  # rare: no copy for bytes
            if pos < 0:
                pos = n
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise ValueError("truncated JPEG header (no start-of-scan marker)")
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            raise ValueError("JPEG ends before its first scan")
        if pos + 2 > n:
            raise ValueError("truncated JPEG header")
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2 or pos + length > n:
            raise ValueError(f"corrupt JPEG header (segment length {length} at byte {pos})")
        body = pos + 2
        if marker in _SOF:
            if length < 8:
                raise ValueError("corrupt JPEG frame header")
            height = (data[body + 1] << 8) | data[body + 2]
            width = (data[body + 3] << 8) | data[body + 4]
            ncomp = data[body + 5]
            if ncomp == 0 or length < 8 + 3 * ncomp:
                raise ValueError("corrupt JPEG frame header (components)")
            sampling = tuple((data[body + 7 + 3 * i] >> 4, data[body + 7 + 3 * i] & 15) for i in range(ncomp))
            if width == 0:
                raise ValueError("corrupt JPEG frame header (zero width)")
            frame = (marker, width, height, ncomp, sampling)
        elif marker == 0xEE and length >= 14 and data[body : body + 5] == b"Adobe":
            adobe = data[body + 11]
        elif marker == 0xDA:
            if frame is None:
                raise ValueError("corrupt JPEG (scan before frame header)")
            sof, width, height, ncomp, sampling = frame
            return JpegHeader(width, height, ncomp, sof, sampling, adobe, pos - 2)
        pos += length
