"""Crop-aware fused decode: same boxes, same pixels (within a level or two), same seeds."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from shardpipe.augment import (
    CenterCrop,
    ColorJitter,
    Compose,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    hflip,
    resized_crop,
    sample_rng,
)
from shardpipe.devtools.synth import make_image
from shardpipe.errors import DecodeError
from shardpipe.image.decoders.base import POWER_OF_TWO_SCALES, SCALE_MARGIN, pick_scale
from shardpipe.image.fused import FusedDecoder, build_image_fn

from .helpers import DECODER_BACKENDS, decoder_or_skip

BACKENDS = DECODER_BACKENDS
backend = decoder_or_skip


def jpeg(index: int, size: tuple[int, int], mode: str = "RGB", **options) -> bytes:
    buf = io.BytesIO()
    make_image(index, size=size).convert(mode).save(buf, "JPEG", quality=options.pop("quality", 90), **options)
    return buf.getvalue()


class RecordingRRC(RandomResizedCrop):
    """A RandomResizedCrop that remembers the boxes it drew."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.boxes: list[tuple[int, int, int, int]] = []

    def get_params(self, height, width, rng):
        box = super().get_params(height, width, rng)
        self.boxes.append(box)
        return box


IMAGES = {
    "typical": lambda: jpeg(1, (500, 375)),
    "portrait": lambda: jpeg(2, (375, 500)),
    "large": lambda: jpeg(3, (1400, 1050)),  # big boxes decode at 1/2 or 1/4
    "small": lambda: jpeg(4, (180, 140)),  # upscaled
    "grey": lambda: jpeg(5, (500, 375), "L"),
    "cmyk": lambda: jpeg(6, (400, 300), "CMYK"),
    "progressive": lambda: jpeg(7, (500, 375), progressive=True),
    "444": lambda: jpeg(8, (500, 375), subsampling=0),
    "png": lambda: (lambda b: (make_image(9, size=(300, 200)).save(b, "PNG"), b.getvalue())[1])(io.BytesIO()),
}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("image", list(IMAGES))
def test_fused_matches_unfused_on_the_same_boxes(name: str, image: str) -> None:
    dec = backend(name)
    data = IMAGES[image]()
    fused_rrc, plain_rrc = RecordingRRC(224), RecordingRRC(224)
    fused = build_image_fn(dec, fused_rrc)
    plain = build_image_fn(dec, plain_rrc, fuse=False)
    full = dec.decode(data)
    diffs = []
    for seed in range(8):
        a, b = fused(data, sample_rng(seed, 0, "k")), plain(data, sample_rng(seed, 0, "k"))
        assert a.shape == b.shape == (224, 224, 3) and a.dtype == np.uint8
        diffs.append(np.abs(a.astype(int) - b).mean())
    assert fused_rrc.boxes == plain_rrc.boxes  # the same draws give the same boxes
    # and the fused output is the box of the full image, resized with an antialiasing filter
    ref = np.asarray(Image.fromarray(full).resize((224, 224), Image.BILINEAR, box=_pil_box(fused_rrc.boxes[-1])))
    assert np.abs(a.astype(int) - ref).mean() < 4
    assert max(diffs) < 4, diffs
    if image in ("png", "cmyk"):  # no DCT scaling or YUV route for these: identical
        assert max(diffs) == 0


def _pil_box(box):
    top, left, h, w = box
    return (left, top, left + w, top + h)


def test_large_image_uses_a_dct_scale() -> None:
    # a 1400x1050 image, a box of 900x800 at output 224: 1/2 keeps 450x400 >= 224, 1/4 not
    exact = {"margin": 1.0}  # the scaled box may be as small as the output
    assert pick_scale(900, 800, 224, 224, POWER_OF_TWO_SCALES, **exact) == (1, 2)
    eighths = ((1, 1), (7, 8), (3, 4), (5, 8), (1, 2), (3, 8), (1, 4), (1, 8))
    assert pick_scale(900, 800, 224, 224, eighths, **exact) == (3, 8)  # 337x300; 1/4 gives 225x200
    assert pick_scale(1000, 1000, 224, 224, ((1, 1), (1, 4)), **exact) == (1, 4)
    assert pick_scale(300, 250, 224, 224, POWER_OF_TWO_SCALES, **exact) == (1, 1)
    assert pick_scale(448, 448, 224, 224, POWER_OF_TWO_SCALES, **exact) == (1, 2)
    assert pick_scale(447, 448, 224, 224, POWER_OF_TWO_SCALES, **exact) == (1, 1)
    # the default margin (1.25): the scaled box stays >= 280 px, so the resize still antialiases
    assert SCALE_MARGIN == 1.25
    assert pick_scale(900, 800, 224, 224, eighths) == (3, 8)  # 337x300; 1/4 gives 225x200 < 280
    assert pick_scale(746, 800, 224, 224, eighths) == (1, 2)  # 3/8 gives 279.75 columns < 280
    assert pick_scale(560, 560, 224, 224, POWER_OF_TWO_SCALES) == (1, 2)
    assert pick_scale(559, 560, 224, 224, POWER_OF_TWO_SCALES) == (1, 1)
    assert pick_scale(1000, 1000, 224, 224, ((1, 1), (1, 4))) == (1, 1)  # 250 < 280
    assert pick_scale(1120, 1120, 224, 224, ((1, 1), (1, 4))) == (1, 4)


@pytest.mark.parametrize("name", ["native", "turbo", "simplejpeg", "pil"])
@pytest.mark.parametrize("scales", ["pow2", "all"])
def test_scaled_boxes_land_on_the_right_pixels(name: str, scales: str) -> None:
    """A DCT-scaled decode of a big box agrees with the full-resolution crop."""
    dec = backend(name)
    data = IMAGES["large"]()
    full = dec.decode(data)
    fused = FusedDecoder(dec, scales)
    for box in [(0, 0, 1050, 1400), (100, 200, 900, 800), (37, 511, 613, 777)]:
        out = fused.decode_box(data, 1400, 1050, box, 224, 224)
        ref = np.asarray(Image.fromarray(full).resize((224, 224), Image.BILINEAR, box=_pil_box(box)))
        assert np.abs(out.astype(int) - ref).mean() < 4, box


def test_yuv_route_agrees_with_rgb_route() -> None:
    dec = backend("turbo")
    for image in ("typical", "large", "grey", "444", "progressive"):
        data = IMAGES[image]()
        t = Compose([RandomResizedCrop(224), RandomHorizontalFlip()])
        yuv, rgb = build_image_fn(dec, t, yuv=True), build_image_fn(dec, t)
        for seed in range(5):
            a, b = yuv(data, sample_rng(seed, 1, "x")), rgb(data, sample_rng(seed, 1, "x"))
            assert np.abs(a.astype(int) - b).mean() < 2.5, (image, seed)


def test_crop_distribution_is_the_unfused_one() -> None:
    """Over many samples, fused and unfused draw identical boxes, so position and scale
    statistics are those of RandomResizedCrop (checked against its definition)."""
    dec = backend("turbo")
    data = jpeg(11, (200, 150))
    rrc_f, rrc_u = RecordingRRC(64), RecordingRRC(64)
    fused, plain = build_image_fn(dec, rrc_f), build_image_fn(dec, rrc_u, fuse=False)
    for i in range(400):
        fused(data, sample_rng(3, 0, f"s{i}"))
        plain(data, sample_rng(3, 0, f"s{i}"))
    assert rrc_f.boxes == rrc_u.boxes
    boxes = np.array(rrc_f.boxes, dtype=float)
    area = boxes[:, 2] * boxes[:, 3] / (200 * 150)
    centre_x = (boxes[:, 1] + boxes[:, 3] / 2) / 200
    assert 0.08 - 0.01 <= area.min() and area.max() <= 1.0
    assert abs(centre_x.mean() - 0.5) < 0.03  # positions are symmetric (the distribution
    # itself is checked against torchvision's definition in test_augment)
    assert len({tuple(b) for b in rrc_f.boxes}) > 390  # boxes differ per sample key


@pytest.mark.parametrize("name", ["native", "turbo", "simplejpeg", "pil"])
def test_flips_and_the_rest_of_the_compose(name: str) -> None:
    dec = backend(name)
    data = IMAGES["typical"]()
    crop = build_image_fn(dec, Compose([RandomResizedCrop(224)]))
    flipped = build_image_fn(dec, Compose([RandomResizedCrop(224), RandomHorizontalFlip(p=1.0)]))
    for seed in range(4):
        np.testing.assert_array_equal(
            flipped(data, sample_rng(seed, 0, "a")), hflip(crop(data, sample_rng(seed, 0, "a")))
        )
    # colour jitter after the fused crop draws from the same generator, after the box
    jitter = Compose([RandomResizedCrop(224), RandomHorizontalFlip(), ColorJitter(0.4, 0.4, 0.4, 0.1)])
    f, u = build_image_fn(dec, jitter), build_image_fn(dec, jitter, fuse=False)
    a, b = f(data, sample_rng(5, 0, "a")), u(data, sample_rng(5, 0, "a"))
    assert np.abs(a.astype(int) - b).mean() < 4


@pytest.mark.parametrize("name", ["native", "turbo", "simplejpeg", "pil"])
def test_same_seed_same_bytes_across_threads(name: str) -> None:
    dec = backend(name)
    datas = [IMAGES[k]() for k in ("typical", "large", "grey", "cmyk", "png")]
    fn = build_image_fn(dec, Compose([RandomResizedCrop(160), RandomHorizontalFlip()]))
    jobs = [(d, i) for i, d in enumerate(datas * 4)]

    def run(job):
        data, i = job
        return fn(data, sample_rng(7, 2, f"key{i}")).tobytes()

    serial = [run(j) for j in jobs]
    assert serial == [run(j) for j in jobs]  # deterministic
    assert len(set(serial)) == len(serial)  # keys give different crops
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, jobs)) == serial


@pytest.mark.parametrize("name", ["native", "turbo", "simplejpeg", "pil"])
def test_validation_resize_centre_crop_fused(name: str) -> None:
    dec = backend(name)
    t = Compose([Resize(256), CenterCrop(224)])
    fused, plain = build_image_fn(dec, t), build_image_fn(dec, t, fuse=False)
    for image in ("typical", "portrait", "large", "small", "cmyk"):
        data = IMAGES[image]()
        a, b = fused(data, None), plain(data, None)
        assert a.shape == b.shape == (224, 224, 3)
        assert np.abs(a.astype(int) - b).mean() < 3, image


def test_bad_data_raises_decode_error_in_the_fused_path() -> None:
    fn = build_image_fn("auto", Compose([RandomResizedCrop(224), RandomHorizontalFlip()]))
    good = IMAGES["typical"]()
    rng = sample_rng(0, 0, "k")
    with pytest.raises(DecodeError, match="empty image data"):
        fn(b"", rng)
    with pytest.raises(DecodeError, match="image file is truncated"):
        fn(good[: len(good) // 2], rng)
    with pytest.raises(DecodeError, match="not a recognised image format"):
        fn(b"<html>not found</html>", rng)


def test_resized_crop_fractional_boxes_are_exact_shifts() -> None:
    """Sampling a box shifted by a whole pixel equals shifting the integer-box output."""
    img = np.asarray(make_image(12, size=(120, 90)))
    a = resized_crop(img, (10.0, 20.0, 40.0, 60.0), 40, 60)  # 1:1, integral: a plain crop
    np.testing.assert_array_equal(a, img[10:50, 20:80])
    b = resized_crop(img, (10.5, 20.25, 40.0, 60.0), 40, 60)  # fractional: interpolated
    ref = np.asarray(Image.fromarray(img).resize((60, 40), Image.BILINEAR, box=(20.25, 10.5, 80.25, 50.5)))
    assert np.abs(b.astype(int) - ref).mean() < 1.5


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "fmt, size, resize, crop",
    [
        ("JPEG", (128, 128), 256, 224),  # upscaled 2x: the box is (8, 8, 112, 112), whole pixels
        ("JPEG", (512, 512), 256, 224),  # downscaled 2x: (32, 32, 448, 448)
        ("PNG", (7, 1), 64, 64),  # 1 row, upscaled 64x: (0, 3, 1, 1) of the 1x7 image
    ],
)
def test_resize_centre_crop_on_whole_pixel_boxes_reads_around_the_box(name, fmt, size, resize, crop) -> None:
    """The fused Resize + CenterCrop box is a window onto the resized image: its edge rows blend
    with the pixels around the box there too, not with copies of its own edge pixels."""
    dec = backend(name)
    buf = io.BytesIO()
    make_image(13, size=size).save(buf, fmt)
    t = Compose([Resize(resize), CenterCrop(crop)])
    fused = build_image_fn(dec, t)(buf.getvalue(), None)
    np.testing.assert_array_equal(fused, build_image_fn(dec, t, fuse=False)(buf.getvalue(), None))
