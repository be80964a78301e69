"""Batch decoders' common base: lists of encoded images in, one ``(N, C, H, W)`` torch tensor out.

DataLoader workers read, untar and shuffle compressed samples and hand whole batches of
bytes (``ShardDataset(decode="encoded", batch_size=B)``) to the main process; a batch decoder
turns the image field of each batch into a tensor: on the GPU with DALI (nvJPEG, see
``shardpipe.batchdecode.dali``) or on CPU threads with shardpipe's own decoders.

Every batch decoder has the same options and output contract:

- ``train=True``: random-resized crop (``scale``/``ratio`` as torchvision), resize to
  ``size``, horizontal flip with probability ``flip_p``. ``train=False``: resize the
  shorter side to ``resize_short``, then centre crop ``size`` (zero-padded if smaller).
- ``dtype=torch.uint8`` gives raw pixels; a float dtype gives ``x / 255``, or
  ``(x / 255 - mean) / std`` with ``normalize=(mean, std)`` (torchvision's convention).
- A bad image never costs the rest of its batch: under ``on_error="raise"`` it raises
  ``DecodeError`` naming its key; under ``"skip"``/``"warn"`` it is dropped and counted in
  ``decoder.errors.counts``, and ``decode_batch`` drops its labels and keys with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shardpipe.errors import DecodeError, ErrorHandler, OnError
from shardpipe.image.normalize import normalize

Encoded = bytes | bytearray | memoryview | np.ndarray
#: one batch as the Batch stage yields it: field -> list or tensor, one entry per sample
BatchDict = dict[str, Any]

_DTYPES = {
    "uint8": torch.uint8,
    "float": torch.float32,
    "float32": torch.float32,
    "half": torch.float16,
    "float16": torch.float16,
}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept ``torch.uint8/float32/float16`` or their names ("uint8", "float", "half")."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in (torch.uint8, torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.uint8, torch.float32 or torch.float16, not {dtype}")
    return dtype


def as_array(item: Encoded) -> np.ndarray:
    """A 1-D uint8 view of one encoded image (no copy for bytes and arrays)."""
    if isinstance(item, np.ndarray):
        return item.reshape(-1).view(np.uint8) if item.dtype != np.uint8 else item.reshape(-1)
    if isinstance(item, torch.Tensor):
        return item.reshape(-1).numpy().view(np.uint8)
    return np.frombuffer(item, dtype=np.uint8)


#: options only DALI understands; the other decoders are built without them
DALI_ONLY_OPTIONS = ("device_id", "batch_size", "decoder_options")


class BatchDecoder:
    """Base class: options, output dtype, on_error and the batch-dict helper.

    Subclasses implement ``decode(encoded, keys) -> (tensor, kept)`` where ``kept`` lists
    the input positions that made it into the tensor, in order.
    """

    name = "base"

    @classmethod
    def from_options(cls, *, device: str | None, cpu_decoder: str, **options: Any) -> BatchDecoder:
        """Build from :func:`~shardpipe.batchdecode.resolve_batch_decoder`'s arguments, taking the
        ones this decoder understands (by default: neither the device nor DALI's own options)."""
        return cls(**{k: v for k, v in options.items() if k not in DALI_ONLY_OPTIONS})

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        *,
        train: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        resize_short: int = 256,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        dtype: torch.dtype | str = torch.uint8,
        seed: int | None = None,
        on_error: OnError = "raise",
    ):
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p must lie in [0, 1], got {flip_p}")
        self.train, self.flip_p = train, flip_p
        self.scale: tuple[float, float] = (float(scale[0]), float(scale[1]))
        self.ratio: tuple[float, float] = (float(ratio[0]), float(ratio[1]))
        self.resize_short = int(resize_short)
        self.dtype = as_dtype(dtype)
        self.mean, self.std = _normalize_args(normalize, self.dtype)
        self.seed = seed
        self.epoch = 0
        self.errors = ErrorHandler(on_error)
        self._rng = np.random.default_rng(seed)  # for batches without keys

    def rngs(self, keys: Sequence[str] | None, n: int) -> list[np.random.Generator]:
        """One generator per image: from ``(seed, epoch, key)`` as in the core pipeline, so
        draws do not depend on batch order or threads; without keys, from one seeded stream."""
        from shardpipe.augment import sample_rng

        if keys is not None:
            seed = 0 if self.seed is None else self.seed
            return [sample_rng(seed, self.epoch, k) for k in keys]
        return [np.random.default_rng(s) for s in self._rng.integers(2**63, size=n)]

    # -- the contract -------------------------------------------------------------------
    def decode(self, encoded: Sequence[Encoded], keys: Sequence[str] | None = None) -> tuple[torch.Tensor, list[int]]:
        """Decode a batch; return the tensor and the input positions it holds."""
        raise NotImplementedError

    def __call__(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        """Decode a batch into one ``(N, C, H, W)`` tensor (bad images dropped per on_error)."""
        return self.decode(encoded)[0]

    def decode_batch(self, batch: BatchDict, image_field: str = "jpg") -> BatchDict:
        """Return ``batch`` with ``image_field`` decoded; other per-sample fields keep alignment."""
        return decode_batch(self, batch, image_field)

    def set_epoch(self, epoch: int) -> None:
        """Tell the decoder the epoch (decoders that seed per key vary their draws by it)."""
        self.epoch = int(epoch)

    @property
    def skipped(self) -> int:
        """How many images were dropped so far (see ``errors.counts`` by type)."""
        return sum(self.errors.counts.values())

    # -- shared helpers -----------------------------------------------------------------
    def _bad(self, index: int, keys: Sequence[str] | None, reason: str) -> None:
        """Apply on_error to the image at ``index`` (raises under "raise")."""
        where = f"sample {keys[index]!r}" if keys is not None else f"batch item {index}"
        self.errors(DecodeError(f"{where}: image does not decode ({reason})"))

    def _empty(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.empty((0, 3, *self.size), dtype=self.dtype, device=device)

    def finish(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> the requested dtype, scaled to [0, 1] and normalized if asked."""
        if self.dtype == torch.uint8:
            return pixels
        mean, std = (self.mean, self.std) if self.mean is not None else ((0.0,) * 3, (1.0,) * 3)
        # computed in float32 (cached per-channel constants), then rounded once to the dtype
        return normalize(pixels, mean, std, dtype=torch.float32).to(self.dtype)

    def __repr__(self) -> str:
        mode = "train" if self.train else f"val(resize_short={self.resize_short})"
        return f"{type(self).__name__}(size={self.size}, {mode}, dtype={self.dtype})"


def _normalize_args(
    normalize: tuple[Sequence[float], Sequence[float]] | None, dtype: torch.dtype
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if normalize is None:
        return None, None
    if dtype == torch.uint8:
        raise ValueError("normalize needs a float dtype (torch.float32 or torch.float16), not uint8")
    mean, std = normalize
    mean = tuple(float(m) for m in (mean if isinstance(mean, Sequence) else [mean] * 3))
    std = tuple(float(s) for s in (std if isinstance(std, Sequence) else [std] * 3))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalize must be (mean, std) with 3 values each and std > 0, got {normalize}")
    return mean, std


def decode_batch(decoder: BatchDecoder, batch: BatchDict, image_field: str = "jpg") -> BatchDict:
    """Decode ``batch[image_field]`` and drop the other fields' entries for skipped images.

    ``batch`` is what the core's Batch stage yields with decode off: lists (or tensors)
    with one entry per sample, such as ``{"jpg": [bytes], "cls": tensor, "__key__": [str]}``.
    """
    if image_field not in batch:
        raise KeyError(f"batch has no field {image_field!r}; fields: {sorted(batch)}")
    images = batch[image_field]
    n = len(images)
    keys = batch.get("__key__")
    keys = list(keys) if keys is not None and len(keys) == n else None
    tensor, kept = decoder.decode(images, keys)
    out = dict(batch)
    out[image_field] = tensor
    if len(kept) == n:
        return out
    index = torch.as_tensor(kept, dtype=torch.long)
    for name, value in batch.items():
        if name == image_field:
            continue
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
            out[name] = value[index.to(value.device)]
        elif isinstance(value, np.ndarray) and value.ndim and value.shape[0] == n:
            out[name] = value[kept]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            out[name] = type(value)(value[i] for i in kept)
    return out
