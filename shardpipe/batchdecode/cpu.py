"""The CPU batch decoder: shardpipe's crop-aware per-image decoders on a thread pool."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from shardpipe.batchdecode.base import DALI_ONLY_OPTIONS, BatchDecoder, Encoded, as_array


class CpuBatchDecoder(BatchDecoder):
    """Decode and augment on CPU threads with shardpipe's decoders (``get_decoder(decoder)``).

    The same transforms as the DALI path: ``RandomResizedCrop`` + flip, or ``Resize`` +
    ``CenterCrop``. With keys, each image's randomness comes from ``(seed, key)``, as in the
    core pipeline; without, from a generator seeded once.
    """

    name = "cpu"

    @classmethod
    def from_options(cls, *, device: str | None, cpu_decoder: str, **options: Any) -> BatchDecoder:
        return cls(decoder=cpu_decoder, **{k: v for k, v in options.items() if k not in DALI_ONLY_OPTIONS})

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        *,
        decoder: str = "auto",
        num_threads: int | None = None,
        **options: Any,
    ):
        super().__init__(size, **options)
        from shardpipe.augment import CenterCrop, Compose, RandomHorizontalFlip, RandomResizedCrop, Resize
        from shardpipe.image.fused import build_image_fn

        if self.train:
            steps: list = [RandomResizedCrop(self.size, self.scale, self.ratio)]
            if self.flip_p > 0:
                steps.append(RandomHorizontalFlip(self.flip_p))
        else:
            steps = [Resize(self.resize_short), CenterCrop(self.size)]
        self.transform = Compose(steps)
        self.decoder = decoder
        self._image_fn = build_image_fn(decoder, self.transform)
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    def _one(self, item: Encoded, rng: np.random.Generator) -> np.ndarray | Exception:
        try:
            return self._image_fn(item if isinstance(item, bytes) else as_array(item).tobytes(), rng)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this image's problem (as in the core)
            return e

    def decode(self, encoded: Sequence[Encoded], keys: Sequence[str] | None = None) -> tuple[torch.Tensor, list[int]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="shardpipe-batch")
        results = list(self._pool.map(self._one, encoded, self.rngs(keys, len(encoded))))
        kept, arrays = [], []
        for i, r in enumerate(results):
            if isinstance(r, Exception):
                self._bad(i, keys, f"{type(r).__name__}: {r}")
            else:
                kept.append(i)
                arrays.append(r)
        if not arrays:
            return self._empty(), kept
        out = torch.empty((len(arrays), 3, *self.size), dtype=torch.uint8)
        nhwc = out.permute(0, 2, 3, 1).numpy()  # one strided copy per image into NCHW memory
        for i, img in enumerate(arrays):
            nhwc[i] = img
        return self.finish(out), kept

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
