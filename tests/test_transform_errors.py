"""A user's transform that raises is a bug in code, not bad data: ``TransformError`` names the
transform, the sample and the shard under every ``on_error``, while a transform that raises
``DecodeError`` has the sample skipped (and counted) as bad data."""

from __future__ import annotations

import numpy as np
import pytest

from shardpipe import DecodeError, IndexedDataset, ShardDataset, ShardLoader, TransformError
from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop

from .helpers import make_samples, write_indexed_dataset, write_manifest_dataset

BAD_KEY = "sample00004"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest_dataset(tmp_path_factory.mktemp("transform-errors"), make_samples(10), [4, 6])


class Faulty:
    """Divides by a zero count on one sample (a bug; it knows the sample by its image's first pixel)."""

    def __init__(self, first_pixel: np.ndarray):
        self.first_pixel = first_pixel

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if np.array_equal(img[0, 0], self.first_pixel):
            hits = 0
            return img * (len(img) // hits)
        return img


def first_pixels(manifest: str, transform=None) -> dict[str, np.ndarray]:
    return {s["__key__"]: s["jpg"][0, 0].copy() for s in ShardDataset(manifest, transform=transform, seed=3)}


def test_a_plain_function_that_raises_stops_the_epoch_even_under_skip(manifest):
    def broken(img):
        return img.reshape(-1, 7)  # 40 x 48 x 3 is no multiple of 7: a ValueError on every sample

    ds = ShardDataset(manifest, transform=broken, on_error="skip")
    with pytest.raises(TransformError) as e:
        list(ds)
    msg = str(e.value)
    assert msg.startswith("transform test_a_plain_function_that_raises_stops_the_epoch_even_under_skip.<locals>.broken"
                          " raised ValueError: cannot reshape")  # fmt: skip
    assert "on sample 'sample00000' in shard " in msg and "shard-0000.tar" in msg
    assert "raise shardpipe.DecodeError in the transform" in msg
    assert isinstance(e.value.__cause__, ValueError)
    assert not isinstance(e.value, DecodeError) and ds.stats.errors() == {}


@pytest.mark.parametrize("fused", [True, False], ids=["after-a-fused-crop", "alone"])
@pytest.mark.parametrize("on_error", ["raise", "warn", "skip"])
def test_a_faulty_rng_transform_names_the_sample_it_failed_on(manifest, fused, on_error):
    head = [RandomResizedCrop(24), RandomHorizontalFlip()] if fused else []
    pixels = first_pixels(manifest, Compose(head) if head else None)
    faulty = Faulty(pixels[BAD_KEY])
    ds = ShardDataset(manifest, transform=Compose([*head, faulty]), seed=3, on_error=on_error)
    seen = []
    with pytest.raises(TransformError, match=rf"^transform Faulty raised ZeroDivisionError: .* on sample '{BAD_KEY}' "):
        for s in ds:
            seen.append(s["__key__"])
    assert seen == [f"sample{i:05d}" for i in range(4)]  # in order up to the faulty sample, none skipped
    assert ds.stats.errors() == {}


def test_a_transform_raising_decode_error_has_the_sample_skipped_and_counted(manifest):
    pixels = first_pixels(manifest)

    def refuse(img, rng):
        if np.array_equal(img[0, 0], pixels[BAD_KEY]):
            raise DecodeError("too dark to train on")
        return img

    ds = ShardDataset(manifest, transform=refuse, on_error="skip")
    keys = [s["__key__"] for s in ds]
    assert keys == [f"sample{i:05d}" for i in range(10) if i != 4]
    assert ds.stats.errors() == {"DecodeError": 1}
    with pytest.raises(DecodeError, match=rf"cannot decode 'jpg' of sample '{BAD_KEY}' .*too dark to train on"):
        list(ShardDataset(manifest, transform=refuse))


def test_a_transform_error_in_a_dataloader_worker_reaches_the_trainer_as_itself(manifest):
    pixels = first_pixels(manifest)
    ds = ShardDataset(manifest, transform=Faulty(pixels[BAD_KEY]), on_error="skip")
    with pytest.raises(TransformError, match=rf"transform Faulty raised ZeroDivisionError: .* on sample '{BAD_KEY}'"):
        list(ShardLoader(ds, num_workers=2))


def test_random_access_raises_it_too(tmp_path):
    manifest, _ = write_indexed_dataset(tmp_path, [4, 6])
    ds = IndexedDataset(str(manifest))
    pixels = {ds[i]["__key__"]: ds[i]["jpg"][0, 0].copy() for i in range(len(ds))}
    faulty = IndexedDataset(str(manifest), transform=Faulty(pixels[BAD_KEY]))
    assert faulty[3]["__key__"] == "sample00003"
    with pytest.raises(TransformError, match=rf"on sample '{BAD_KEY}' in shard .*shard-0001.tar"):
        faulty[4]
