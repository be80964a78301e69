"""A lazy registry of image decoders: a name maps to ``module:Class`` and an install hint.

Backends import their library only when first asked for, so a missing optional package
costs nothing until used, and then fails with the pip command that fixes it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol, runtime_checkable

import numpy as np

from shardpipe.errors import DecodeError
from shardpipe.registry import Registry

#: Largest image (in pixels) any backend will decode; beyond it, ``ImageTooLargeError``.
#: Read at call time, so ``registry.MAX_PIXELS = ...`` changes the limit everywhere.
MAX_PIXELS = 100_000_000


class ImageTooLargeError(DecodeError):
    """An image whose header declares more than ``MAX_PIXELS`` pixels (a decompression bomb)."""


class CutShortError(DecodeError):
    """A JPEG whose entropy-coded data ends early: cut short (a broken download closed with an end
    marker), or broken by a marker where data should be (a stray restart marker, a restart interval
    the markers do not keep): libjpeg would fill the rest of the image with grey, or resync and
    leave a part out, so no decoder returns it."""


#: libjpeg's warnings for entropy-coded data that ends early (JWRN_HIT_MARKER, JWRN_JPEG_EOF)
_CUT_SHORT = ("Corrupt JPEG data: premature end of data segment", "Premature end of JPEG file")


def cut_short(e: BaseException) -> CutShortError | None:
    """``e`` (a libjpeg-based decoder's refusal) as a ``CutShortError`` when its message holds one of
    libjpeg's data-ends-early warnings; ``None`` for anything else (other warnings are harmless)."""
    message = str(e).lower()
    for text in _CUT_SHORT:
        if text.lower() in message:
            return CutShortError(
                f"JPEG scan data cut short (libjpeg: {text}): the image data ends early, or a marker stands where "
                "data should be; decoding it would make up the rest"
            )
    return None


#: Most scans a progressive JPEG may have (what libjpeg-turbo's TJFLAG_LIMITSCANS and the native
#: decoder allow): each scan is another pass over every coefficient, so hundreds cost seconds of CPU
MAX_SCANS = 500


try:  # the native extension counts markers at memchr speed (~10x bytes.count); it is optional
    from shardpipe.image.decoders._cropjpeg import count_markers as _count_markers
except ImportError:
    _count_markers = None


class TooManyScansError(ImageTooLargeError):
    """A JPEG with more than ``MAX_SCANS`` scans (a CPU-exhaustion attack); refused on every path."""


def check_scans(data: bytes) -> None:
    """Refuse a JPEG with more than ``MAX_SCANS`` start-of-scan markers, before any decoder runs.

    Counting ``FF DA`` is exact for the entropy-coded data (a 0xFF there is always followed
    by 0x00 or a restart marker) and can only over-count (a thumbnail or metadata holding
    those bytes), so it never lets more scans through than the limit; it costs one pass over the bytes.
    """
    if data[:2] != b"\xff\xd8":
        return
    scans = _count_markers(data, 0xDA) if _count_markers is not None else bytes(data).count(b"\xff\xda")
    if scans > MAX_SCANS:
        raise TooManyScansError(
            f"JPEG has {scans} start-of-scan markers, more than the limit of {MAX_SCANS} "
            "(shardpipe.image.decoders.registry.MAX_SCANS); refusing a CPU-exhaustion image on every decoder"
        )


def check_size(width: int, height: int) -> None:
    """Refuse an image by its declared size, before any pixel is decoded."""
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{MAX_PIXELS} pixels (shardpipe.image.decoders.registry.MAX_PIXELS); "
            "refusing to decode a possible decompression bomb"
        )


@runtime_checkable
class ImageDecoder(Protocol):
    """What a decoder backend provides. All outputs are RGB uint8 HWC arrays.

    Backends may add (and the fused crop-aware path uses when present):
    ``scale_factors`` (the ``(num, den)`` DCT scales they decode at, ``(1, 1)`` first) and
    ``decode_scaled(data, scale)``; the libjpeg-turbo backend also has ``decode_yuv``.
    Every method is safe to call from several threads at once.
    """

    name: str

    def decode(self, data: bytes) -> np.ndarray:
        """Decode a whole image to RGB uint8 HWC."""
        ...

    def size(self, data: bytes) -> tuple[int, int]:
        """Return ``(width, height)`` from the header alone, without decoding pixels."""
        ...


DECODERS = Registry("decoder", also=("auto",))  # get_decoder resolves "auto"
_INSTANCES: dict[str, ImageDecoder] = {}
_LOCK = threading.Lock()
_SKIPPED: set[str] = set()  # auto candidates whose absence was logged
log = logging.getLogger(__name__)


def _new_lock() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a fork must not leave the child a copy held by another thread


os.register_at_fork(after_in_child=_new_lock)
#: Preference order for decoder="auto": fastest first (see BENCHMARKS.md).
AUTO_ORDER: list[str] = []


def register_decoder(name: str, target: str, install: str, *, auto_rank: int | None = None) -> None:
    """Register ``name`` -> ``"module:Class"``; ``auto_rank`` places it in the auto order."""
    DECODERS.register(name, target, install)
    if auto_rank is not None and name not in AUTO_ORDER:
        AUTO_ORDER.insert(min(auto_rank, len(AUTO_ORDER)), name)


def decoder_names() -> list[str]:
    """Names of every registered decoder, installed here or not."""
    return DECODERS.names()


def available_decoders() -> list[str]:
    """Names of the registered decoders whose libraries import here."""
    out = []
    for name in DECODERS:
        try:
            get_decoder(name)
        except ImportError:
            continue
        out.append(name)
    return out


def get_decoder(name: str = "auto") -> ImageDecoder:
    """Return the (shared, thread-safe) decoder called ``name``; ``auto`` = fastest installed."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            try:
                return get_decoder(candidate)
            except ImportError as e:
                if candidate not in _SKIPPED:  # once per process: why auto is not using it
                    _SKIPPED.add(candidate)
                    log.warning("decoder='auto' skips %r: %s", candidate, e)
                continue
        return get_decoder("pil")
    with _LOCK:
        if name in _INSTANCES:
            return _INSTANCES[name]
        decoder = DECODERS.load(name)()
        _INSTANCES[name] = decoder
        return decoder


# auto = the fastest installed, by measurement (tools/bench_kernels.py; BENCHMARKS.md): shardpipe's
# own crop decoder (built at install time where libjpeg-turbo's headers exist) decodes only
# the crop; of the bindings, the three libjpeg-turbo ones decode within ~3% of each other,
# ahead of OpenCV (~8% slower) and PIL (~30% slower); simplejpeg leads by a hair and is a
# self-contained wheel.
register_decoder("pil", "shardpipe.image.decoders.pil:PilDecoder", "pip install pillow")
register_decoder(
    "simplejpeg", "shardpipe.image.decoders.simplejpeg:SimpleJpegDecoder", "pip install simplejpeg", auto_rank=0
)
register_decoder(
    "turbo",
    "shardpipe.image.decoders.turbo:TurboDecoder",
    "pip install 'PyTurboJPEG<2' and the libturbojpeg library (apt install libturbojpeg0)",
    auto_rank=1,
)
register_decoder(
    "jpeg4py",
    "shardpipe.image.decoders.jpeg4py:Jpeg4pyDecoder",
    "pip install jpeg4py and the libturbojpeg library (apt install libturbojpeg0)",
    auto_rank=2,
)
register_decoder("cv2", "shardpipe.image.decoders.cv2:Cv2Decoder", "pip install opencv-python-headless", auto_rank=3)
register_decoder(
    "native",
    "shardpipe.image.decoders.native:NativeDecoder",
    "a C compiler and libjpeg-turbo's headers when shardpipe is installed "
    "(apt install gcc libjpeg62-turbo-dev, then reinstall shardpipe)",
    auto_rank=0,
)
