"""Every limit holds on every decoder path: a fallback never decodes what a limit refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shardpipe.image.decoders import get_decoder, registry
from shardpipe.image.decoders.registry import ImageTooLargeError, TooManyScansError

from .helpers import DECODER_BACKENDS, decoder_or_skip


def progressive(size=(64, 48)) -> bytes:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, progressive=True)
    return buf.getvalue()


def many_scans(copies: int) -> bytes:
    """A progressive JPEG whose last scan is repeated ``copies`` times (hundreds of scans)."""
    data = progressive()
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * copies + data[end:]


@pytest.fixture
def no_pil(monkeypatch):
    """Fail the test if any path hands the image to Pillow after a limit refused it."""

    def refuse(*args, **kwargs):
        raise AssertionError("Pillow was asked to decode an image a limit refused")

    monkeypatch.setattr("shardpipe.image.decoders.pil.Image.open", refuse)


@pytest.mark.parametrize("name", DECODER_BACKENDS)
def test_a_jpeg_with_too_many_scans_is_refused_without_fallback(name, no_pil):
    decoder = decoder_or_skip(name)
    data = many_scans(registry.MAX_SCANS)
    for call in (decoder.decode, lambda d: decoder.decode_scaled(d, (1, 2))):
        with pytest.raises(TooManyScansError, match=r"JPEG has \d+ start-of-scan markers, more than the limit of 500"):
            call(data)
    crop = getattr(decoder, "decode_crop", None)
    if crop is not None:
        with pytest.raises(TooManyScansError):
            crop(data, (0, 0, 32, 32), (16, 16))


def test_the_scan_limit_is_read_at_call_time(monkeypatch):
    pil = get_decoder("pil")
    data = many_scans(20)
    assert pil.decode(data).shape == (48, 64, 3)  # under the limit: decodes
    monkeypatch.setattr(registry, "MAX_SCANS", 10)
    with pytest.raises(TooManyScansError, match="more than the limit of 10") as info:
        pil.decode(data)
    assert isinstance(info.value, ImageTooLargeError)


def test_a_pixel_limit_refusal_does_not_fall_back(monkeypatch, no_pil):
    """A fast backend that refuses an image for its size must not hand it to PIL."""
    monkeypatch.setattr(registry, "MAX_PIXELS", 100)
    for name in DECODER_BACKENDS:
        decoder = decoder_or_skip(name) if name == "pil" else get_decoder(name) if name in _installed() else None
        if decoder is None or name == "pil":
            continue
        with pytest.raises(ImageTooLargeError, match="exceeds the limit of 100 pixels"):
            decoder.decode(progressive())


def _installed() -> set[str]:
    from shardpipe.image.decoders import available_decoders

    return set(available_decoders())


def test_the_shard_pipeline_reports_a_scan_bomb_as_a_decode_error(tmp_path):
    from shardpipe import DecodeError, ShardDataset

    from .helpers import write_shards

    (path,) = write_shards(tmp_path, [{"__key__": "a", "jpg": many_scans(600), "cls": 1}], [1])
    with pytest.raises(DecodeError, match="start-of-scan markers"):
        list(ShardDataset(str(path), decode="rgb8"))
    assert list(ShardDataset(str(path), decode="rgb8", on_error="skip")) == []


def test_the_dali_precheck_applies_the_same_limits(monkeypatch):
    """DALI decodes on the GPU (or its own CPU path): the signature check refuses what the limits refuse."""
    from shardpipe.batchdecode.dali import signature_problem

    assert signature_problem(np.frombuffer(progressive(), np.uint8)) is None
    reason = signature_problem(np.frombuffer(many_scans(registry.MAX_SCANS), np.uint8))
    assert reason is not None and "start-of-scan markers, more than the limit of 500" in reason
    monkeypatch.setattr(registry, "MAX_PIXELS", 100)
    reason = signature_problem(np.frombuffer(progressive(), np.uint8))
    assert reason is not None and "exceeds the limit of 100 pixels" in reason
