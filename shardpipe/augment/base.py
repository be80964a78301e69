"""The transform contract: ``transform(img, rng) -> img`` on RGB uint8 HWC arrays.

Transforms take their randomness from the ``rng`` they are given. The augment stage
derives that generator from (seed, epoch, sample key), so a sample gets the same
augmentation whatever the worker count, shard split or resume point.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shardpipe.errors import ShardpipeError, TransformError


def number(value: Any, name: str) -> float:
    """``value`` as a float: a finite real number (numpy's too), not a bool; checked where a
    transform is made, so that a bad argument is one clear error, not every sample failing."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


#: what an argument that is an amount or a range may be (``bounds``'s ``what``)
EITHER = "a number or a (min, max) pair of numbers"


def bounds(value: Any, name: str, what: str = "a (min, max) pair of numbers") -> tuple[float, float]:
    """``value`` as a ``(min, max)`` pair of finite numbers (a tuple, list or 1-d array of two);
    ``what``: what the argument may be, for the error."""
    pair = isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1)
    if not pair or len(value) != 2:
        raise TypeError(f"{name} must be {what}, got {value!r}")
    lo, hi = (number(v, name) for v in value)
    if lo > hi:
        raise ValueError(f"{name} range must be (min, max), got {tuple(value)}")
    return lo, hi


class Transform:
    """Base class: subclasses implement ``__call__(img, rng)``."""

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def into(self, img: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        """``self(img, rng)``, written into ``out`` (which may be ``img``) where the transform can
        (flips do), to spare a copy when ``out`` is the image's row of a batch; the result of
        one that cannot lies elsewhere, and the batch copies it. Same draws from ``rng``."""
        return self(img, rng)

    def at_epoch(self, epoch: int) -> Transform:
        """This transform as it runs in epoch ``epoch`` (itself unless a size follows a schedule)."""
        return self

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and not (k == "schedule" and v is None)
        )
        return f"{type(self).__name__}({fields})"


class PlainTransform(Transform):
    """A one-argument callable ``fn(img) -> img`` as a ``Transform`` (it ignores ``rng``).

    A module-level class, so the wrapper pickles whenever ``fn`` does (workers started
    by a forkserver or spawn receive the transform pickled).
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _call_user(self.fn, img)

    def __repr__(self) -> str:
        return f"Plain({self.fn!r})"


class RngTransform(Transform):
    """A callable ``fn(img, rng) -> img`` (or ``fn(img, *, rng)``) as a ``Transform``; pickles
    whenever ``fn`` does, like ``PlainTransform``."""

    def __init__(self, fn: Callable[..., np.ndarray], by_keyword: bool = False):
        self.fn = fn
        self.by_keyword = by_keyword  # rng is keyword-only

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _call_user(self.fn, img, rng=rng) if self.by_keyword else _call_user(self.fn, img, rng)

    def __repr__(self) -> str:
        return f"WithRng({self.fn!r})"


def _call_user(fn: Callable[..., np.ndarray], *args: Any, **kwargs: Any) -> np.ndarray:
    """``fn(*args, **kwargs)``, a user's transform: what it raises is a ``TransformError`` naming it
    (a bug in code), except a ``ShardpipeError`` (the transform says the sample is bad data)."""
    try:
        return fn(*args, **kwargs)
    except ShardpipeError:
        raise
    except Exception as e:
        if isinstance(fn, functools.partial):
            name = repr(fn)
        else:
            name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        raise TransformError(f"transform {name} raised {type(e).__name__}: {e}") from e


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def rng_argument(fn: Callable[..., Any]) -> str | None:
    """How ``fn`` takes the generator: ``"positional"`` (two or more required positional
    parameters, or a second positional one named ``rng``), ``"keyword"`` (a keyword-only
    ``rng``) or ``None`` (``fn(img)``: one argument, or a signature Python cannot read).

    Raises ``TypeError`` when ``fn`` can be called neither as ``fn(img)`` nor with ``rng``: a
    programming error, reported before any sample rather than as every sample failing to decode.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a readable signature: called as before
        return None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in _POSITIONAL]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    keyword_rng = any(p.name == "rng" and p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    if len(required) >= 2 or (len(positional) >= 2 and positional[1].name == "rng"):
        how: str | None = "positional"
    elif keyword_rng:
        how = "keyword"
    else:
        how = None
    try:
        if how == "keyword":
            sig.bind(None, rng=None)
        else:
            sig.bind(*([None, None] if how else [None]))
    except TypeError as e:
        raise TypeError(
            f"transform {fn!r} must take (img) or (img, rng) and return the image; its signature is {sig}: {e}"
        ) from None
    return how


def as_transform(fn: Callable[..., Any]) -> Transform:
    """Accept a ``Transform``, a callable ``fn(img, rng) -> img`` (it gets each sample's
    generator; see :func:`rng_argument`) or a one-argument callable ``fn(img) -> img``."""
    if isinstance(fn, Transform):
        return fn
    how = rng_argument(fn)
    if how is None:
        return PlainTransform(fn)
    return RngTransform(fn, by_keyword=how == "keyword")


class Compose(Transform):
    """Apply transforms in order with the same generator."""

    def __init__(self, transforms: Sequence[Callable[..., Any]]):
        self.transforms = [as_transform(t) for t in transforms]

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            img = t(img, rng)
        return img

    def at_epoch(self, epoch: int) -> Transform:
        steps = [t.at_epoch(epoch) for t in self.transforms]
        if all(a is b for a, b in zip(steps, self.transforms)):
            return self
        return Compose(steps)


def _philox_key(seed: int, epoch: int, key: str) -> tuple[int, int]:
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")
    return ((seed & 0xFFFFFFFF) << 32) | (epoch & 0xFFFFFFFF), digest


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """A generator determined by (seed, epoch, key): stable across workers and resumes.

    The key is hashed to 64 bits (blake2b), so distinct keys of even a billion-sample data
    set practically never share a stream; seed and epoch fill the other 64 bits of Philox's key.
    """
    # an exact uint64 array: a list holding an int >= 2**63 would pass through float64
    return np.random.Generator(np.random.Philox(key=np.array(_philox_key(seed, epoch, key), np.uint64)))


class SampleRngs:
    """``sample_rng`` for a stage that uses each generator only while it handles its sample.

    Same streams, ~8x cheaper: building a ``Philox`` from a key first seeds it from
    ``os.urandom`` (a system call per sample); this keeps one ``Philox`` per thread and sets
    its state. A generator it returns is valid until the same thread's next call.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict:  # a copy (a worker's) starts with no generators
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()

    def __call__(self, seed: int, epoch: int, key: str) -> np.random.Generator:
        bitgen = getattr(self._local, "bitgen", None)
        if bitgen is None:
            bitgen = self._local.bitgen = np.random.Philox(key=[0, 0])
        bitgen.state = {
            "bit_generator": "Philox",
            "state": {"counter": np.zeros(4, np.uint64), "key": np.array(_philox_key(seed, epoch, key), np.uint64)},
            "buffer": np.zeros(4, np.uint64),
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }
        return np.random.Generator(bitgen)
