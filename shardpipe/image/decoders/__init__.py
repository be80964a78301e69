"""Image decoder backends behind one registry (see ``registry.py``)."""

from shardpipe.image.decoders.registry import (
    AUTO_ORDER,
    CutShortError,
    ImageDecoder,
    ImageTooLargeError,
    available_decoders,
    decoder_names,
    get_decoder,
    register_decoder,
)

__all__ = [
    "AUTO_ORDER",
    "ImageDecoder",
    "CutShortError",
    "ImageTooLargeError",
    "available_decoders",
    "decoder_names",
    "get_decoder",
    "register_decoder",
]
