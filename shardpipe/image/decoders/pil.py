"""The PIL decoder: handles every format Pillow reads; the always-available fallback.

Every error it raises on bad data is a ``DecodeError`` with a message that says what is
wrong (empty, unknown format, truncated, scan data cut short, too large), never a crash of
the process. Pillow drops libjpeg's warnings, so JPEGs that may hide a cut are checked
again (``scancheck``).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

from shardpipe.errors import DecodeError
from shardpipe.image.decoders import registry, scancheck
from shardpipe.image.decoders.jpeg import is_jpeg, read_header
from shardpipe.image.decoders.registry import ImageTooLargeError, check_scans, check_size

# Pillow's own decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS) is left as the user set
# it: shardpipe checks its own limit (registry.MAX_PIXELS) from the header, and turns Pillow's
# refusal, where Pillow's limit is the lower one, into the same ImageTooLargeError.
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)

#: DCT scales PIL's ``draft`` mode reaches for JPEGs (libjpeg's 1/2, 1/4, 1/8)
PIL_SCALES = ((1, 1), (1, 2), (1, 4), (1, 8))


def _too_large(e: Exception) -> ImageTooLargeError:
    """Pillow's decompression-bomb refusal (error, or warning raised as one) as ours."""
    return ImageTooLargeError(
        f"image exceeds the pixel limit: Pillow refuses it ({e}); shardpipe's limit is "
        f"{registry.MAX_PIXELS} pixels (shardpipe.image.decoders.registry.MAX_PIXELS), Pillow's "
        f"PIL.Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS}"
    )


def open_image(data: bytes) -> Image.Image:
    """Open ``data`` with PIL, refusing decompression bombs before decoding pixels."""
    if not data:
        raise DecodeError("empty image data (0 bytes)")
    if is_jpeg(data):  # our limit first, with the declared size in the message
        try:
            header = read_header(data)
        except ValueError:
            header = None  # PIL reports the damage below
        if header is not None:
            check_size(header.width, header.height)
        check_scans(data)  # Pillow has no scan limit
    try:
        img = Image.open(io.BytesIO(data))
    except _BOMB as e:
        raise _too_large(e) from e
    except UnidentifiedImageError as e:
        head = bytes(data[:8])
        raise DecodeError(f"not a recognised image format ({len(data)} bytes starting {head!r})") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:  # a damaged header
        kind = "JPEG" if is_jpeg(data) else "image"
        raise DecodeError(f"corrupt {kind} header: {e}") from e
    check_size(*img.size)
    return img


#: formats whose 16-bit grey Pillow opens as 32-bit mode "I" on the 0..65535 scale (PGM/PPM; PNG before Pillow 10.3)
_WIDE_16BIT = ("PNG", "PPM")


def _grey8(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """A mode "I" (32-bit integer) or "F" (float) image as RGB: 16-bit formats by their high byte,
    others only where the values are 8-bit ones. Pillow's own conversion clips them at 255
    (a 16-bit image comes out nearly white) and no scale tells what 32 bits mean."""
    values = np.asarray(img)
    if img.mode == "I" and img.format in _WIDE_16BIT:
        return _grey8(np.clip(values, 0, 65535) >> 8)
    lo, hi = (values.min(), values.max()) if values.size else (0, 0)
    if lo < 0 or hi > 255 or (img.mode == "F" and not np.all(values == np.rint(values))):
        kind = "integer" if img.mode == "I" else "floating-point"
        raise DecodeError(
            f"{img.format or 'image'} of 32-bit {kind} samples ({lo:g} to {hi:g}): no 8-bit scale to decode it "
            "to (store it with 8 or 16 bits per sample)"
        )
    return _grey8(values)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (L, P, CMYK, RGBA, I;16, I, ...) to RGB; alpha (and a PNG or GIF
    transparent colour key, in any mode) is composited on black.

    Raises ``DecodeError`` for 32-bit samples that hold no 8- or 16-bit image (see ``_wide_to_rgb``).
    """
    keyed = "transparency" in img.info  # a PNG/GIF colour key: those pixels are transparent
    if img.mode == "RGB" and not keyed:
        return img
    if img.mode in ("RGBA", "LA", "PA") or (keyed and img.mode in ("P", "L", "RGB")):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (0, 0, 0))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    if img.mode.startswith("I;16"):  # 16-bit grey: keep the high byte, not a clipped low one
        return _grey8(np.asarray(img, dtype=np.uint16) >> 8)
    if img.mode in ("I", "F"):
        return _wide_to_rgb(img)
    return img.convert("RGB")


def _load_rgb(img: Image.Image) -> np.ndarray:
    try:
        img.load()
        return np.asarray(to_rgb(img))
    except _BOMB as e:  # some formats (GIF frames, TIFF tiles) check sizes again while loading
        raise _too_large(e) from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:  # truncated or corrupt pixels
        raise DecodeError(f"corrupt {img.format or 'image'} data: {e}") from e


def _checked(data: bytes, rgb: np.ndarray) -> np.ndarray:
    """``rgb``, unless ``data`` is a JPEG whose scan data was cut short (Pillow hides libjpeg's
    warning and fills the rest with grey): then ``CutShortError`` (see ``scancheck``)."""
    if rgb.size and is_jpeg(data):
        scancheck.check(data, rgb[-1, -1])
    return rgb


class PilDecoder:
    """Decode with Pillow (which bundles libjpeg-turbo, but runs its pipeline in Python)."""

    name = "pil"
    scale_factors = PIL_SCALES

    def __init__(self) -> None:
        # Pillow imports its common format plugins at the first Image.open; do it where the
        # decoder is made (before DataLoader workers fork), not once in every worker
        Image.preinit()

    def decode(self, data: bytes) -> np.ndarray:
        return _checked(data, _load_rgb(open_image(data)))

    def decode_scaled(self, data: bytes, scale: tuple[int, int] = (1, 1)) -> np.ndarray:
        """Decode at about ``scale`` (JPEG only, through ``draft``); others at full size.

        Callers read the scale actually used from the output's shape.
        """
        img = open_image(data)
        num, den = scale
        if img.format == "JPEG" and num == 1 and den > 1:
            w, h = img.size
            # draft picks the largest DCT scale s with (w, h) // s >= the requested size
            img.draft(None, (max(1, w // den), max(1, h // den)))
        return _checked(data, _load_rgb(img))

    def decode_pil(self, data: bytes) -> Image.Image:
        img = open_image(data)
        try:
            img.load()
        except _BOMB as e:
            raise _too_large(e) from e
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            raise DecodeError(f"corrupt {img.format or 'image'} data: {e}") from e
        rgb = to_rgb(img)
        if is_jpeg(data) and rgb.width and rgb.height:
            scancheck.check(data, rgb.getpixel((rgb.width - 1, rgb.height - 1)))
        return rgb

    def size(self, data: bytes) -> tuple[int, int]:
        return open_image(data).size
