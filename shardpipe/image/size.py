"""An image's ``(width, height)`` from its header alone: the one way shardpipe reads it.

JPEG: the SOF marker (no library involved); anything else, or a JPEG whose header does
not parse, through PIL's lazy open (which reads the header only).
"""

from __future__ import annotations

from shardpipe.image.decoders.jpeg import is_jpeg, read_header


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` without decoding pixels; PIL's error for unreadable data."""
    if is_jpeg(data):
        try:
            hdr = read_header(data)
            if hdr.height > 0:
                return hdr.width, hdr.height
        except ValueError:
            pass
    from shardpipe.image.decoders.pil import open_image

    return open_image(data).size  # type: ignore[no-any-return]
