"""One contract for every batch decoder in the registry (cpu, dali, torchvision, and any added).

Each registered name runs the same checks; only what needs a missing GPU or package is skipped.
"""

from __future__ import annotations

import pytest
import torch

from shardpipe.batchdecode import BATCH_DECODERS, decode_batch, resolve_batch_decoder
from shardpipe.devtools.synth import make_jpeg
from shardpipe.errors import DecodeError

#: per decoder, how to build it on this machine (DALI on its CPU operators; torchvision needs CUDA)
BUILD = {
    "cpu": {"num_threads": 2},
    "dali": {"device": "cpu", "batch_size": 8, "num_threads": 2},
    "torchvision": {},
}


def build(name: str, **options):
    if name == "torchvision" and not torch.cuda.is_available():
        pytest.skip("the torchvision batch decoder decodes on a CUDA GPU")
    try:
        return resolve_batch_decoder(name, **{**BUILD.get(name, {}), **options})
    except ImportError as e:
        pytest.skip(f"{name} is not installed: {e}")


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [make_jpeg(i, seed=9) for i in range(6)]


def test_every_registered_decoder_has_a_build_recipe():
    assert set(BATCH_DECODERS) == set(BUILD), "add the new batch decoder to BUILD (and so to this suite)"


@pytest.mark.parametrize("name", sorted(BATCH_DECODERS))
@pytest.mark.parametrize("train", [True, False])
def test_shape_dtype_and_range(name, train, photos):
    dec = build(name, size=(24, 32), train=train, resize_short=40, seed=0)
    out = dec(photos).cpu()
    assert out.shape == (len(photos), 3, 24, 32) and out.dtype == torch.uint8
    assert int(out.max()) > 0  # real pixels, not an empty buffer
    norm = build(name, size=16, train=train, dtype="float32", normalize=((0.5,) * 3, (0.25,) * 3), seed=0)
    x = norm(photos).cpu()
    assert x.dtype == torch.float32 and float(x.min()) >= -2.0 - 1e-5 and float(x.max()) <= 2.0 + 1e-5


@pytest.mark.parametrize("name", sorted(BATCH_DECODERS))
def test_same_seed_epoch_and_keys_give_the_same_crops(name, photos):
    keys = [f"k{i}" for i in range(len(photos))]
    a, b = build(name, size=16, seed=3), build(name, size=16, seed=3)
    first, _ = a.decode(photos, keys)
    again, _ = b.decode(photos, keys)
    assert torch.equal(first.cpu(), again.cpu())
    b.set_epoch(1)
    other, _ = b.decode(photos, keys)
    assert not torch.equal(first.cpu(), other.cpu())


@pytest.mark.parametrize("name", sorted(BATCH_DECODERS))
def test_a_bad_image_is_skipped_and_its_fields_dropped(name, photos):
    dec = build(name, size=16, on_error="skip", seed=0)
    batch = {
        "jpg": [photos[0], b"not an image", photos[1]],
        "cls": torch.tensor([10, 11, 12]),
        "__key__": ["a", "bad", "c"],
    }
    out = decode_batch(dec, batch)
    assert out["jpg"].shape == (2, 3, 16, 16)
    assert out["cls"].tolist() == [10, 12] and out["__key__"] == ["a", "c"]
    assert dec.skipped == 1


@pytest.mark.parametrize("name", sorted(BATCH_DECODERS))
def test_a_bad_image_raises_naming_its_key(name, photos):
    dec = build(name, size=16, seed=0)
    with pytest.raises(DecodeError, match="sample 'bad': image does not decode"):
        dec.decode([photos[0], b"\xff\xd8\xff garbage"], ["a", "bad"])
