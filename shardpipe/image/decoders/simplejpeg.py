"""simplejpeg backend: libjpeg-turbo through a Cython extension (releases the GIL).

A self-contained wheel (libjpeg-turbo is linked in): nothing to install beyond pip.
Decodes at libjpeg-turbo's n/8 DCT scales through ``min_factor`` + ``min_width/height``.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

from shardpipe.image.decoders.base import JpegBackend, Scale, scaled_dim
from shardpipe.image.decoders.jpeg import JpegHeader


class SimpleJpegDecoder(JpegBackend):
    name = "simplejpeg"
    #: the n/8 scales of libjpeg-turbo (simplejpeg picks among them), reduced
    scale_factors = ((1, 1), (7, 8), (3, 4), (5, 8), (1, 2), (3, 8), (1, 4), (1, 8))

    def _decode(self, data: bytes, header: JpegHeader, scale: Scale) -> np.ndarray:
        if scale == (1, 1):
            return simplejpeg.decode_jpeg(data, "RGB", strict=True)
        num, den = scale
        # simplejpeg picks the smallest scale with factor >= min_factor whose output is
        # at least min_width x min_height: exactly num/den with these bounds
        return simplejpeg.decode_jpeg(
            data,
            "RGB",
            strict=True,
            min_factor=den / num,
            min_width=scaled_dim(header.width, scale),
            min_height=scaled_dim(header.height, scale),
        )
