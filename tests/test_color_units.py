"""shardpipe.augment.color, to the grey level: each adjustment against torchvision's definition written out in
float64 (ITU-R 601 luma, blends, colorsys's HSV rotation) on the OpenCV and the numpy path, OpenCV's 8-bit hue
within 6 levels of the exact rotation, ColorJitter's ranges and refusals by message, its draws one by one."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from shardpipe.augment import ColorJitter, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, color

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as torchvision's rgb_to_grayscale and PIL's "L"


@pytest.fixture(params=["opencv", "numpy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both implementations: with OpenCV, and the numpy fallback (what users without OpenCV get)."""
    if request.param == "opencv" and color.cv2 is None:
        pytest.skip("OpenCV is not installed")
    if request.param == "numpy":
        monkeypatch.setattr(color, "cv2", None)
    return request.param


def clean_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Random RGB pixels whose luma is not within 0.01 of a rounding tie (OpenCV's fixed-point luma may
    round those either way), so that the grey image is exactly the rounded luma on both paths."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    while True:
        luma = img.astype(np.float64) @ LUMA
        near_tie = np.abs(luma - np.floor(luma) - 0.5) < 0.01
        if not near_tie.any():
            return img
        img[near_tie] = rng.integers(0, 256, (int(near_tie.sum()), 3), dtype=np.uint8)


def saturated_ring() -> np.ndarray:
    """Every fully saturated colour at full value (one channel 255, one 0), as one row: the colours whose
    channels move most when the hue turns."""
    px = []
    for x in range(256):
        px += [(255, x, 0), (x, 255, 0), (0, 255, x), (0, x, 255), (x, 0, 255), (255, 0, x)]
    return np.array(px, np.uint8).reshape(1, -1, 3)


def assert_levels(out: np.ndarray, exact: np.ndarray) -> None:
    """``out`` is ``exact`` rounded to the nearest grey level and clipped to 0..255. Where ``exact`` lies
    within 1e-3 of a tie (x.5), float32 and float64 may round it apart: there, either neighbour."""
    assert out.dtype == np.uint8 and out.shape == exact.shape
    exact = np.clip(exact, 0, 255)
    near_tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-3
    assert near_tie.mean() < 0.01  # nearly every value is compared exactly
    wrong = np.where(near_tie, np.abs(out - exact) > 0.5 + 1e-3, out != np.rint(exact))
    assert not wrong.any(), (out[wrong][:8], exact[wrong][:8])


def reference_grey(img: np.ndarray) -> np.ndarray:
    """The rounded luma (of a ``clean_image``: no value near a tie)."""
    luma = img.astype(np.float64) @ LUMA
    assert np.abs(luma - np.floor(luma) - 0.5).min() >= 0.01
    return np.rint(luma).astype(np.uint8)


def reference_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's hue adjustment: HSV (colorsys), the hue turned by ``factor`` modulo 1, back to RGB."""
    flat = img.reshape(-1, 3).astype(np.float64) / 255.0
    hsv = [colorsys.rgb_to_hsv(*p) for p in flat]
    rgb = np.array([colorsys.hsv_to_rgb((h + factor) % 1.0, s, v) for h, s, v in hsv])
    return rgb.reshape(img.shape) * 255.0


# -- grey --------------------------------------------------------------------------------------------------


def test_grey_is_the_rounded_itu_601_luma(path: str) -> None:
    img = clean_image((24, 40), seed=1)
    g = color.grey(img)
    assert g.dtype == np.uint8 and g.shape == (24, 40)
    np.testing.assert_array_equal(g, reference_grey(img))
    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [10, 20, 30]]], np.uint8)
    # 76.245, 149.685, 29.07, 255, 0, 0.299 * 10 + 0.587 * 20 + 0.114 * 30 = 18.15
    np.testing.assert_array_equal(color.grey(primaries), [[76, 150, 29, 255, 0, 18]])


# -- brightness, contrast, saturation ----------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.0, 0.3719, 1.0, 1.8347, 7.0])
def test_brightness_scales_every_channel(path: str, factor: float) -> None:
    img = clean_image((16, 20), seed=2)
    assert_levels(adjust_brightness(img, factor), img * factor)


def test_brightness_keeps_any_layout(path: str) -> None:
    img = clean_image((8, 10), seed=3)
    exact = img * 0.6137
    # one channel (OpenCV's LUT would hand back H x W), a grey image, a mirrored view
    assert_levels(adjust_brightness(np.ascontiguousarray(img[..., :1]), 0.6137), exact[..., :1])
    assert_levels(adjust_brightness(img[..., 0], 0.6137), exact[..., 0])
    assert_levels(adjust_brightness(img[:, ::-1], 0.6137), exact[:, ::-1])
    assert img.dtype == np.uint8 and not np.shares_memory(adjust_brightness(img, 1.0), img)


@pytest.mark.parametrize("factor", [0.0, 0.4519, 1.0, 1.6291])
def test_contrast_blends_with_the_mean_grey_level(path: str, factor: float) -> None:
    img = clean_image((16, 20), seed=4)
    mean = reference_grey(img).mean()  # torchvision: the mean of the grey image
    assert_levels(adjust_contrast(img, factor), factor * img + (1 - factor) * mean)


def test_contrast_0_is_flat_grey_at_the_mean(path: str) -> None:
    img = np.array([[[255, 0, 0], [0, 0, 255], [200, 200, 200], [0, 0, 0]]], np.uint8)
    # grey levels 76, 29, 200, 0: mean 76.25
    np.testing.assert_array_equal(adjust_contrast(img, 0.0), np.full((1, 4, 3), 76, np.uint8))
    # 2x away from the mean, clipped: 2 * 255 - 76.25 = 433.75 -> 255, 0 - 76.25 -> 0
    np.testing.assert_array_equal(adjust_contrast(img, 2.0), [[[255, 0, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]])


@pytest.mark.parametrize("factor", [0.0, 0.4321, 1.0, 1.6173, 3.3017])
def test_saturation_blends_with_the_grey_image(path: str, factor: float) -> None:
    img = clean_image((16, 20), seed=5)
    grey = reference_grey(img).astype(np.float64)[..., None]
    assert_levels(adjust_saturation(img, factor), factor * img + (1 - factor) * grey)


def test_saturation_0_is_the_grey_image_in_every_channel(path: str) -> None:
    img = clean_image((6, 7), seed=6)
    np.testing.assert_array_equal(adjust_saturation(img, 0.0), np.repeat(reference_grey(img)[..., None], 3, -1))


# -- hue ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [-0.5, -0.3719, -0.0213, 0.0011, 0.1307, 1 / 3, 0.5])
def test_hue_without_opencv_is_the_exact_rotation(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    monkeypatch.setattr(color, "cv2", None)
    for img in (clean_image((20, 24), seed=7), saturated_ring()):
        assert_levels(adjust_hue(img, factor), reference_hue(img, factor))


def test_hue_without_opencv_wraps_a_hue_just_below_0(monkeypatch: pytest.MonkeyPatch) -> None:
    # red's hue 0 turned by -1e-9 is 1.0 modulo 1 in float32: the sixth sector, which is the first
    monkeypatch.setattr(color, "cv2", None)
    img = np.array([[[255, 0, 0], [200, 10, 10]]], np.uint8)
    np.testing.assert_array_equal(adjust_hue(img, -1e-9), img)


def test_opencv_reads_hue_on_two_scales() -> None:
    """What the OpenCV path corrects for: RGB2HSV_FULL has 256 hue steps a turn, HSV2RGB_FULL 255."""
    cv2 = color.cv2
    if cv2 is None:
        pytest.skip("OpenCV is not installed")
    blue = np.array([[[0, 0, 255]]], np.uint8)
    assert cv2.cvtColor(blue, cv2.COLOR_RGB2HSV_FULL).tolist() == [[[171, 255, 255]]]  # 240/360 * 256
    assert cv2.cvtColor(np.array([[[170, 255, 255]]], np.uint8), cv2.COLOR_HSV2RGB_FULL).tolist() == [[[0, 0, 255]]]


@pytest.mark.parametrize("factor", [-0.5, -0.3, -0.123, -0.0021, 0.0021, 0.01, 0.1, 0.25, 0.49, 0.5])
def test_hue_with_opencv_is_within_6_levels_of_the_exact_rotation(factor: float) -> None:
    if color.cv2 is None:
        pytest.skip("OpenCV is not installed")
    # 8-bit HSV: the hue read to 1/256 of a turn and written to 1/255 costs up to a step, 6 levels for a
    # saturated colour (12 when the table did not convert between OpenCV's two scales); on average a third
    # of a level (a random image) or two thirds (the saturated colours), against 1 and 1.9 before
    for img, mean in ((clean_image((64, 64), seed=8), 0.4), (saturated_ring(), 0.75)):
        out = adjust_hue(img, factor)
        assert out.dtype == np.uint8 and out.shape == img.shape and out is not img
        diff = np.abs(out - reference_hue(img, factor))
        assert diff.max() <= 6 and diff.mean() < mean, (factor, diff.max(), diff.mean())


@pytest.mark.parametrize("factor", [0.0, 1 / 512, -1 / 512])
def test_hue_with_opencv_under_half_a_step_returns_the_image(factor: float) -> None:
    if color.cv2 is None:
        pytest.skip("OpenCV is not installed")
    img = clean_image((4, 5), seed=9)
    assert adjust_hue(img, factor) is img


def test_hue_leaves_grey_pixels_alone(path: str) -> None:
    img = np.array([[[0, 0, 0], [17, 17, 17], [128, 128, 128], [255, 255, 255]]], np.uint8)
    for factor in (-0.5, -0.2, 0.3, 0.5):
        np.testing.assert_array_equal(adjust_hue(img, factor), img)


def test_hue_factor_range_is_half_a_turn_either_way(path: str) -> None:
    img = clean_image((3, 4), seed=10)
    assert adjust_hue(img, -0.5).shape == adjust_hue(img, 0.5).shape == img.shape
    for bad, shown in ((-0.5000001, "-0.5000001"), (0.5000001, "0.5000001"), (-1.0, "-1.0"), (float("nan"), "nan")):
        with pytest.raises(ValueError, match=rf"^hue factor must be in \[-0\.5, 0\.5\], got {shown}$"):
            adjust_hue(img, bad)


# -- ColorJitter: ranges and refusals ----------------------------------------------------------------------


def test_jitter_amounts_give_torchvisions_ranges() -> None:
    j = ColorJitter(brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1)
    assert (j.brightness, j.contrast, j.saturation, j.hue) == (
        pytest.approx((0.6, 1.4)),
        pytest.approx((0.7, 1.3)),
        pytest.approx((0.8, 1.2)),
        pytest.approx((-0.1, 0.1)),
    )
    # the low end stops at 0 (hue has none); whole numbers are amounts too
    j = ColorJitter(brightness=1.5, contrast=1, saturation=2.25, hue=0.5)
    assert (j.brightness, j.contrast, j.saturation, j.hue) == ((0.0, 2.5), (0.0, 2.0), (0.0, 3.25), (-0.5, 0.5))
    j = ColorJitter()
    assert (j.brightness, j.contrast, j.saturation, j.hue) == (None, None, None, None)
    j = ColorJitter(brightness=0.0, contrast=0, saturation=0.0, hue=0)
    assert (j.brightness, j.contrast, j.saturation, j.hue) == (None, None, None, None)


def test_jitter_ranges_are_taken_as_given() -> None:
    j = ColorJitter(brightness=(0, 3), contrast=(0.5, 0.5), saturation=[1, 2], hue=(-0.5, -0.5))
    assert (j.brightness, j.contrast, j.saturation, j.hue) == ((0.0, 3.0), (0.5, 0.5), (1.0, 2.0), (-0.5, -0.5))
    assert all(isinstance(x, float) for r in (j.brightness, j.contrast, j.saturation, j.hue) for x in r)
    assert ColorJitter(hue=(0.2, 0.2)).hue == (0.2, 0.2)
    assert ColorJitter(hue=(0.5, 0.5)).hue == (0.5, 0.5)
    assert ColorJitter(hue=(-0.5, 0.5)).hue == (-0.5, 0.5)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_jitter_refusals_name_the_argument(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be >= 0, got -0\.25$"):
        ColorJitter(**{name: -0.25})
    with pytest.raises(ValueError, match=rf"^{name} range must be \(min, max\), got \(0\.3, 0\.2\)$"):
        ColorJitter(**{name: (0.3, 0.2)})


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_jitter_refuses_negative_factors(name: str) -> None:
    # torchvision refuses them too ("values should be between (0, inf)"): a negative contrast or saturation
    # factor inverts the image around its grey
    with pytest.raises(ValueError, match=rf"^{name} factors must be >= 0, got \(-0\.5, 1\.5\)$"):
        ColorJitter(**{name: (-0.5, 1.5)})
    with pytest.raises(ValueError, match=rf"^{name} factors must be >= 0, got \(-2\.0, -1\.0\)$"):
        ColorJitter(**{name: (-2, -1)})


@pytest.mark.parametrize(
    ("hue", "shown"),
    [
        (0.51, r"\(-0\.51, 0\.51\)"),
        ((-0.6, 0.1), r"\(-0\.6, 0\.1\)"),
        ((0.1, 0.51), r"\(0\.1, 0\.51\)"),
        ((-0.51, -0.51), r"\(-0\.51, -0\.51\)"),
    ],
)
def test_jitter_hue_stays_within_half_a_turn(hue, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"^hue must lie within \[-0\.5, 0\.5\], got {shown}$"):
        ColorJitter(hue=hue)


# -- ColorJitter: the draws --------------------------------------------------------------------------------


def expected_jitter(img: np.ndarray, rng: np.random.Generator, ranges: dict[str, tuple[float, float]]) -> np.ndarray:
    """torchvision's get_params then forward: a permutation of the four, then one uniform factor for each
    enabled adjustment in the order brightness, contrast, saturation, hue; applied in the permutation's order."""
    order = rng.permutation(4)
    names = ["brightness", "contrast", "saturation", "hue"]
    factors = {n: float(rng.uniform(*ranges[n])) for n in names if n in ranges}
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    for i in order:
        if names[i] in factors:
            img = ops[i](img, factors[names[i]])
    return img


@pytest.mark.parametrize(
    "ranges",
    [
        {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.6, 1.4), "hue": (-0.1, 0.1)},
        {"saturation": (0.0, 2.0)},
        {"contrast": (0.2, 1.8), "hue": (-0.5, 0.5)},
        {"brightness": (0.5, 1.5), "saturation": (0.3, 0.9)},
    ],
)
def test_jitter_draws_the_order_then_each_enabled_factor(path: str, ranges: dict) -> None:
    img = clean_image((12, 16), seed=11)
    jitter = ColorJitter(**ranges)
    for seed in range(6):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(jitter(img, rng), expected_jitter(img, twin, ranges))
        assert rng.integers(1 << 62) == twin.integers(1 << 62)  # the same draws, no more


def test_jitter_with_nothing_enabled_draws_only_the_order() -> None:
    img = clean_image((3, 3), seed=12)
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    assert ColorJitter()(img, rng) is img
    twin.permutation(4)
    assert rng.integers(1 << 62) == twin.integers(1 << 62)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"brightness": float("nan")}, ValueError, "brightness must be finite, got nan"),
        ({"contrast": float("inf")}, ValueError, "contrast must be finite, got inf"),
        ({"saturation": (float("nan"), 1.0)}, ValueError, "saturation must be finite, got nan"),
        ({"hue": float("nan")}, ValueError, "hue must be finite, got nan"),
        ({"brightness": True}, TypeError, "brightness must be a number or a (min, max) pair of numbers, got True"),
        ({"contrast": "0.4"}, TypeError, "contrast must be a number or a (min, max) pair of numbers, got '0.4'"),
        (
            {"saturation": (0.5, 1, 2)},
            TypeError,
            "saturation must be a number or a (min, max) pair of numbers, got (0.5, 1, 2)",
        ),
    ],
)
def test_jitter_refuses_what_is_not_a_finite_amount_when_made(kwargs, error, message) -> None:
    # NaN and inf passed the sign checks, then failed every sample ("high - low range exceeds valid
    # bounds"); True jittered as 1; a third value was dropped
    with pytest.raises(error) as e:
        ColorJitter(**kwargs)
    assert str(e.value) == message


def test_jitter_takes_numpy_numbers() -> None:
    j = ColorJitter(brightness=np.float32(0.25), hue=np.float32(0.125), contrast=(np.float32(0.5), 1))
    assert (j.brightness, j.hue, j.contrast) == ((0.75, 1.25), (-0.125, 0.125), (0.5, 1.0))  # was an IndexError
