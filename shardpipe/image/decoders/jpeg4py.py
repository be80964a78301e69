"""jpeg4py backend: libjpeg-turbo's TurboJPEG API through cffi (releases the GIL).

Needs the system library (``apt install libturbojpeg0``). Decodes at n/8 DCT scales by
handing libjpeg-turbo an output buffer of the scaled size.
"""

from __future__ import annotations

import jpeg4py
import numpy as np

from shardpipe.image.decoders.base import JpegBackend, Scale, scaled_dim
from shardpipe.image.decoders.jpeg import JpegHeader


class Jpeg4pyDecoder(JpegBackend):
    name = "jpeg4py"
    scale_factors = ((1, 1), (7, 8), (3, 4), (5, 8), (1, 2), (3, 8), (1, 4), (1, 8))

    def __init__(self) -> None:
        super().__init__()
        try:
            jpeg4py.JPEG(np.zeros(1, np.uint8))  # loads libturbojpeg now, not mid-epoch
        except OSError as e:
            raise ImportError(f"jpeg4py cannot load libturbojpeg: {e}") from e

    def _decode(self, data: bytes, header: JpegHeader, scale: Scale) -> np.ndarray:
        # libjpeg-turbo picks the largest scale whose output fits the buffer: exactly `scale`
        h, w = scaled_dim(header.height, scale), scaled_dim(header.width, scale)
        dst = np.empty((h, w, 3), np.uint8)
        return jpeg4py.JPEG(np.frombuffer(data, np.uint8)).decode(dst)
