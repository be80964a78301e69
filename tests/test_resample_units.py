"""``resize`` and ``resized_crop`` (augment/resample.py) value by value on the OpenCV path: which
sizes come out, where the pixels are written, fine patterns averaged at every ratio, exact
sampling positions for fractional boxes, the prefilter's variance after block means.

tests/test_resample_quality.py compares whole crops with PIL within a tolerance;
tests/test_geometry_nocv2.py covers the path without OpenCV.
"""

from __future__ import annotations

import numpy as np
import pytest

from shardpipe.augment import resample
from shardpipe.augment.resample import resize, resized_crop
from shardpipe.devtools.synth import make_image

pytestmark = pytest.mark.skipif(not resample.HAVE_CV2, reason="the OpenCV path (without it: test_geometry_nocv2.py)")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(make_image(5, size=(96, 72)))  # (72, 96, 3)


def test_resize_to_the_same_size_is_the_image_itself(photo):
    assert resize(photo, 72, 96) is photo


@pytest.mark.parametrize("height, width", [(72, 48), (36, 96), (72, 97), (73, 96)])
def test_resize_with_one_side_kept_resizes_the_other(photo, height, width):
    out = resize(photo, height, width)
    assert out.shape == (height, width, 3)
    np.testing.assert_array_equal(out, resized_crop(photo, (0, 0, 72, 96), height, width))


@pytest.mark.parametrize("box", [(4, 8, 60, 80), (4.5, 8.25, 60, 80), (0, 0, 72, 96)])
def test_a_crop_is_written_into_an_out_that_fits(photo, box):
    out = np.zeros((24, 32, 3), np.uint8)
    result = resized_crop(photo, box, 24, 32, out=out)
    assert np.shares_memory(result, out)
    np.testing.assert_array_equal(out, resized_crop(photo, box, 24, 32))


def test_an_out_that_does_not_fit_is_left_alone(photo):
    for out in (np.zeros((24, 32, 3), np.float32), np.zeros((24, 31, 3), np.uint8), np.zeros((32, 24, 3), np.uint8)):
        result = resized_crop(photo, (0, 0, 72, 96), 24, 32, out=out)
        assert not np.shares_memory(result, out) and not out.any()
        np.testing.assert_array_equal(result, resized_crop(photo, (0, 0, 72, 96), 24, 32))


@pytest.mark.parametrize("size", [12, 10, 5])  # ratios 7.5, 9 and 18: blocks of 3, 3 and 6 pixels
def test_block_means_average_a_pattern_whose_period_divides_the_block(size):
    """White lines every third row and column: each block's mean is the pattern's mean grey."""
    img = np.zeros((90, 90, 3), np.uint8)
    img[:, ::3] = 255
    img[::3, :] = 255
    out = resized_crop(img, (0, 0, 90, 90), size, size).astype(int)
    assert resample._block(90 / size) % 3 == 0
    inner = out[1:-1, 1:-1]  # (the edges mirror the lines at 0 and 87)
    assert np.abs(inner - img.mean()).max() <= 1  # 141.67: all 142


def test_a_box_a_hair_off_whole_pixels_gives_the_same_image():
    """The fractional path (filter margins cut at the image's edge) agrees with the whole-pixel one."""
    img = np.zeros((40, 60), np.uint8)
    img[:, 0] = 255  # the edge column differs from its neighbours: a mirror that skips it would show
    img[-1, :] = 255
    whole = resized_crop(img, (0, 0, 40, 60), 20, 30)
    assert whole[5, :2].tolist() == [128, 0]
    for box in ((0, 0, 40, 60 - 1e-9), (1e-9, 0, 40 - 1e-9, 60)):
        np.testing.assert_array_equal(resized_crop(img, box, 20, 30), whole)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("which", ["start", "length"])
def test_fractional_box_sides_sample_their_exact_positions(axis, which):
    """On a linear ramp (which bilinear sampling keeps exactly) output pixel i holds the ramp at
    ``start + (i + 0.5) * length / n - 0.5``: a fractional start or length moves every pixel."""
    ramp = (4 * np.arange(64)).astype(np.uint8)
    img = np.repeat(ramp[:, None], 64, 1) if axis == 0 else np.repeat(ramp[None, :], 64, 0)
    start, length = (10.25, 20.0) if which == "start" else (10.0, 20.5)
    n = int(2 * length)  # an upscale by 2: no prefilter
    box = (start, 3.0, length, 20.0) if axis == 0 else (3.0, start, 20.0, length)
    out = resized_crop(img, box, *((n, 40) if axis == 0 else (40, n)))
    line = out[:, 7] if axis == 0 else out[7, :]
    expected = 4 * (start + (np.arange(n) + 0.5) * length / n - 0.5)
    np.testing.assert_array_equal(line, expected)


@pytest.mark.parametrize("ratio", [3.01, 3.5, 4.0, 6.0, 7.5, 9.0])
def test_block_means_and_the_prefilter_make_up_the_triangles_variance(ratio):
    """Past a ratio of 3, b x b block means (variance (b^2-1)/12) come first; the prefilter and
    bilinear sampling in the reduced grid add the rest of the triangle's r^2/6 (source pixels)."""
    block = resample._block(ratio)
    assert block == -(-ratio // 3)
    k = resample._kernel(ratio, block).astype(np.float64)
    x = np.arange(len(k)) - len(k) // 2
    total = (block * block - 1) / 12 + block * block * (float((k * x * x).sum()) + 1 / 6)
    assert total == pytest.approx(ratio * ratio / 6, abs=1e-3)
