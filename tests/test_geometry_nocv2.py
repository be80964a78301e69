"""shardpipe.augment.geometry without OpenCV (PIL's paths) for every layout and dtype: grey as (H, W)
and (H, W, 1), grey + alpha, RGB, RGBA; uint8, uint16, int16, float32, float64.

Rotations and resizes work one channel at a time: PIL takes no (H, W, 1) array and premultiplies
alpha ("LA", "RGBA") when it resamples, which changed colours under transparent pixels and divided a
fill's colour by its alpha. What must be exact is compared exactly (shapes, dtypes, fills, constant
colours, alpha, quarter turns, PIL's own per-channel resize); bilinear values are compared with
OpenCV's within a bound stated at each test (OpenCV samples at 1/32 pixel on some paths)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shardpipe.augment import geometry, resample
from shardpipe.augment.geometry import CenterCrop, RandomResizedCrop, Resize, rotate
from shardpipe.augment.resample import resize, resized_crop

needs_cv2 = pytest.mark.skipif(not resample.HAVE_CV2, reason="compares PIL's path with OpenCV's")

LAYOUTS = [None, 1, 2, 3, 4]  # channels: None is (H, W)
#: each dtype's value range: one grey level is 1/255 of it
RANGES = {
    np.uint8: (0, 255),
    np.uint16: (0, 65535),
    np.int16: (-32768, 32767),
    np.float32: (0.0, 1.0),
    np.float64: (0.0, 1.0),
}
DTYPES = list(RANGES)


def without_opencv(fn, *args):
    """``fn(*args)`` on the paths users without OpenCV get."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(geometry, "cv2", None)
        m.setattr(resample, "cv2", None)
        return fn(*args)


def shape_of(height: int, width: int, channels: int | None) -> tuple[int, ...]:
    return (height, width) if channels is None else (height, width, channels)


def noise(shape: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
    """Values over all of ``dtype``'s range."""
    lo, hi = RANGES[dtype]
    unit = np.random.default_rng(seed).random(shape)
    values = lo + unit * (hi - lo)
    return (np.rint(values) if np.issubdtype(dtype, np.integer) else values).astype(dtype)


def smooth(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A smooth picture (a different phase per channel) over most of ``dtype``'s range."""
    lo, hi = RANGES[dtype]
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    planes = [0.5 + 0.4 * np.sin(x / 5.0 + c) * np.cos(y / 7.0) for c in range(shape[2] if len(shape) == 3 else 1)]
    values = lo + np.stack(planes, axis=2).reshape(shape) * (hi - lo)
    return (np.rint(values) if np.issubdtype(dtype, np.integer) else values).astype(dtype)


def fills_for(dtype, channels: int | None) -> tuple[float, ...]:
    """A fill per channel, exactly representable in ``dtype`` (and in float32)."""
    lo, hi = RANGES[dtype]
    fracs = (0.125, 0.25, 0.5, 0.75)[: channels or 1]
    return tuple(int(lo + f * (hi - lo)) if np.issubdtype(dtype, np.integer) else f for f in fracs)


def levels(a: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    """``|a - b|`` in grey levels (1/255 of the dtype's range)."""
    lo, hi = RANGES[dtype]
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) * 255.0 / (hi - lo)


def wholly_outside(height: int, width: int, angle: float) -> np.ndarray:
    """Output pixels of ``rotate`` whose source lies over a pixel outside the image: neither bilinear
    neighbour is in it, so they are the fill (a 0.1-pixel margin for OpenCV's 1/32-pixel positions)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a = np.radians(angle)
    sx = np.cos(a) * (x - cx) - np.sin(a) * (y - cy) + cx
    sy = np.sin(a) * (x - cx) + np.cos(a) * (y - cy) + cy
    return (sx < -1.1) | (sx > width + 0.1) | (sy < -1.1) | (sy > height + 0.1)


# -- rotate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels", LAYOUTS)
def test_quarter_turns_are_exact_without_opencv(channels, dtype) -> None:
    square = noise(shape_of(9, 9, channels), dtype)
    wide = noise(shape_of(6, 11, channels), dtype, seed=1)
    for img, angle, expected in (
        (square, 90.0, np.rot90(square)),
        (square, -90.0, np.rot90(square, -1)),
        (square, 270.0, np.rot90(square, -1)),
        (wide, 180.0, wide[::-1, ::-1]),
        (wide, 0.0, wide),
    ):
        out = without_opencv(rotate, img, angle)
        assert out.shape == img.shape and out.dtype == img.dtype
        if dtype is np.float64:  # PIL turns float32 images: float64 comes back within float32's precision
            np.testing.assert_allclose(out, expected, rtol=1e-7, atol=0)
        else:
            np.testing.assert_array_equal(out, expected)


@needs_cv2
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels", LAYOUTS)
def test_rotation_without_opencv_is_opencvs(channels, dtype) -> None:
    # bound: mean < 1 grey level and max <= 8 levels over the whole image, edges included (the edges
    # blend into the fill on both paths). On noise, the 1-, 3- and 4-channel uint8/uint16/float32
    # paths agree within 1 level; the others (2 channels, int16, float64) differ up to ~6 levels where
    # OpenCV rounds sample positions to 1/32 pixel (up to 2 x 1/64 x 255 levels, plus rounding).
    img = noise(shape_of(24, 37, channels), dtype)
    fills = fills_for(dtype, channels)
    fill = fills[0] if channels is None else fills
    for angle in (30.0, 45.0, 137.0, -12.5):
        ref = rotate(img, angle, fill)
        out = without_opencv(rotate, img, angle, fill)
        assert out.shape == img.shape and out.dtype == img.dtype
        diff = levels(out, ref, dtype)
        assert diff.mean() < 1.0 and diff.max() <= 8.0, (angle, diff.mean(), diff.max())
        outside = wholly_outside(24, 37, angle)
        assert outside.sum() > 40  # (corners of every angle here)
        expected = np.broadcast_to(np.array(fills, dtype), (int(outside.sum()), len(fills)))
        for result in (ref, out):  # the fill comes back exactly, every channel
            np.testing.assert_array_equal(result[outside].reshape(expected.shape), expected)


@pytest.mark.parametrize("channels", [2, 4])
def test_transparent_pixels_keep_their_colour_when_rotated(channels) -> None:
    # one colour everywhere, alpha from 0 to 255: bilinear sampling of a constant is that constant,
    # channel by channel; PIL rotated "LA" / "RGBA" premultiplied, so transparent pixels lost it
    colour = (200, 100, 50)[: channels - 1]
    img = np.empty((21, 31, channels), np.uint8)
    img[..., :-1] = colour
    img[..., -1] = np.random.default_rng(3).integers(0, 256, (21, 31))
    img[5:15, 8:20, -1] = 0  # a fully transparent block
    for angle in (0.0, 30.0, 90.0):
        for out in (rotate(img, angle, (*colour, 0)), without_opencv(rotate, img, angle, (*colour, 0))):
            assert out.shape == img.shape and out.dtype == np.uint8
            assert (out[..., :-1] == colour).all()
            assert out[..., -1].min() == 0 and out[..., -1].max() > 150  # (the alpha turned along)
            if angle == 0.0:
                np.testing.assert_array_equal(out, img)
    # the alpha channel turns as that channel alone would
    alone = without_opencv(rotate, np.ascontiguousarray(img[..., -1]), 30.0)
    np.testing.assert_array_equal(without_opencv(rotate, img, 30.0, (*colour, 0))[..., -1], alone)


@pytest.mark.parametrize(
    ("channels", "fill", "expected"),
    [
        (2, (10, 40), [10, 40]),
        (4, (10, 20, 30, 40), [10, 20, 30, 40]),
        (4, (10, 20, 30), [10, 20, 30, 0]),  # missing channels are filled with 0, as by OpenCV
        (4, 7, [7, 7, 7, 7]),
        (3, (10,), [10, 0, 0]),
        (1, (10, 20), [10]),
    ],
)
@pytest.mark.parametrize("opencv", [True, False])
def test_every_channel_of_the_fill_comes_back_exactly(channels, fill, expected, opencv) -> None:
    # PIL returned a premultiplied fill's colour divided by its alpha: (10, 40) came back (63, 40)
    if opencv and not resample.HAVE_CV2:
        pytest.skip("no OpenCV")
    img = np.full((21, 31, channels), 200, np.uint8)
    out = rotate(img, 45.0, fill) if opencv else without_opencv(rotate, img, 45.0, fill)
    assert out.shape == img.shape and out.dtype == np.uint8
    for y, x in ((0, 0), (0, 30), (20, 0), (20, 30)):
        assert out[y, x].tolist() == expected
    assert out[10, 15].tolist() == [200] * channels


@needs_cv2
def test_an_opaque_image_stays_opaque_and_its_colours_turn_as_rgb() -> None:
    rgb = noise((24, 37, 3), np.uint8)
    rgba = np.concatenate([rgb, np.full((24, 37, 1), 255, np.uint8)], axis=2)
    for angle in (30.0, 137.0):
        out = without_opencv(rotate, rgba, angle, (1, 2, 3, 255))
        assert (out[..., 3] == 255).all() and (rotate(rgba, angle, (1, 2, 3, 255))[..., 3] == 255).all()
        np.testing.assert_array_equal(out[..., :3], without_opencv(rotate, rgb, angle, (1, 2, 3)))
        assert levels(out, rotate(rgba, angle, (1, 2, 3, 255)), np.uint8).max() <= 1


# -- resize, resized crops and the transforms that use them ------------------------------------


@pytest.mark.parametrize("channels", LAYOUTS)
def test_resize_without_opencv_is_pils_own_on_each_channel(channels) -> None:
    img = noise(shape_of(50, 70, channels), np.uint8)
    for height, width, box in ((20, 33, None), (61, 90, None), (17, 20, (3.5, 2.25, 40.0, 51.0))):
        if box is None:
            out = without_opencv(resize, img, height, width)
            pil_box = (0.0, 0.0, 70.0, 50.0)
        else:
            out = without_opencv(resized_crop, img, box, height, width)
            pil_box = (box[1], box[0], box[1] + box[3], box[0] + box[2])
        assert out.shape == shape_of(height, width, channels) and out.dtype == np.uint8
        flat, src = out.reshape(height, width, -1), img.reshape(50, 70, -1)
        for c in range(src.shape[2]):
            pil = Image.fromarray(np.ascontiguousarray(src[..., c])).resize(
                (width, height), Image.BILINEAR, box=pil_box
            )
            np.testing.assert_array_equal(flat[..., c], np.asarray(pil))


@pytest.mark.parametrize("channels", [2, 4])
def test_transparent_pixels_keep_their_colour_when_resized(channels) -> None:
    colour = (200, 100, 50)[: channels - 1]
    img = np.empty((40, 60, channels), np.uint8)
    img[..., :-1] = colour
    img[..., -1] = np.random.default_rng(4).integers(0, 256, (40, 60))
    img[10:30, 20:40, -1] = 0
    for out in (
        without_opencv(resize, img, 17, 23),
        without_opencv(resize, img, 80, 90),
        without_opencv(resized_crop, img, (2.5, 3.25, 30.0, 41.0), 13, 19),
        without_opencv(RandomResizedCrop(16), img, np.random.default_rng(0)),
    ):
        assert out.dtype == np.uint8 and out.shape[2] == channels
        assert (out[..., :-1] == colour).all()
        assert out[..., -1].min() == 0 and out[..., -1].max() > 150  # (the alpha resized along)


@needs_cv2
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels", LAYOUTS)
def test_resize_without_opencv_is_opencvs(channels, dtype) -> None:
    # bound, on a smooth picture: mean < 1 grey level and max <= 4 (seen: 0.45 and 3; OpenCV's
    # antialiasing filter approximates PIL's, see shardpipe/augment/resample.py)
    img = smooth(shape_of(60, 80, channels), dtype)
    for fn, args in (
        (resize, (23, 31)),
        (resize, (90, 110)),
        (resized_crop, ((3.5, 2.25, 40.0, 51.0), 17, 20)),
        (Resize(30), (None,)),
        (Resize((25, 20)), (None,)),
    ):
        ref, out = fn(img, *args), without_opencv(fn, img, *args)
        assert out.shape == ref.shape and out.dtype == img.dtype and ref.dtype == img.dtype
        assert out.shape[2:] == img.shape[2:]
        diff = levels(out, ref, dtype)
        assert diff.mean() < 1.0 and diff.max() <= 4.0, (fn, args, diff.mean(), diff.max())


@pytest.mark.parametrize("channels", LAYOUTS)
def test_crop_transforms_keep_every_layout_without_opencv(channels) -> None:
    img = noise(shape_of(30, 45, channels), np.uint8)
    rrc = without_opencv(RandomResizedCrop(12), img, np.random.default_rng(5))
    assert rrc.shape == shape_of(12, 12, channels) and rrc.dtype == np.uint8
    resized = without_opencv(Resize(20), img, None)
    assert resized.shape == shape_of(20, 30, channels)
    cropped = without_opencv(CenterCrop((40, 8)), img, None)  # padded rows, cropped columns
    assert cropped.shape == shape_of(40, 8, channels) and cropped.dtype == np.uint8
    np.testing.assert_array_equal(cropped[5:35], img[:, 18:26])
    assert not cropped[:5].any() and not cropped[35:].any()
