"""OpenCV backend: ``cv2.imdecode`` (libjpeg-turbo inside OpenCV; releases the GIL).

Decodes at 1/2, 1/4 and 1/8 through ``IMREAD_REDUCED_COLOR_n``. OpenCV decodes corrupt
data without complaint where it can, so only complete, plain JPEGs reach it (see base),
and images that may hide scan data cut short are checked again (``scancheck``).
"""

from __future__ import annotations

import cv2
import numpy as np

from shardpipe.image.decoders import scancheck
from shardpipe.image.decoders.base import JpegBackend, Scale
from shardpipe.image.decoders.jpeg import JpegHeader

cv2.setNumThreads(1)  # see shardpipe.augment.resample: no internal pool (fork-safe, no oversubscription)

_FLAGS = {
    (1, 1): cv2.IMREAD_COLOR,
    (1, 2): cv2.IMREAD_REDUCED_COLOR_2,
    (1, 4): cv2.IMREAD_REDUCED_COLOR_4,
    (1, 8): cv2.IMREAD_REDUCED_COLOR_8,
}
_IGNORE_EXIF = getattr(cv2, "IMREAD_IGNORE_ORIENTATION", 0)  # same pixels as the other backends


class Cv2Decoder(JpegBackend):
    name = "cv2"
    scale_factors = tuple(_FLAGS)

    def _decode(self, data: bytes, header: JpegHeader, scale: Scale) -> np.ndarray:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _FLAGS[scale] | _IGNORE_EXIF)
        if bgr is None:
            raise ValueError("OpenCV could not decode the JPEG")
        scancheck.check(data, bgr[-1, -1], header)  # OpenCV, like PIL, fills a cut with grey
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
