"""Plain callables as transforms: ``fn(img, rng)`` gets each sample's generator, ``fn(img)`` does not,
and a callable that takes neither is a ``TypeError`` before any sample (not a skipped epoch)."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import Compose, as_transform, sample_rng
from shardpipe.augment.base import PlainTransform, RngTransform

from .helpers import make_samples, write_manifest_dataset

IMG = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)


def flip_sometimes(img, rng):
    """The documented contract, as a plain function."""
    return np.ascontiguousarray(img[:, ::-1]) if rng.random() < 0.5 else img


def draw(img, rng):
    return rng.integers(0, 1 << 30)


def scaled(img, rng, scale):
    return rng.integers(0, 1 << 30) * scale


class Drawer:
    def __call__(self, img, rng):
        return rng.integers(0, 1 << 30)


def rng() -> np.random.Generator:
    return sample_rng(1, 0, "k")


def expected_draw() -> int:
    return int(rng().integers(0, 1 << 30))


@pytest.mark.parametrize(
    "fn",
    [
        draw,
        lambda img, r: r.integers(0, 1 << 30),  # any name for the second parameter
        lambda img, rng=None: rng.integers(0, 1 << 30),
        lambda img, *, rng: rng.integers(0, 1 << 30),
        Drawer(),
        functools.partial(scaled, scale=1),
    ],
    ids=["function", "lambda", "rng-default", "rng-keyword", "callable-class", "partial"],
)
def test_callables_taking_rng_get_the_samples_generator(fn):
    t = as_transform(fn)
    assert isinstance(t, RngTransform)
    assert t(IMG, rng()) == expected_draw()


@pytest.mark.parametrize(
    "fn",
    [lambda img: img + 1, lambda img, size=2: img + size - 1, lambda *args: args[0] + 1, np.negative],
    ids=["one-argument", "optional-second", "var-positional", "ufunc"],
)
def test_one_argument_callables_get_the_image_only(fn):
    t = as_transform(fn)
    assert isinstance(t, PlainTransform)
    assert (t(IMG, rng()) == fn(IMG)).all()


@pytest.mark.parametrize(
    "fn, signature",
    [
        (lambda img, rng, extra: img, "(img, rng, extra)"),
        (lambda: None, "()"),
        (lambda *, rng: None, "(*, rng)"),
    ],
)
def test_a_callable_that_takes_neither_form_is_refused_naming_its_signature(fn, signature):
    with pytest.raises(
        TypeError, match=r"must take \(img\) or \(img, rng\) and return the image; its signature is "
    ) as e:
        as_transform(fn)
    assert signature in str(e.value)


def test_compose_passes_rng_to_plain_functions():
    composed = Compose([lambda img: img, draw])
    assert composed(IMG, rng()) == expected_draw()


def test_the_rng_wrapper_pickles_when_the_function_does():
    wrapped = pickle.loads(pickle.dumps(as_transform(draw)))
    assert repr(wrapped) == f"WithRng({draw!r})" and wrapped(IMG, rng()) == expected_draw()


# -- in a dataset ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest_dataset(tmp_path_factory.mktemp("transform-sig"), make_samples(12), [5, 7])


def flipped_by_hand(manifest: str) -> dict[str, np.ndarray]:
    """Each sample's image, flipped where its generator (seed 4, epoch 0) says so."""
    out = {}
    for s in ShardDataset(manifest, seed=4):
        out[s["__key__"]] = flip_sometimes(s["jpg"], sample_rng(4, 0, s["__key__"]))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_a_plain_rng_transform_runs_on_every_sample_with_its_generator(manifest, workers):
    want = flipped_by_hand(manifest)
    flips = sum(not np.array_equal(want[k], s["jpg"]) for k, s in zip(want, ShardDataset(manifest, seed=4)))
    assert 0 < flips < len(want)  # both branches taken
    ds = ShardDataset(manifest, seed=4, transform=flip_sometimes, on_error="skip")
    got = {s["__key__"]: np.asarray(s["jpg"]) for s in ShardLoader(ds, num_workers=workers)}
    assert sorted(got) == sorted(want)  # every sample once (workers interleave their parts)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert ds.stats.errors() == {}


def test_a_transform_with_a_wrong_signature_fails_when_the_dataset_is_made(manifest):
    def needs_three(img, rng, size):
        return img

    with pytest.raises(TypeError, match=r"transform .*needs_three.* must take \(img\) or \(img, rng\)"):
        ShardDataset(manifest, transform=needs_three, on_error="skip")
