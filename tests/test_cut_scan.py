"""JPEGs whose scan data is cut short and closed with an end marker (a broken download): libjpeg
warns and fills the rest with grey; every decoder and path refuses them with a ``CutShortError``,
and harmless warnings still decode to the pixels they did."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shardpipe import DecodeError, ShardDataset
from shardpipe.augment import RandomResizedCrop, Resize, sample_rng
from shardpipe.devtools.synth import CMYK_INDEX, PROGRESSIVE_INDEX, make_image, make_jpeg
from shardpipe.image.decoders import CutShortError
from shardpipe.image.decoders.jpeg import read_header
from shardpipe.image.fused import build_image_fn
from shardpipe.image.restart import add_restart_intervals, restart_layout

from .helpers import decoder_or_skip, small_jpeg, write_shards

#: the decoders that refuse a cut scan (all of them, and auto)
CHECKED = ["native", "simplejpeg", "turbo", "jpeg4py", "cv2", "pil", "auto"]
CUT = r"^JPEG scan data cut short \(libjpeg: Corrupt JPEG data: premature end of data segment\): "


def cut(data: bytes) -> bytes:
    """``data`` cut in the middle of its scan data and closed with an end-of-image marker."""
    start = read_header(data).scan_offset
    return data[: start + (len(data) - start) // 2] + b"\xff\xd9"


def _restart_marked() -> bytes:
    data = add_restart_intervals(make_jpeg(3, plain=True))
    assert restart_layout(data) is not None
    return data


GOOD = {
    "baseline": lambda: make_jpeg(3, plain=True),
    "progressive": lambda: make_jpeg(PROGRESSIVE_INDEX),
    "restart-marked": _restart_marked,
    "cmyk": lambda: make_jpeg(CMYK_INDEX),
}


@pytest.fixture(scope="module")
def good() -> dict[str, bytes]:
    return {name: make() for name, make in GOOD.items()}


@pytest.mark.parametrize("variant", list(GOOD))
@pytest.mark.parametrize("name", CHECKED)
def test_a_cut_scan_is_refused_by_every_decoder_at_every_scale(name, variant, good):
    dec = decoder_or_skip(name)
    bad = cut(good[variant])
    with pytest.raises(CutShortError, match=CUT):
        dec.decode(bad)
    with pytest.raises(CutShortError, match=CUT):
        dec.decode_scaled(bad, (1, 2))
    if name == "pil":
        with pytest.raises(CutShortError, match=CUT):
            dec.decode_pil(bad)
    assert issubclass(CutShortError, DecodeError)


@pytest.mark.parametrize("variant", list(GOOD))
@pytest.mark.parametrize("name", CHECKED)
def test_a_fused_decode_that_reaches_the_cut_is_refused(name, variant, good):
    dec = decoder_or_skip(name)
    hdr = read_header(good[variant])
    whole = hdr.width / hdr.height  # the box is the whole image, so it reaches the cut
    for transform in (RandomResizedCrop(64, scale=(1.0, 1.0), ratio=(whole, whole)), Resize(64)):
        fn = build_image_fn(dec, transform)
        assert fn(good[variant], sample_rng(0, 0, "k")).shape[2] == 3
        with pytest.raises(CutShortError, match=CUT):
            fn(cut(good[variant]), sample_rng(0, 0, "k"))


@pytest.mark.parametrize("variant", ["baseline", "restart-marked"])
def test_a_native_crop_wholly_above_the_cut_is_intact_data(variant, good):
    # the crop decoder stops after the box's last row: what it returns was all in the file
    dec = decoder_or_skip("native")
    box = (0, 0, 64, 96)  # top rows; the cut is half-way down the scan data
    expected = dec.decode_crop(good[variant], box, (32, 48))
    np.testing.assert_array_equal(dec.decode_crop(cut(good[variant]), box, (32, 48)), expected)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", CHECKED)
def test_shard_dataset_skips_and_counts_cut_jpegs(name, fused, good, tmp_path):
    decoder_or_skip(name)
    samples = [{"__key__": f"ok{i}", "jpg": small_jpeg(i), "cls": i} for i in range(3)]
    samples += [{"__key__": f"cut-{v}", "jpg": cut(data), "cls": 9} for v, data in good.items()]
    urls = write_shards(tmp_path, samples, [3, len(samples) - 3])
    transform = Resize(32) if fused else None  # fused: decodes at a DCT scale, down to the bottom rows
    ds = ShardDataset(urls, decoder=name, transform=transform, on_error="skip")
    assert sorted(s["__key__"] for s in ds) == ["ok0", "ok1", "ok2"]
    assert ds.stats.errors() == {"DecodeError": len(good)}
    with pytest.raises(DecodeError, match=r"'cut-baseline'.*JPEG scan data cut short"):
        list(ShardDataset(urls, decoder=name, transform=transform))


def _with_junk(data: bytes) -> bytes:
    """``data`` with two stray bytes before its second marker: libjpeg warns ("extraneous bytes
    before marker") and decodes every pixel."""
    second = 4 + int.from_bytes(data[4:6], "big")  # after SOI and the first segment
    return data[:second] + b"\x00\x00" + data[second:]


def _pil(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("variant", ["baseline", "progressive"])
@pytest.mark.parametrize("name", CHECKED)
def test_harmless_warnings_still_decode_to_the_same_pixels(name, variant, good):
    dec = decoder_or_skip(name)
    data = _with_junk(good[variant])
    np.testing.assert_array_equal(dec.decode(data), _pil(data))  # PIL's pixels, as before


@pytest.mark.parametrize("name", CHECKED)
def test_a_good_jpeg_that_ends_in_mid_grey_decodes(name):
    # flat mid-grey is what a cut leaves: a good image ending in it is checked, and passes
    dec = decoder_or_skip(name)
    img = np.asarray(make_image(3, size=(96, 64))).copy()
    img[32:] = 128
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    out = dec.decode(buf.getvalue())
    assert tuple(out[-1, -1]) == (128, 128, 128)
    np.testing.assert_array_equal(out, _pil(buf.getvalue()))
