"""Decode sample fields: images (optionally fused with augmentation), labels, JSON, text.

Images become RGB uint8: ``rgb8`` (numpy HWC), ``torchrgb8`` (torch CHW) or ``pil``;
``encoded`` leaves them as bytes (for batched GPU decode) while decoding the rest.
Other fields go through ``shardpipe.format.fields.decode_field``: ``.cls`` and the other
integer fields become int, ``.json`` a dict, ``.txt`` a str, the rest stay bytes (pickles
only with ``allow_pickle=True``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shardpipe.augment import as_transform, at_epoch
from shardpipe.augment.base import SampleRngs
from shardpipe.augment.schedule import has_schedule
from shardpipe.errors import DecodeError, TransformError
from shardpipe.format.fields import decode_field
from shardpipe.format.sample import Sample, is_image_field
from shardpipe.image.fused import build_image_fn
from shardpipe.options import DECODE_MODES, check_flag
from shardpipe.stages.base import State
from shardpipe.stages.parallel import ParallelMap


def _convert(img: np.ndarray, mode: str) -> Any:
    if mode == "rgb8":
        return img
    if mode == "torchrgb8":
        import torch

        if not img.flags.writeable:  # e.g. a view of a PIL image: torch wants its own memory
            img = img.copy()
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(img))


def _in_sample(e: TransformError, sample: Sample) -> TransformError:
    """``e`` naming the sample and shard, and why ``on_error`` let it through."""
    return TransformError(
        f"{e}, on sample {sample.get('__key__')!r} in shard {sample.get('__url__')} (on_error does not skip "
        "errors of a transform's code; to skip a sample as bad data, raise shardpipe.DecodeError in the transform)"
    )


class SampleDecoder:
    """Decode one sample; thread-safe, so a pool may call it concurrently."""

    def __init__(
        self,
        decode: str = "rgb8",
        decoder: str = "auto",
        transform: Callable[..., Any] | None = None,
        allow_pickle: bool = False,
        fuse: bool = True,
        ctx_seed_epoch: Callable[[], tuple[int, int]] = lambda: (0, 0),
        add_time: Callable[[str, float, int], None] | None = None,
        where: Callable[[str, str | None], None] | None = None,
    ):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, not {decode!r}")
        check_flag("allow_pickle", allow_pickle)  # a truthy "false" must not unpickle shard members
        self.decode = decode
        self.transform = transform
        self.allow_pickle = allow_pickle
        self._decoder, self._fuse = decoder, fuse
        self._scheduled = has_schedule(transform)
        self._build(transform)
        self._seed_epoch = ctx_seed_epoch
        self._add_time = add_time or (lambda name, seconds, items: None)
        self._where = where or (lambda stage, url: None)
        self._rngs = SampleRngs()  # each generator lives only while its sample is decoded

    def _build(self, transform: Callable[..., Any] | None) -> None:
        # fused: one function decodes and augments (crop-aware decode); else two, timed apart
        fuse = self._fuse
        self._image_fn = (
            build_image_fn(self._decoder, transform if fuse else None) if self.decode != "encoded" else None
        )
        self._augment = as_transform(transform) if transform is not None and not fuse else None

    @property
    def writes_into(self) -> bool:
        """True when the decoded image is the image function's array (rgb8, torchrgb8 views
        of it) and nothing runs after that function: ``into`` reaches the batch untouched."""
        return self.decode in ("rgb8", "torchrgb8") and self._augment is None

    def set_epoch(self, epoch: int) -> None:
        """Fix the sizes of a scheduled transform (progressive resizing) for ``epoch``."""
        if self._scheduled:
            self._build(at_epoch(self.transform, epoch))

    def __call__(self, sample: Sample, into: np.ndarray | None = None) -> Sample:
        """The decoded sample; ``into``: where its first image may be written (``ImageFn``'s ``out``)."""
        self._where("decode", sample.get("__url__"))
        t0 = time.perf_counter()
        augment_seconds = 0.0
        out: Sample = {}
        images = 0
        for ext, value in sample.items():
            if ext.startswith("__"):
                out[ext] = value
                continue
            try:
                if is_image_field(ext):
                    if self._image_fn is None:
                        out[ext] = value
                        continue
                    rng = None
                    if self.transform is not None:  # per-sample randomness: same on resume
                        seed, epoch = self._seed_epoch()
                        rng = self._rngs(seed, epoch, sample["__key__"])
                    img = self._image_fn(value, rng, into)  # type: ignore[arg-type]
                    into = None  # one image per row
                    if self._augment is not None:
                        t1 = time.perf_counter()
                        img = self._augment(img, rng)  # type: ignore[arg-type]
                        augment_seconds += time.perf_counter() - t1
                    out[ext] = _convert(img, self.decode)
                    images += 1
                else:
                    out[ext] = decode_field(ext, value, self.allow_pickle)
            except TransformError as e:
                raise _in_sample(e, sample) from e.__cause__
            except Exception as e:
                raise DecodeError(
                    f"cannot decode {ext!r} of sample {sample.get('__key__')!r} "
                    f"in shard {sample.get('__url__')}: {type(e).__name__}: {e}"
                ) from e
        self._add_time("decode", time.perf_counter() - t0 - augment_seconds, images)
        if self._augment is not None:
            self._add_time("augment", augment_seconds, images)
        return out


class Decode(ParallelMap):
    """Decode samples (see module docstring), on ``num_threads`` threads when > 0."""

    def __init__(
        self,
        decode: str = "rgb8",
        decoder: str = "auto",
        transform: Callable[..., Any] | None = None,
        num_threads: int = 0,
        allow_pickle: bool = False,
        fuse: bool = True,
    ):
        self.sample_decoder = SampleDecoder(
            decode,
            decoder,
            transform,
            allow_pickle,
            fuse,
            ctx_seed_epoch=lambda: (self.ctx.seed, self.ctx.epoch),
            add_time=lambda name, s, n: self.ctx.add_time(name, s, n),
            where=lambda stage, url: self.ctx.where(stage, url),
        )
        super().__init__(self.sample_decoder, num_threads)

    def reset(self, state: State | None = None) -> None:
        super().reset(state)
        self.sample_decoder.set_epoch(self.ctx.epoch)

    @property
    def writes_into(self) -> bool:
        """True when :meth:`next_into` may be used: samples are decoded as they are asked for,
        on the caller's thread, one for one, and images stay arrays written by the decode."""
        return self.num_threads <= 0 and self.sample_decoder.writes_into

    def next_into(self, into: np.ndarray) -> Sample:
        """The next sample, its first image written into ``into`` where it fits (a batch's row);
        only where :attr:`writes_into` (a read-ahead thread would write rows out of turn)."""
        if not self.writes_into:
            raise RuntimeError("Decode.next_into needs num_threads=0 and a decode into arrays or tensors")
        return self.next_inline(lambda sample: self.sample_decoder(sample, into))  # type: ignore[no-any-return]


class Augment(ParallelMap):
    """Apply ``transform(img, rng)`` to the image fields, with per-sample seeded randomness."""

    def __init__(self, transform: Callable[..., Any], num_threads: int = 0):
        self.transform = as_transform(transform)
        self._current = self.transform
        self._rngs = SampleRngs()
        super().__init__(self._apply, num_threads)

    def reset(self, state: State | None = None) -> None:
        super().reset(state)
        self._current = at_epoch(self.transform, self.ctx.epoch)

    def _apply(self, sample: Sample) -> Sample:
        t0 = time.perf_counter()
        rng = self._rngs(self.ctx.seed, self.ctx.epoch, sample["__key__"])
        out = dict(sample)
        for ext, value in sample.items():
            if isinstance(value, np.ndarray) and is_image_field(ext):
                try:
                    out[ext] = self._current(value, rng)
                except TransformError as e:
                    raise _in_sample(e, sample) from e.__cause__
        self.ctx.add_time("augment", time.perf_counter() - t0, 1)
        return out
