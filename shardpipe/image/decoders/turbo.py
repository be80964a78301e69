"""PyTurboJPEG backend: libjpeg-turbo's TurboJPEG API through ctypes (releases the GIL).

Decodes at any of libjpeg-turbo's n/8 DCT scales, and straight to YUV planes
(``decode_yuv``), which lets the crop-aware path skip chroma upsampling and colour
conversion of the pixels it crops away. Needs ``PyTurboJPEG<2`` and the shared library
(``apt install libturbojpeg0``; PyTurboJPEG 2 needs libjpeg-turbo 3).
"""

from __future__ import annotations

import numpy as np
import turbojpeg

from shardpipe.image.decoders.base import JpegBackend, Scale
from shardpipe.image.decoders.jpeg import JpegHeader

# stop at the first corrupt-data warning (the PIL fallback then decides), and refuse
# progressive files with absurd scan counts (a CPU-exhaustion attack)
_FLAGS = turbojpeg.TJFLAG_STOPONWARNING | turbojpeg.TJFLAG_LIMITSCANS


class _StrictTurboJPEG(turbojpeg.TurboJPEG):
    """TurboJPEG that raises on libjpeg warnings instead of returning a half-decoded image.

    PyTurboJPEG 1.x reports warnings with ``warnings.warn`` and returns the buffer;
    catching that would need the process-global (not thread-safe) warnings filters.
    """

    def _TurboJPEG__report_error(self, handle: int) -> None:  # overrides the private hook
        raise OSError(self._TurboJPEG__get_error_string(handle))


class TurboDecoder(JpegBackend):
    name = "turbo"

    def __init__(self) -> None:
        super().__init__()
        try:
            self._tj = _StrictTurboJPEG()
        except RuntimeError as e:  # PyTurboJPEG found no libturbojpeg shared library
            raise ImportError(str(e)) from e
        factors = sorted(self._tj.scaling_factors, key=lambda s: -s[0] / s[1])
        self.scale_factors = tuple(s for s in factors if s[0] <= s[1])

    def _decode(self, data: bytes, header: JpegHeader, scale: Scale) -> np.ndarray:
        sf = None if scale == (1, 1) else scale
        return self._tj.decode(data, turbojpeg.TJPF_RGB, scaling_factor=sf, flags=_FLAGS)

    def decode_yuv(self, data: bytes, scale: Scale = (1, 1)) -> tuple[list[np.ndarray], JpegHeader] | None:
        """Decode to planes ``[Y]`` (grey) or ``[Y, Cb, Cr]`` at ``scale``, or ``None``.

        ``None`` means this image is not a YCbCr/grey JPEG the fast path takes (PNG,
        CMYK, RGB-coded JPEG, corrupt data...): decode it with ``decode_scaled`` instead.
        """
        hdr = self.header(data)
        if hdr is None or (hdr.components == 3 and not hdr.is_ycbcr):
            return None
        sf = None if scale == (1, 1) else scale
        try:
            if hdr.components == 1:  # (PyTurboJPEG 1.x's YUV planes call fails on grey)
                grey = self._tj.decode(data, turbojpeg.TJPF_GRAY, scaling_factor=sf, flags=_FLAGS)
                planes = [grey[:, :, 0]]
            else:
                planes = self._tj.decode_to_yuv_planes(data, scaling_factor=sf, flags=_FLAGS)
        except Exception:  # noqa: BLE001 - corrupt data: the RGB path's PIL fallback decides
            return None
        return planes, hdr
