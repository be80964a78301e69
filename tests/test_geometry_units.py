"""shardpipe.augment.geometry one piece at a time: crop boxes draw for draw as torchvision's
get_params, flips into ``out`` (OpenCV and numpy paths), centre crops and resizes to the pixel,
rotations about the exact centre with their fill, and the sizes a schedule fixes per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from shardpipe.augment import geometry
from shardpipe.augment.geometry import (
    CenterCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomVerticalFlip,
    Resize,
    hflip,
    random_resized_crop_box,
    rotate,
    vflip,
)
from shardpipe.augment.resample import resize
from shardpipe.augment.schedule import Ramp, ramp

from .helpers import torchvision_crop_box


def pixels(height: int, width: int, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    """Random uint8 pixels: every position tells where it came from."""
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def no_cv2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numpy / PIL paths (what users without OpenCV get)."""
    monkeypatch.setattr(geometry, "cv2", None)


class FixedRng:
    """An rng whose ``random()`` is always ``value`` (to test the flip probability at its edge)."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


# -- random_resized_crop_box: torchvision's get_params, draw for draw ------------------------


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [
        (375, 500, (0.08, 1.0), (3 / 4, 4 / 3)),
        (500, 375, (0.08, 1.0), (3 / 4, 4 / 3)),
        (64, 64, (0.5, 1.0), (0.5, 2.0)),
        (20, 300, (0.08, 1.0), (3 / 4, 4 / 3)),  # many tries fail: the fallback and retries are reached
        (300, 20, (0.9, 1.0), (1.0, 1.0)),
        (50, 50, (1e-4, 1e-3), (0.05, 20.0)),  # boxes of a pixel or two: a width or height of 0 is drawn often
    ],
)
def test_crop_boxes_are_torchvisions_draw_for_draw(height, width, scale, ratio) -> None:
    ours, ref = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(300):
        box = random_resized_crop_box(height, width, ours, scale, ratio)
        assert box == torchvision_crop_box(height, width, ref, scale, ratio)
        assert all(type(v) is int for v in box)
        top, left, h, w = box
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h >= 1 and w >= 1
    assert ours.random() == ref.random()  # the same number of draws


def test_a_crop_may_be_the_whole_image_and_its_position_covers_every_offset() -> None:
    rng = np.random.default_rng(0)
    assert random_resized_crop_box(10, 10, rng, (1.0, 1.0), (1.0, 1.0)) == (0, 0, 10, 10)  # w == width accepted
    # a 1x1 box of a 2x3 image can lie at every one of the 6 positions, the last row and column included
    seen = {random_resized_crop_box(2, 3, rng, (1 / 6, 1 / 6), (1.0, 1.0))[:2] for _ in range(200)}
    assert seen == {(t, left) for t in (0, 1) for left in (0, 1, 2)}


def test_ten_tries_then_the_largest_centred_crop_within_the_ratio() -> None:
    # a target area twice the image's never fits: 10 tries (20 draws), then the fallback
    for (height, width), box in {
        (10, 100): (0, 43, 10, 13),  # too wide: full height, width 10 * 4/3 rounded
        (100, 10): (43, 0, 13, 10),  # too tall: full width, height 10 / (3/4) rounded
        (30, 35): (0, 0, 30, 35),  # within the ratio: the whole image
    }.items():
        rng = np.random.default_rng(3)
        assert random_resized_crop_box(height, width, rng, (2.0, 3.0)) == box
        after = np.random.default_rng(3)
        after.uniform(size=20)
        assert rng.random() == after.random()


def test_a_box_that_rounds_to_nothing_is_not_taken() -> None:
    # a target area of 0.01 pixels rounds to w = h = 0 on every try: the centred fallback, never an empty box
    assert random_resized_crop_box(10, 10, np.random.default_rng(0), (1e-4, 1e-4), (1.0, 1.0)) == (0, 0, 10, 10)
    assert random_resized_crop_box(10, 20, np.random.default_rng(0), (1e-4, 1e-4), (1.0, 1.0)) == (0, 5, 10, 10)


def test_random_resized_crop_resizes_the_drawn_box_to_its_size() -> None:
    img = pixels(60, 80)
    t = RandomResizedCrop((24, 40), scale=(0.3, 0.6), ratio=(0.5, 2.0))
    assert (t.size, t.scale, t.ratio, t.schedule) == ((24, 40), (0.3, 0.6), (0.5, 2.0), None)
    for seed in range(5):
        top, left, h, w = random_resized_crop_box(60, 80, np.random.default_rng(seed), (0.3, 0.6), (0.5, 2.0))
        assert t.get_params(60, 80, np.random.default_rng(seed)) == (top, left, h, w)
        out = t(img, np.random.default_rng(seed))
        assert out.shape == (24, 40, 3)
        np.testing.assert_array_equal(out, resize(img[top : top + h, left : left + w], 24, 40))
    # the default scale and ratio are torchvision's
    default = RandomResizedCrop(32)
    assert (default.size, default.scale, default.ratio) == ((32, 32), (0.08, 1.0), (3 / 4, 4 / 3))
    rng, ref = np.random.default_rng(11), np.random.default_rng(11)
    for _ in range(50):
        assert default.get_params(375, 500, rng) == torchvision_crop_box(375, 500, ref, (0.08, 1.0), (3 / 4, 4 / 3))


# -- flips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
@pytest.mark.parametrize("opencv", [True, False])
def test_flips_mirror_every_layout_exactly(channels, opencv, monkeypatch) -> None:
    if not opencv:
        monkeypatch.setattr(geometry, "cv2", None)
    img = pixels(5, 7, channels)
    for fn, ref in ((hflip, img[:, ::-1]), (vflip, img[::-1])):
        out = fn(img)
        assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, ref)
        assert out is not img and np.shares_memory(out, img) is False


def written_into(got: np.ndarray, out: np.ndarray) -> bool:
    """``got`` is ``out``'s memory seen whole (OpenCV's result, reshaped: a view of ``out``)."""
    return got.shape == out.shape and got.__array_interface__["data"][0] == out.__array_interface__["data"][0]


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_opencv_flips_into_an_out_array_that_fits(channels) -> None:
    img = pixels(5, 7, channels)
    for fn, ref in ((hflip, img[:, ::-1].copy()), (vflip, img[::-1].copy())):
        out = np.zeros_like(img)
        got = fn(img, out)
        assert written_into(got, out)
        np.testing.assert_array_equal(out, ref)
        # in place: out may be the image itself
        inplace = img.copy()
        assert written_into(fn(inplace, inplace), inplace)
        np.testing.assert_array_equal(inplace, ref)
        # an out that does not fit (another shape, dtype, or read-only) is left alone
        for bad in (np.zeros((7, 5, channels), np.uint8), np.zeros(img.shape, np.uint16), np.zeros_like(img)):
            if bad.dtype == np.uint8 and bad.shape == img.shape:
                bad.flags.writeable = False
            got = fn(img, bad)
            assert not np.shares_memory(got, bad) and not bad.any()
            np.testing.assert_array_equal(got, ref)


def test_numpy_flips_leave_out_alone(no_cv2) -> None:
    img = pixels(5, 7, 3)
    out = np.zeros_like(img)
    got = hflip(img, out)
    assert not np.shares_memory(got, out) and not out.any()
    np.testing.assert_array_equal(got, img[:, ::-1])


@pytest.mark.parametrize(("cls", "flip"), [(RandomHorizontalFlip, hflip), (RandomVerticalFlip, vflip)])
def test_random_flips_flip_below_p_only(cls, flip) -> None:
    img = pixels(4, 6, 3)
    ref = flip(img)
    assert cls().p == 0.5
    # one draw of random() in [0, 1): flipped when it is below p, not when it equals p
    assert cls(p=0.25)(img, FixedRng(0.25)) is img
    np.testing.assert_array_equal(cls(p=0.25)(img, FixedRng(0.2499)), ref)
    out = np.zeros_like(img)
    assert cls(p=0.25).into(img, FixedRng(0.25), out) is img and not out.any()
    assert written_into(cls(p=0.25).into(img, FixedRng(0.2499), out), out)
    np.testing.assert_array_equal(out, ref)
    rng, twin = np.random.default_rng(4), np.random.default_rng(4)
    flipped = [cls(p=0.5)(img, rng) is not img for _ in range(20)]
    assert flipped == [twin.random() < 0.5 for _ in range(20)]


# -- Resize and CenterCrop -----------------------------------------------------------------------


def test_resize_output_size_scales_the_shorter_side() -> None:
    assert Resize(8).output_size(10, 15) == (8, 12)
    assert Resize(8).output_size(15, 10) == (12, 8)
    assert Resize(8).output_size(10, 10) == (8, 8)
    assert Resize(7).output_size(3, 5) == (7, 11)  # 35 / 3 = 11.67, rounded down
    assert Resize(7).output_size(5, 3) == (11, 7)
    assert Resize(1).output_size(10, 15) == (1, 1)
    assert Resize(1).output_size(15, 10) == (1, 1)
    assert Resize(1).output_size(10, 25) == (1, 2)
    exact = Resize((5, 9))
    assert exact.size == (5, 9)
    assert exact.output_size(100, 3) == (5, 9) and exact.output_size(3, 100) == (5, 9)


def test_resize_resizes_to_its_output_size() -> None:
    img = pixels(30, 45)
    out = Resize(20)(img, None)
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, resize(img, 20, 30))
    np.testing.assert_array_equal(Resize((12, 7))(img, None), resize(img, 12, 7))


def test_center_crop_takes_the_middle_rounding_halves_to_even() -> None:
    img = pixels(9, 9, 2)
    np.testing.assert_array_equal(CenterCrop(2)(img, None), img[4:6, 4:6])  # (9 - 2) / 2 = 3.5 -> 4
    np.testing.assert_array_equal(CenterCrop(4)(img, None), img[2:6, 2:6])  # 2.5 -> 2
    np.testing.assert_array_equal(CenterCrop((3, 6))(img, None), img[3:6, 2:8])  # 3 and 1.5 -> 2
    np.testing.assert_array_equal(CenterCrop((9, 9))(img, None), img)
    # an image at least as large as the crop is not padded: the crop is a view of it, not a copy
    for size in ((9, 9), (9, 4), (4, 9), (2, 2)):
        assert np.shares_memory(CenterCrop(size)(img, None), img)
    assert CenterCrop(2).size == (2, 2)
    assert CenterCrop((np.int64(3), 4.0)).size == (3, 4)
    assert all(type(v) is int for v in CenterCrop((np.int64(3), 4.0)).size)


def test_center_crop_pads_with_zeros_where_the_image_is_smaller() -> None:
    img = pixels(3, 5, 2) | 1  # no zero pixel
    out = CenterCrop((5, 3))(img, None)
    # taller than the image: padded to 5 rows (1 above, 1 below); wider: cropped to columns 1-3
    expected = np.zeros((5, 3, 2), np.uint8)
    expected[1:4] = img[:, 1:4]
    assert out.shape == (5, 3, 2) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    big = CenterCrop(6)(img, None)
    expected = np.zeros((6, 6, 2), np.uint8)
    expected[1:4, 0:5] = img  # (6 - 3) // 2 = 1 row and (6 - 5) // 2 = 0 columns above and left
    np.testing.assert_array_equal(big, expected)
    wide = CenterCrop((2, 8))(img, None)
    expected = np.zeros((3, 8, 2), np.uint8)
    expected[:, 1:6] = img
    np.testing.assert_array_equal(wide, expected[0:2])  # rows: (3 - 2) / 2 = 0.5 -> 0
    deep = np.arange(2 * 2 * 3, dtype=np.uint16).reshape(2, 2, 3) + 1
    padded = CenterCrop(4)(deep, None)
    assert padded.dtype == np.uint16 and padded.shape == (4, 4, 3)
    np.testing.assert_array_equal(padded[1:3, 1:3], deep)
    assert padded.sum() == deep.sum()


def test_center_crop_pads_a_grey_image_without_a_channel_axis() -> None:
    grey = pixels(3, 5, None) | 1
    out = CenterCrop((5, 3))(grey, None)
    expected = np.zeros((5, 3), np.uint8)
    expected[1:4] = grey[:, 1:4]
    assert out.shape == (5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    single = CenterCrop(6)(grey[:, :, None], None)
    assert single.shape == (6, 6, 1)
    np.testing.assert_array_equal(single[1:4, 0:5, 0], grey)
    assert single.sum() == grey.sum()


# -- sizes: ints of any kind, refused clearly otherwise -----------------------------------------


NUMPY_INTS = [np.int8(24), np.uint8(24), np.int16(24), np.int32(24), np.int64(24), np.uint64(24)]


@pytest.mark.parametrize("n", NUMPY_INTS, ids=lambda n: type(n).__name__)
def test_numpy_integer_sizes_work_as_ints(n) -> None:
    img = pixels(30, 45)
    r = Resize(n)
    assert r.size == 24 and type(r.size) is int
    assert r.output_size(30, 45) == (24, 36) and all(type(v) is int for v in r.output_size(30, 45))
    np.testing.assert_array_equal(r(img, None), Resize(24)(img, None))
    for cls in (CenterCrop, RandomResizedCrop):
        t = cls(n)
        assert t.size == (24, 24) and all(type(v) is int for v in t.size)
        np.testing.assert_array_equal(t(img, np.random.default_rng(1)), cls(24)(img, np.random.default_rng(1)))
    for cls in (Resize, CenterCrop, RandomResizedCrop):
        pair = cls((n, np.int64(16)))
        assert pair.size == (24, 16) and all(type(v) is int for v in pair.size)
    assert Resize([n, 16]).size == (24, 16)  # a list is a pair too
    assert Resize(np.array([24, 16])).size == (24, 16)


def test_schedules_of_numpy_integers_give_int_sizes() -> None:
    sched = Ramp(np.int64(64), np.int64(128), 0, 2, np.int64(32))  # Ramp itself, not ramp(), converts nothing
    r = Resize(sched)
    assert r.size == 64 and type(r.size) is int and r.output_size(10, 20) == (64, 128)
    assert r.at_epoch(1).size == 96 and type(r.at_epoch(2).size) is int
    crop = RandomResizedCrop(sched)
    assert crop.size == (64, 64) and all(type(v) is int for v in crop.size)


SIZE_TYPE = "size must be an int or a (height, width) pair of ints, got "


@pytest.mark.parametrize(
    ("size", "error", "message"),
    [
        (True, TypeError, SIZE_TYPE + "True"),
        (False, TypeError, SIZE_TYPE + "False"),
        (np.True_, TypeError, SIZE_TYPE + repr(np.True_)),  # (numpy 1 and 2 spell it differently)
        ((True, 3), TypeError, SIZE_TYPE + "(True, 3)"),
        (2.5, TypeError, SIZE_TYPE + "2.5"),
        (224.0, TypeError, SIZE_TYPE + "224.0"),
        ((3, 4.5), TypeError, SIZE_TYPE + "(3, 4.5)"),
        ((float("nan"), 3), TypeError, SIZE_TYPE + "(nan, 3)"),
        ("224", TypeError, SIZE_TYPE + "'224'"),
        (None, TypeError, SIZE_TYPE + "None"),
        ((3,), TypeError, SIZE_TYPE + "(3,)"),
        ((1, 2, 3), TypeError, SIZE_TYPE + "(1, 2, 3)"),
        (0, ValueError, "size must be positive, got 0"),
        (-5, ValueError, "size must be positive, got -5"),
        ((0, 3), ValueError, "size must be positive, got (0, 3)"),
        ((3, -2), ValueError, "size must be positive, got (3, -2)"),
        (np.int64(0), ValueError, f"size must be positive, got {np.int64(0)!r}"),
    ],
)
@pytest.mark.parametrize("cls", [Resize, CenterCrop, RandomResizedCrop])
def test_sizes_that_are_not_positive_ints_are_refused(cls, size, error, message) -> None:
    with pytest.raises(error) as e:
        cls(size)
    assert str(e.value) == message


def test_a_schedule_step_is_checked_as_a_size() -> None:
    with pytest.raises(TypeError) as e:
        Resize(Ramp(64.0, 128.0))  # a float size, refused as ``Resize(64.0)`` is, when the ramp is made
    assert str(e.value) == "ramp start must be an integer, got 64.0"


# -- sizes that follow a schedule ----------------------------------------------------------------


def test_sizes_start_at_the_schedules_epoch_0_and_are_fixed_per_epoch() -> None:
    sched = ramp(64, 128, 0, 2, multiple=32)
    crop = RandomResizedCrop(sched)
    assert crop.schedule is sched and crop.size == (64, 64)
    at1 = crop.at_epoch(1)
    assert at1 is not crop and at1.size == (96, 96) and at1.schedule is sched
    assert crop.at_epoch(5).size == (128, 128)
    assert crop.size == (64, 64)  # the original keeps its epoch-0 size
    resize_t = Resize(sched)
    assert resize_t.size == 64 and resize_t.at_epoch(1).size == 96  # Resize keeps the shorter side's int
    assert CenterCrop(sched).at_epoch(2).size == (128, 128)
    late = ramp(32, 96, 2, 4)
    assert Resize(late).size == 32 and Resize(late).at_epoch(3).size == 64
    plain = CenterCrop(10)
    assert plain.schedule is None and plain.at_epoch(7) is plain
    assert Resize((4, 5)).at_epoch(1).size == (4, 5)


# -- rotation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("opencv", [True, False])
def test_rotation_turns_about_the_exact_centre(opencv, monkeypatch) -> None:
    if not opencv:
        monkeypatch.setattr(geometry, "cv2", None)
    for n in (7, 8):
        img = pixels(n, n, 3, seed=n)
        np.testing.assert_array_equal(rotate(img, 90.0), np.rot90(img))  # counter-clockwise
        np.testing.assert_array_equal(rotate(img, -90.0), np.rot90(img, -1))
    wide = pixels(5, 8, 3)
    np.testing.assert_array_equal(rotate(wide, 180.0), wide[::-1, ::-1])
    np.testing.assert_array_equal(rotate(wide, 0.0), wide)
    grey = pixels(7, 7, None)
    out = rotate(grey, 90.0)
    assert out.shape == (7, 7)
    np.testing.assert_array_equal(out, np.rot90(grey))
    single = pixels(7, 7, 1)
    out = rotate(single, 90.0)
    assert out.shape == (7, 7, 1)
    np.testing.assert_array_equal(out, np.rot90(single))


@pytest.mark.parametrize("opencv", [True, False])
def test_rotation_fills_the_corners_from_outside(opencv, monkeypatch) -> None:
    if not opencv:
        monkeypatch.setattr(geometry, "cv2", None)
    img = np.full((21, 31, 3), 200, np.uint8)
    out = rotate(img, 45.0, fill=(10, 20, 30))
    assert out.shape == img.shape and out.dtype == np.uint8
    for y, x in ((0, 0), (0, 30), (20, 0), (20, 30)):
        assert out[y, x].tolist() == [10, 20, 30]
    assert out[10, 15].tolist() == [200, 200, 200]
    assert rotate(img, 45.0)[0, 0].tolist() == [0, 0, 0]  # fill 0 by default
    assert rotate(img, 45.0, fill=7)[0, 0].tolist() == [7, 7, 7]  # one number for every channel
    # with an alpha channel (grey + alpha, RGBA) the corners take the whole fill, its alpha too (PIL
    # rotated these premultiplied: the fill's colour came back divided by its alpha)
    for channels in (2, 4):
        alpha = rotate(np.full((21, 31, channels), 200, np.uint8), 45.0, fill=7)
        assert alpha[20, 30].tolist() == [7] * channels and alpha[10, 15].tolist() == [200] * channels
    grey = np.full((21, 31), 200, np.uint8)
    g = rotate(grey, 45.0, fill=7)
    assert g.shape == (21, 31) and g[0, 0] == 7 and g[10, 15] == 200


def test_both_rotation_paths_interpolate_bilinearly(monkeypatch) -> None:
    # on noise, bilinear sampling from OpenCV and from PIL agree within a grey level inside the image;
    # nearest-neighbour sampling would be tens of levels off
    img = pixels(41, 41, 3, seed=1)
    with_cv2 = rotate(img, 30.0).astype(int)
    monkeypatch.setattr(geometry, "cv2", None)
    with_pil = rotate(img, 30.0).astype(int)
    inside = (slice(12, 29), slice(12, 29))
    assert np.abs(with_cv2[inside] - with_pil[inside]).max() <= 1
    assert np.abs(with_cv2[inside] - img[inside]).mean() > 20  # (it did turn)


def test_random_rotation_draws_its_angle_uniformly_from_degrees() -> None:
    img = pixels(15, 15, 3)
    t = RandomRotation((5, 20), fill=(1, 2, 3))
    assert t.degrees == (5.0, 20.0) and all(type(d) is float for d in t.degrees) and t.fill == (1, 2, 3)
    for seed in range(3):
        angle = float(np.random.default_rng(seed).uniform(5.0, 20.0))
        np.testing.assert_array_equal(t(img, np.random.default_rng(seed)), rotate(img, angle, (1, 2, 3)))
    sym = RandomRotation(30)
    assert sym.degrees == (-30.0, 30.0) and all(type(d) is float for d in sym.degrees) and sym.fill == 0
    angle = float(np.random.default_rng(9).uniform(-30.0, 30.0))
    np.testing.assert_array_equal(sym(img, np.random.default_rng(9)), rotate(img, angle, 0))
    assert RandomRotation(2.5).degrees == (-2.5, 2.5)
    assert RandomRotation(0).degrees == (0.0, 0.0)
    np.testing.assert_array_equal(RandomRotation(0)(img, np.random.default_rng(0)), img)
    for bad in (-1, -0.5):
        with pytest.raises(ValueError) as e:
            RandomRotation(bad)
        assert str(e.value) == f"degrees must be >= 0 when a single number, got {bad}"
    assert RandomRotation((-10, -5)).degrees == (-10.0, -5.0)  # a range may lie below 0


# -- arguments that are not numbers, or out of range: refused where the transform is made -------------


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"scale": (1.0, 0.08)}, ValueError, "scale range must be (min, max), got (1.0, 0.08)"),
        ({"scale": (NAN, 1.0)}, ValueError, "scale must be finite, got nan"),
        ({"scale": (0.08, INF)}, ValueError, "scale must be finite, got inf"),
        (
            {"scale": (-0.5, 1.0)},
            ValueError,
            "scale must be fractions of the area, >= 0 with a max > 0, got (-0.5, 1.0)",
        ),
        ({"scale": (0, 0)}, ValueError, "scale must be fractions of the area, >= 0 with a max > 0, got (0.0, 0.0)"),
        ({"scale": 0.5}, TypeError, "scale must be a (min, max) pair of numbers, got 0.5"),
        ({"scale": (0.1, 0.5, 1.0)}, TypeError, "scale must be a (min, max) pair of numbers, got (0.1, 0.5, 1.0)"),
        ({"scale": ("0.1", 1)}, TypeError, "scale must be a number, got '0.1'"),
        ({"ratio": (4 / 3, 3 / 4)}, ValueError, f"ratio range must be (min, max), got {(4 / 3, 3 / 4)}"),
        ({"ratio": (0, 1)}, ValueError, "ratio must be aspect ratios (width / height) > 0, got (0.0, 1.0)"),
        ({"ratio": (-1, 1)}, ValueError, "ratio must be aspect ratios (width / height) > 0, got (-1.0, 1.0)"),
        ({"ratio": (1, NAN)}, ValueError, "ratio must be finite, got nan"),
    ],
)
def test_random_resized_crop_refuses_bad_scale_and_ratio_when_made(kwargs, error, message) -> None:
    # each one used to fail every sample (numpy: "high - low < 0", math: "math domain error"), which
    # on_error="skip" counted as bad images: an epoch of none
    with pytest.raises(error) as e:
        RandomResizedCrop(224, **kwargs)
    assert str(e.value) == message


def test_random_resized_crop_takes_any_real_pairs() -> None:
    t = RandomResizedCrop(8, scale=[np.float32(0.5), 1], ratio=np.array([0.5, 2.0]))
    assert t.scale == (0.5, 1.0) and t.ratio == (0.5, 2.0)
    assert RandomResizedCrop(8, scale=(0.25, 0.25)).scale == (0.25, 0.25)  # one area
    assert RandomResizedCrop(8, scale=(0.5, 2.0)).scale == (0.5, 2.0)  # beyond 1: torchvision allows it
    box = RandomResizedCrop(8, scale=(0.25, 0.25), ratio=(1, 1)).get_params(40, 40, np.random.default_rng(0))
    assert box[2:] == (20, 20)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: RandomRotation(NAN), ValueError, "degrees must be finite, got nan"),
        (lambda: RandomRotation((30, -30)), ValueError, "degrees range must be (min, max), got (30, -30)"),
        (lambda: RandomRotation((0, INF)), ValueError, "degrees must be finite, got inf"),
        (lambda: RandomRotation("30"), TypeError, "degrees must be a number or a (min, max) pair of numbers, got '30'"),
        (lambda: RandomHorizontalFlip(NAN), ValueError, "p must be finite, got nan"),
        (lambda: RandomHorizontalFlip(1.5), ValueError, "p must be a probability in [0, 1], got 1.5"),
        (lambda: RandomVerticalFlip(-0.1), ValueError, "p must be a probability in [0, 1], got -0.1"),
        (lambda: RandomVerticalFlip(None), TypeError, "p must be a number, got None"),
    ],
)
def test_rotation_and_flips_refuse_bad_arguments_when_made(make, error, message) -> None:
    with pytest.raises(error) as e:
        make()
    assert str(e.value) == message
    assert RandomRotation(np.float32(2.5)).degrees == (-2.5, 2.5)
    assert RandomHorizontalFlip(np.float64(1)).p == 1.0
