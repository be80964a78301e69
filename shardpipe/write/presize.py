"""Prepare image bytes for a shard: tell the format, check readability, optionally downscale.

Pass-through is the default: bytes go into the shard unchanged, never re-encoded.
``presize`` shrinks only images whose shorter side exceeds the target: JPEGs are first
decoded at a reduced DCT scale (at least twice the target, so quality holds), then
resampled with Lanczos, turned upright by their EXIF orientation and re-encoded as JPEG.
Images already small enough are returned as the very same bytes, unless their EXIF
orientation says they are stored turned: those are turned upright and re-encoded too, so
that every image of a presized data set stands as it is displayed (shardpipe's decoders,
like most loaders', read the stored pixels and ignore the tag).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from shardpipe.errors import DecodeError
from shardpipe.image.decoders.jpeg import has_end_marker, is_jpeg, read_header
from shardpipe.image.decoders.pil import open_image, to_rgb

#: PIL format name -> member extension (all in ``shardpipe.format.sample.IMAGE_EXTENSIONS``)
FORMAT_EXT = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif",
    "BMP": "bmp", "TIFF": "tif", "PPM": "ppm",
}  # fmt: skip
CHECKS = ("header", "decode", "none")


def image_ext(data: bytes) -> str:
    """The member extension for image ``data`` by its content; ``DecodeError`` if not an image."""
    if is_jpeg(data):
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    img = open_image(data)  # DecodeError for anything PIL does not recognise
    ext = FORMAT_EXT.get(img.format or "")
    if ext is None:
        raise DecodeError(f"{img.format} images are not supported in shards (use JPEG, PNG, WebP, ...)")
    return ext


def check_image(data: bytes, ext: str, check: str = "header") -> None:
    """Raise ``DecodeError`` unless ``data`` looks readable.

    ``header``: the header parses and a JPEG has its end marker (catches truncation and
    garbage cheaply); ``decode``: every pixel decodes; ``none``: the format is enough.
    """
    if check == "none":
        return
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, not {check!r}")
    if ext == "jpg" and check == "header":
        try:
            header = read_header(data)
        except ValueError as e:
            raise DecodeError(f"unreadable JPEG: {e}") from e
        if not has_end_marker(data, header.scan_offset):
            raise DecodeError("truncated JPEG (no end-of-image marker)")
        return
    img = open_image(data)
    if check == "decode" or img.format == "PNG" and b"IEND" not in data[-64:]:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise DecodeError(f"corrupt {img.format or 'image'} data: {e}") from e


def target_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """``(w, h)`` with the shorter side equal to ``shorter`` and the aspect kept."""
    if width <= height:
        return shorter, max(1, round(height * shorter / width))
    return max(1, round(width * shorter / height)), shorter


def presize(data: bytes, shorter: int, quality: int = 90) -> tuple[bytes, bool]:
    """Downscale ``data`` so its shorter side is ``shorter`` pixels; ``(bytes, changed)``.

    Images whose shorter side is already ``<= shorter`` come back unchanged (the same
    object), unless an EXIF orientation other than 1 says they are stored turned or
    mirrored. Others are decoded (at a reduced JPEG scale when that keeps at least twice
    the target), resized with Lanczos (the small turned ones are not resized), rotated
    upright by their EXIF orientation and re-encoded as JPEG at ``quality`` (RGB, or
    greyscale for greyscale input; alpha is composited on black; the ICC profile is kept).
    A float image (a TIFF of mode ``F``) is always re-encoded, as greyscale: see :func:`float_to_grey`.
    Raises ``DecodeError`` on bad data.
    """
    if shorter < 1:
        raise ValueError(f"presize must be a positive number of pixels, got {shorter}")
    img = open_image(data)
    small = min(img.size) <= shorter
    if small and _orientation(img) == 1 and img.mode != "F":
        return data, False
    icc = img.info.get("icc_profile")
    try:
        if img.format == "JPEG" and not small:
            tw, th = target_size(*img.size, shorter)
            img.draft(None, (2 * tw, 2 * th))  # DCT-domain reduction, still >= 2x the target
        img = ImageOps.exif_transpose(img)  # loads the pixels; the output has no orientation tag
        img = float_to_grey(img) if img.mode == "F" else img if img.mode in ("RGB", "L") else to_rgb(img)
        if not small:
            img = img.resize(target_size(*img.size, shorter), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"corrupt image data: {e}") from e
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, icc_profile=icc)
    return out.getvalue(), True


def float_to_grey(img: Image.Image) -> Image.Image:
    """A float greyscale image (mode ``F``) as 8-bit greyscale: values in 0..1 scaled by 255, values in
    0..255 rounded; ``DecodeError`` for any other range (and NaN or infinity), which has no one reading.

    Pillow's own conversion clips each value to 0..255, so a 0..1 image (as scientific tools and
    numpy code save float TIFFs) became black.
    """
    pixels = np.asarray(img, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise DecodeError("float image holding NaN or infinite values: convert it to 8-bit first")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise DecodeError(
            f"float image with values from {low:g} to {high:g}: presize reads float pixels in 0..1 "
            "(or 0..255); scale it to one of them, or convert it to 8-bit first"
        )
    scale = 255.0 if high <= 1 else 1.0
    return Image.fromarray(np.rint(pixels * scale).astype(np.uint8))  # 2-D uint8: mode L


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: stored as displayed; 2-8: mirrored or turned); 1 where the tag is
    missing, unreadable or out of range, as ``ImageOps.exif_transpose`` treats it."""
    try:
        value = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):  # a damaged EXIF block: nothing to turn by
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1
