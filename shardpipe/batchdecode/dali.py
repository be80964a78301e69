"""Batch decode with NVIDIA DALI: nvJPEG (and the hardware JPEG decoder) on the GPU, or
DALI's CPU operators (libjpeg-turbo via nvImageCodec) with ``device="cpu"``.

One DALI pipeline per decoder: encoded bytes go in through ``fn.external_source``, then
``decoders.image_random_crop`` (region-of-interest decode of a torchvision-style random
crop: ``random_area=scale``, ``random_aspect_ratio=ratio``, 10 attempts), ``resize`` and
``crop_mirror_normalize`` (flip, normalize, HWC -> CHW); for validation, ``decoders.image``,
``resize`` of the shorter side and a centre crop, with sizes and offsets computed from the
image headers in the graph so that they equal torchvision's / shardpipe's to the pixel. The result is copied into a torch tensor
through DALI's PyTorch interop (a CUDA tensor on the GPU, a CPU tensor in CPU mode).

A DALI pipeline fails a whole batch when one image is bad, without saying which. So
inputs are first checked for an image signature (cheap), and when a batch still fails
it is split in halves until the bad images are isolated; the good ones decode as usual.
Random crops and flips come from the pipeline's own generator (seeded by ``seed``), not
from per-key generators as in the CPU path: they are reproducible for a given sequence
of batches, not per sample across worker layouts. Not thread-safe: one decoder per thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shardpipe.batchdecode import dali_pipes
from shardpipe.batchdecode.base import BatchDecoder, Encoded, as_array
from shardpipe.batchdecode.registry import BATCH_DECODERS

INSTALL_HINT = BATCH_DECODERS.entry("dali").install

#: Leading bytes of the formats DALI's decoders read (JPEG 2000 as JP2 box or codestream).
_SIGNATURES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"II*\x00",
    b"MM\x00*",  # TIFF
    b"\x00\x00\x00\x0cjP  ",
    b"\xff\x4f\xff\x51",  # JPEG 2000
    *(b"P%d" % n for n in range(1, 7)),  # PNM
)


def import_dali() -> Any:
    """Import ``nvidia.dali`` or raise ImportError with the install command."""
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # noqa: F401 - the torch interop we copy through
    except ImportError as e:
        raise ImportError(f"GPU batch decode needs NVIDIA DALI, which is not installed: {INSTALL_HINT} ({e})") from e
    return nvidia.dali


def cuda_unavailable_reason(device_id: int = 0) -> str | None:
    """Why DALI cannot decode on GPU ``device_id`` here; ``None`` when it can."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no NVIDIA GPU, driver or CUDA build of torch)"
    from nvidia.dali import backend

    count = backend.GetCUDADeviceCount()
    if count == 0:
        return "DALI sees no CUDA device"
    if not 0 <= device_id < count:
        return f"device_id={device_id} but DALI sees {count} CUDA device(s)"
    return None


def signature_problem(data: np.ndarray) -> str | None:
    """A reason why ``data`` cannot be an image DALI reads, judged from its first bytes."""
    head = data[:12].tobytes()
    if len(data) < 16:
        return f"only {len(data)} bytes"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return None
    if not any(head.startswith(sig) for sig in _SIGNATURES):
        return f"no image signature: starts with {head[:8]!r}"
    if head.startswith(b"\xff\xd8"):  # the CPU decoders' limits hold for DALI too
        return _jpeg_limit_problem(data.tobytes())
    return None


def _jpeg_limit_problem(data: bytes) -> str | None:
    """Why a JPEG is over the scan or pixel limit (``image.decoders.registry``), or None."""
    from shardpipe.image.decoders.jpeg import read_header
    from shardpipe.image.decoders.registry import ImageTooLargeError, check_scans, check_size

    try:
        check_scans(data)
        try:
            header = read_header(data)
        except ValueError:
            return None  # DALI reports the damage
        check_size(header.width, header.height)
    except ImageTooLargeError as e:
        return str(e)
    return None


def _dali_reason(exc: Exception | None) -> str:
    """The useful line of a DALI pipeline error (they carry the whole graph traceback)."""
    text = str(exc)
    m = re.search(r"encountered:\s*(.*?)\s*(Current pipeline|$)", text, re.DOTALL)
    reason = (m.group(1) if m else text).strip().splitlines()
    return f"DALI: {reason[-1].rstrip(' :') if reason else type(exc).__name__}"


def _failed_sample(exc: Exception | None, batch_size: int) -> int | None:
    """The batch position a DALI decode error names ("Failed to decode sample #6"), if any."""
    m = re.search(r"Failed to decode sample #(\d+)", str(exc))
    index = int(m.group(1)) if m else -1
    return index if 0 <= index < batch_size else None


def _validation_geometry(enc: Any, short: int, crop_h: int, crop_w: int) -> tuple[Any, Any, Any, Any]:
    """Resize sizes and centre-crop positions as graph nodes, computed from image headers.

    They follow torchvision's (and shardpipe's) ``Resize`` and ``CenterCrop`` to the pixel:
    the longer side is truncated (DALI's ``resize_shorter`` rounds), the crop offset is
    ``round(margin / 2)`` with halves to even (DALI rounds them up), and a crop larger than
    the image pads ``(crop - size) // 2`` before it.
    """
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    # (H, W, C) with the EXIF orientation applied (DALI's adjust_orientation=True default), as the
    # decoders below apply it; shardpipe's CPU decoders do not (docs/reference.md, "GPU decode")
    shape = fn.peek_image_shape(enc, dtype=types.INT32)
    height, width = shape[0], shape[1]
    shorter = dmath.min(height, width)
    new_h, new_w = (short * height) // shorter, (short * width) // shorter

    def position(size: Any, crop: int) -> Any:
        margin = size - crop
        half = dmath.abs(margin) // 2
        odd = dmath.abs(margin) - 2 * half
        half_is_odd = half - 2 * (half // 2)
        grow = fn.cast(margin > 0, dtype=types.INT32)  # 1 when cropping, 0 when padding
        anchor = grow * (half + odd * half_is_odd) - (1 - grow) * half  # banker's round / pad
        nonzero = margin + fn.cast(margin == 0, dtype=types.INT32)
        return fn.cast(anchor, dtype=types.FLOAT) / fn.cast(nonzero, dtype=types.FLOAT)

    def as_float(x: Any) -> Any:
        return fn.cast(x, dtype=types.FLOAT)

    return as_float(new_h), as_float(new_w), position(new_h, crop_h), position(new_w, crop_w)


class DaliBatchDecoder(BatchDecoder):
    """Decode + crop + resize + flip (+ normalize) batches of encoded images with DALI.

    ``device``: ``"gpu"`` (nvJPEG; raises RuntimeError without a usable GPU), ``"cpu"``
    (DALI's CPU operators) or ``"auto"`` (GPU when usable). ``batch_size`` is the pipeline's
    largest batch: longer inputs are decoded in chunks, shorter ones as they are.
    ``decoder_options`` go to the DALI decoder op (e.g. ``hw_decoder_load``,
    ``device_memory_padding``). Other options: see ``shardpipe.batchdecode.base``.
    DALI turns images upright by their EXIF orientation (its default); the CPU decoders do not.
    """

    name = "dali"

    @classmethod
    def from_options(cls, *, device: str | None, cpu_decoder: str, **options: Any) -> BatchDecoder:
        return cls(device=device or "gpu", **options)

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        *,
        device: str = "auto",
        device_id: int = 0,
        batch_size: int = 256,
        num_threads: int | None = None,
        decoder_options: dict[str, Any] | None = None,
        **options: Any,
    ):
        super().__init__(size, **options)
        import_dali()
        if device == "auto":
            device = "gpu" if cuda_unavailable_reason(device_id) is None else "cpu"
        if device == "gpu":
            reason = cuda_unavailable_reason(device_id)
            if reason is not None:
                raise RuntimeError(
                    f"DALI GPU decode (device='gpu') needs a usable NVIDIA GPU, but {reason}. "
                    "Use device='cpu' for DALI's CPU operators, or "
                    "resolve_batch_decoder('auto') to fall back to shardpipe's CPU decoders."
                )
        elif device != "cpu":
            raise ValueError(f"device must be 'gpu', 'cpu' or 'auto', not {device!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.device_id, self.batch_size = device, device_id, int(batch_size)
        self.num_threads = num_threads or min(4, os.cpu_count() or 1)
        self.decoder_options = dict(decoder_options or {})
        self._pipe: Any = None
        self._last_error: Exception | None = None
        self._builds = 0  # each rebuild (after a failed batch) gets a fresh seed

    # -- the pipeline -------------------------------------------------------------------
    def _build(self) -> Any:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        gpu = self.device == "gpu"
        seeded = {} if self.seed is None else {"seed": (self.seed + 7919 * self._builds) % 2**31}
        self._builds += 1
        pipe = Pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id if gpu else None,
            prefetch_queue_depth=1,  # we feed one batch and run it: no look-ahead
            **seeded,
        )
        out_dtype = {torch.uint8: types.UINT8, torch.float32: types.FLOAT, torch.float16: types.FLOAT16}
        if self.dtype == torch.uint8:
            mean, std = [0.0], [1.0]
        elif self.mean is None:
            mean, std = [0.0], [255.0]  # scale to [0, 1]
        else:
            mean, std = [m * 255 for m in self.mean], [s * 255 for s in self.std]
        h, w = self.size
        dec_device = "mixed" if gpu else "cpu"
        with pipe:
            enc = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, batch=True)
            if self.train:
                imgs = fn.decoders.image_random_crop(
                    enc,
                    device=dec_device,
                    output_type=types.RGB,
                    random_area=list(self.scale),
                    random_aspect_ratio=list(self.ratio),
                    num_attempts=10,
                    **self.decoder_options,
                )
                imgs = fn.resize(imgs, resize_x=w, resize_y=h, antialias=True)
                mirror = fn.random.coin_flip(probability=self.flip_p) if self.flip_p > 0 else 0
                out = fn.crop_mirror_normalize(
                    imgs, dtype=out_dtype[self.dtype], output_layout="CHW", mean=mean, std=std, mirror=mirror
                )
            else:
                imgs = fn.decoders.image(enc, device=dec_device, output_type=types.RGB, **self.decoder_options)
                size_y, size_x, pos_y, pos_x = _validation_geometry(enc, self.resize_short, h, w)
                imgs = fn.resize(imgs, resize_x=size_x, resize_y=size_y, antialias=True)
                out = fn.crop_mirror_normalize(
                    imgs,
                    dtype=out_dtype[self.dtype],
                    output_layout="CHW",
                    mean=mean,
                    std=std,
                    crop=(h, w),
                    crop_pos_x=pos_x,
                    crop_pos_y=pos_y,
                    out_of_bounds_policy="pad",
                    fill_values=0.0,
                )
            pipe.set_outputs(out)
        pipe.build()
        return dali_pipes.track(pipe)

    def _run(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Run one batch (at most ``batch_size``) through DALI; DALI errors propagate."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self._pipe is None:
            self._pipe = self._build()
        try:
            self._pipe.feed_input("encoded", arrays)
            (out,) = self._pipe.run()
        except Exception:
            self.close()  # DALI declares the pipeline invalid after an error: rebuild
            raise
        dense = out.as_tensor()
        if self.device == "gpu":
            device = torch.device("cuda", self.device_id)
            result = torch.empty(dense.shape(), dtype=self.dtype, device=device)
            feed_ndarray(dense, result, cuda_stream=torch.cuda.current_stream(device))
        else:
            result = torch.empty(dense.shape(), dtype=self.dtype)
            feed_ndarray(dense, result)
        return result

    def _run_isolating(
        self,
        positions: list[int],
        arrays: list[np.ndarray],
        keys: Sequence[str] | None,
        parts: list[torch.Tensor],
        kept: list[int],
    ) -> None:
        """Decode ``positions``; when DALI fails, split them to isolate (and report) bad images.

        The split falls at the sample DALI's error names, if it names one (then the bad
        image costs three runs), else in the middle (bisection). Pieces run in order, so
        ``parts`` and ``kept`` stay in input order.
        """
        try:
            parts.append(self._run([arrays[i] for i in positions]))
            kept.extend(positions)
            return
        except RuntimeError as e:
            self._last_error = e
        if len(positions) == 1:
            self._bad(positions[0], keys, _dali_reason(self._last_error))
            return
        named = _failed_sample(self._last_error, len(positions))
        if named is not None:
            pieces = [positions[:named], positions[named : named + 1], positions[named + 1 :]]
        else:
            pieces = [positions[: len(positions) // 2], positions[len(positions) // 2 :]]
        for piece in pieces:
            if piece:
                self._run_isolating(piece, arrays, keys, parts, kept)

    # -- the contract -------------------------------------------------------------------
    def decode(self, encoded: Sequence[Encoded], keys: Sequence[str] | None = None) -> tuple[torch.Tensor, list[int]]:
        """Decode a batch; return the tensor and the input positions it holds, in order."""
        if keys is not None and len(keys) != len(encoded):
            raise ValueError(f"got {len(keys)} keys for {len(encoded)} images")
        arrays = [as_array(x) for x in encoded]
        candidates = []
        for i, a in enumerate(arrays):
            problem = signature_problem(a)
            if problem is None:
                candidates.append(i)
            else:
                self._bad(i, keys, problem)
        parts: list[torch.Tensor] = []
        kept: list[int] = []
        for start in range(0, len(candidates), self.batch_size):
            chunk = candidates[start : start + self.batch_size]
            before = len(kept)
            self._run_isolating(chunk, arrays, keys, parts, kept)
            if len(chunk) >= 4 and len(kept) == before:  # not bad images: a broken setup
                raise RuntimeError(
                    f"DALI failed on every one of {len(chunk)} images, each on its own; "
                    f"last error: {_dali_reason(self._last_error)}"
                ) from self._last_error
        if not parts:
            return self._empty(torch.device("cuda", self.device_id) if self.device == "gpu" else "cpu"), kept
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), kept

    def close(self) -> None:
        """Release the DALI pipeline now (its threads and GPU memory); the next batch builds another."""
        if self._pipe is not None:
            dali_pipes.release(self._pipe)
            self._pipe = None

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, device={self.device!r}, batch_size={self.batch_size})"
