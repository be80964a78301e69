"""Augmentations: torchvision's crop distribution and colour semantics, PIL-level resizing,
exact flips and rotations, the OpenCV and the PIL/numpy paths agreeing, device normalize."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from shardpipe.augment import (
    CenterCrop,
    ColorJitter,
    Compose,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomVerticalFlip,
    Resize,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color,
    geometry,
    hflip,
    random_resized_crop_box,
    resample,
    resize,
    rotate,
    sample_rng,
    vflip,
)
from shardpipe.devtools.synth import make_image
from shardpipe.image.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize

from .helpers import ks_statistic, torchvision_crop_box


def photo(size=(160, 120), index=1) -> np.ndarray:
    return np.asarray(make_image(index, size=size))


@pytest.fixture
def no_cv2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the PIL / numpy fallbacks (what users without OpenCV get)."""
    for module in (resample, geometry, color):
        monkeypatch.setattr(module, "cv2", None)


# -- RandomResizedCrop: torchvision's distribution ----------------------------------------


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (100, 400), (64, 64)])
def test_crop_box_distribution_is_torchvisions(shape: tuple[int, int]) -> None:
    h, w = shape
    n = 3000
    ours = np.array([random_resized_crop_box(h, w, sample_rng(1, 0, f"k{i}")) for i in range(n)], float)
    r = np.random.default_rng(5)  # one stream of its own, as torchvision draws from torch's
    ref = np.array([torchvision_crop_box(h, w, r) for _ in range(n)], float)
    for boxes in (ours, ref):
        assert (boxes[:, 2] >= 1).all() and (boxes[:, 0] + boxes[:, 2] <= h).all()
        assert (boxes[:, 3] >= 1).all() and (boxes[:, 1] + boxes[:, 3] <= w).all()

    def features(b):
        return {
            "area": b[:, 2] * b[:, 3] / (h * w),
            "log-aspect": np.log(b[:, 3] / b[:, 2]),
            "centre-y": (b[:, 0] + b[:, 2] / 2) / h,
            "centre-x": (b[:, 1] + b[:, 3] / 2) / w,
        }

    fo, fr = features(ours), features(ref)
    # 5% critical KS distance for n = m = 3000 is 0.035
    for k in fo:
        assert ks_statistic(fo[k], fr[k]) < 0.045, k


def test_crop_box_fallback_is_the_centre_crop() -> None:
    # scale (0.99, 1) with an impossible ratio: every try fails, centre crop within ratio
    rng = sample_rng(0, 0, "x")
    box = random_resized_crop_box(100, 400, rng, scale=(0.99, 1.0), ratio=(1.0, 1.0))
    assert box == torchvision_crop_box(100, 400, np.random.default_rng(0), scale=(0.99, 1.0), ratio=(1.0, 1.0))
    assert box == (0, 150, 100, 100)


# -- resizing -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 60), (100, 60), (57, 43), (30, 20), (13, 11), (200, 150), (320, 200)])
@pytest.mark.parametrize("channels", [3, 1])
def test_resize_matches_pil_antialiased_bilinear(size, channels) -> None:
    img = photo((160, 120))
    if channels == 1:
        img = np.ascontiguousarray(img[:, :, 1])
    w, h = size
    out = resize(img, h, w)
    ref = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    assert out.shape == ref.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).mean() < 1.5


def test_resize_keeps_a_trailing_channel_axis_and_passes_same_size_through() -> None:
    img = photo()[:, :, :1].copy()
    assert resize(img, 60, 80).shape == (60, 80, 1)
    same = photo()
    assert resize(same, 120, 160) is same


def test_pil_fallback_resize_agrees_with_opencv(no_cv2) -> None:
    img = photo((200, 150))
    ref = np.asarray(Image.fromarray(img).resize((90, 70), Image.BILINEAR))
    np.testing.assert_array_equal(resize(img, 70, 90), ref)  # the fallback is PIL's own
    out = RandomResizedCrop(64)(img, sample_rng(0, 0, "a"))
    assert out.shape == (64, 64, 3)


def test_resize_and_centre_crop_semantics() -> None:
    img = photo((500, 375))
    assert Resize(256)(img, None).shape == (256, 341, 3)  # shorter side 256, int(256 * 500 / 375)
    assert Resize(256)(photo((375, 500)), None).shape == (341, 256, 3)
    assert Resize((100, 50))(img, None).shape == (100, 50, 3)
    crop = CenterCrop(224)(Resize(256)(img, None), None)
    assert crop.shape == (224, 224, 3)
    np.testing.assert_array_equal(CenterCrop((2, 4))(img[:6, :8], None), img[2:4, 2:6])
    padded = CenterCrop(10)(img[:4, :6], None)  # smaller than the crop: zero padding around
    assert padded.shape == (10, 10, 3)
    np.testing.assert_array_equal(padded[3:7, 2:8], img[:4, :6])
    assert padded[:3].max() == 0 and padded[:, :2].max() == 0


# -- flips and rotation ----------------------------------------------------------------------


def test_flips_are_exact_and_contiguous() -> None:
    img = photo()
    for fn, ref in ((hflip, img[:, ::-1]), (vflip, img[::-1])):
        out = fn(img)
        np.testing.assert_array_equal(out, ref)
        assert out.flags["C_CONTIGUOUS"]
    rng = sample_rng(0, 0, "a")
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0)(img, rng), img[:, ::-1])
    assert RandomHorizontalFlip(p=0.0)(img, rng) is img
    np.testing.assert_array_equal(RandomVerticalFlip(p=1.0)(img, rng), img[::-1])
    flips = [RandomHorizontalFlip()(img, sample_rng(0, 0, f"k{i}")) is not img for i in range(400)]
    assert 160 < sum(flips) < 240  # p = 0.5


def test_rotation() -> None:
    img = photo((121, 121))
    np.testing.assert_array_equal(rotate(img, 0.0), img)
    # 90 degrees counter-clockwise about the centre of a square image is np.rot90
    np.testing.assert_array_equal(rotate(img, 90.0)[2:-2, 2:-2], np.rot90(img)[2:-2, 2:-2])
    out = rotate(img, 45.0, fill=(10, 20, 30))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])  # corners come from outside
    assert np.abs(out[60, 60].astype(int) - img[60, 60]).max() <= 1  # the centre stays
    angles = {RandomRotation(10)(img, sample_rng(0, 0, f"k{i}")).tobytes() for i in range(5)}
    assert len(angles) == 5
    with pytest.raises(ValueError, match="degrees must be >= 0"):
        RandomRotation(-3)


def test_rotation_fallback_agrees(no_cv2) -> None:
    img = photo((121, 121))
    np.testing.assert_array_equal(rotate(img, 90.0)[2:-2, 2:-2], np.rot90(img)[2:-2, 2:-2])
    out = rotate(img, 45.0, fill=(10, 20, 30))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    grey = np.ascontiguousarray(img[:, :, 0])
    assert rotate(grey, 30.0, fill=7)[0, 0] == 7


# -- colour ------------------------------------------------------------------------------------


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def reference_jitter(img: np.ndarray, kind: str, f: float) -> np.ndarray:
    """torchvision's definitions in float64."""
    x = img.astype(np.float64)
    if kind == "brightness":
        out = x * f
    elif kind == "contrast":
        out = f * x + (1 - f) * _grey(img).mean()
    elif kind == "saturation":
        out = f * x + (1 - f) * _grey(img)[..., None]
    else:
        flat = x.reshape(-1, 3) / 255.0
        out = np.array(
            [colorsys.hsv_to_rgb((hh + f) % 1.0, s, v) for hh, s, v in (colorsys.rgb_to_hsv(*p) for p in flat)]
        )
        out = out.reshape(x.shape) * 255.0
    return np.clip(np.rint(out), 0, 255)


ADJUST = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
}
FACTORS = {
    "brightness": [0.0, 0.6, 1.4],
    "contrast": [0.0, 0.6, 1.4],
    "saturation": [0.0, 0.6, 1.7],
    "hue": [-0.3, 0.05, 0.5],
}


@pytest.mark.parametrize("opencv", [True, False])
@pytest.mark.parametrize("kind", list(ADJUST))
def test_colour_adjustments_follow_torchvision(kind: str, opencv: bool, monkeypatch) -> None:
    if not opencv:
        for module in (resample, geometry, color):
            monkeypatch.setattr(module, "cv2", None)
    img = photo((48, 40))
    for f in FACTORS[kind]:
        out = ADJUST[kind](img, f)
        assert out.shape == img.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(int) - reference_jitter(img, kind, f))
        # OpenCV's hue works on 8-bit HSV: up to a hue step (6 levels); everything else within rounding
        tol_mean, tol_max = (0.6, 6) if (kind == "hue" and opencv) else (0.6, 2)
        assert diff.mean() < tol_mean and diff.max() <= tol_max, (kind, f, diff.mean(), diff.max())
    identity = 0.0 if kind == "hue" else 1.0
    np.testing.assert_array_equal(ADJUST[kind](img, identity), img)


def test_colour_jitter_draws_and_validates() -> None:
    img = photo((64, 48))
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    a = jitter(img, sample_rng(0, 0, "a"))
    np.testing.assert_array_equal(a, jitter(img, sample_rng(0, 0, "a")))  # seeded
    assert not np.array_equal(a, jitter(img, sample_rng(0, 0, "b")))
    assert ColorJitter()(img, sample_rng(0, 0, "a")) is img  # nothing enabled
    assert ColorJitter(brightness=(0.5, 0.5)).brightness == (0.5, 0.5)
    # a single brightness factor drawn from [0.6, 1.4] scales the image (dark: no clipping)
    dark = img // 2
    means = [ColorJitter(brightness=0.4)(dark, sample_rng(1, 0, f"k{i}")).mean() / dark.mean() for i in range(200)]
    assert 0.59 < min(means) < 0.65 and 1.35 < max(means) < 1.41
    with pytest.raises(ValueError, match=r"brightness must be >= 0, got -1"):
        ColorJitter(brightness=-1)
    with pytest.raises(ValueError, match=r"hue must lie within \[-0.5, 0.5\], got \(-0.7, 0.7\)"):
        ColorJitter(hue=0.7)
    with pytest.raises(ValueError, match=r"contrast range must be \(min, max\)"):
        ColorJitter(contrast=(1.5, 0.5))
    with pytest.raises(ValueError, match=r"hue factor must be in \[-0.5, 0.5\], got 0.8"):
        adjust_hue(img, 0.8)


def test_transforms_compose_deterministically_per_key() -> None:
    img = photo((200, 150))
    t = Compose([RandomResizedCrop(96), RandomHorizontalFlip(), ColorJitter(0.3, 0.3, 0.3, 0.05), RandomRotation(5)])
    a = t(img, sample_rng(3, 1, "key"))
    np.testing.assert_array_equal(a, t(img, sample_rng(3, 1, "key")))
    assert a.shape == (96, 96, 3)
    assert not np.array_equal(a, t(img, sample_rng(3, 2, "key")))  # another epoch


# -- normalize -----------------------------------------------------------------------------------


def test_normalize_float_half_and_channels_last() -> None:
    batch = torch.from_numpy(np.stack([photo((32, 24), i).transpose(2, 0, 1) for i in range(4)]))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = (batch.double() / 255 - mean.double()) / std.double()
    x = normalize(batch)
    assert x.dtype == torch.float32 and x.shape == batch.shape and x.is_contiguous()
    assert (x.double() - ref).abs().max() < 1e-5
    h = normalize(batch, dtype=torch.half, channels_last=True)
    assert h.dtype == torch.half and h.is_contiguous(memory_format=torch.channels_last)
    assert (h.double() - ref).abs().max() < 5e-3
    one = normalize(batch[0], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert one.shape == (3, 24, 32)
    assert torch.allclose(one, batch[0].float() / 127.5 - 1, atol=1e-6)
    assert normalize(batch).device == batch.device


def test_normalize_rejects_what_it_cannot_do() -> None:
    batch = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="expects a uint8 tensor, got torch.float32"):
        normalize(batch.float())
    with pytest.raises(ValueError, match=r"mean and std need 3 values \(one per channel\), got 2 and 2"):
        normalize(batch, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"expected an NCHW \(or CHW\) batch, got shape \(4, 4\)"):
        normalize(batch[0, 0])
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(batch, std=(0.2, 0.0, 0.2))
    with pytest.raises(TypeError, match="dtype must be a floating point type"):
        normalize(batch, dtype=torch.int32)


def test_sample_rngs_give_the_streams_of_sample_rng_and_survive_a_pickle() -> None:
    """The decode stage's reusable generators draw exactly what ``sample_rng`` draws, whatever the
    previous sample left in the shared bit generator (half-used 32-bit draws, a buffered counter),
    on every thread, and after a pickle (a worker's copy)."""
    import pickle
    import threading

    from shardpipe.augment.base import SampleRngs

    rngs = pickle.loads(pickle.dumps(SampleRngs()))
    for i in range(200):
        seed, epoch, key = i % 3, i % 5, f"sample-{i:06d}" if i % 7 else "ключ-é"
        got, want = rngs(seed, epoch, key), sample_rng(seed, epoch, key)
        assert got.integers(0, 1 << 32, dtype=np.uint32) == want.integers(0, 1 << 32, dtype=np.uint32)
        np.testing.assert_array_equal(got.random(5), want.random(5))
        assert got.uniform(0.08, 1.0) == want.uniform(0.08, 1.0)
        got.integers(0, 1 << 32, dtype=np.uint32)  # leaves a buffered half draw behind
    assert rngs(1, 2, "k").random() != rngs(1, 3, "k").random()  # epoch matters

    out: dict[int, list[float]] = {}

    def draw(t: int) -> None:
        out[t] = [float(rngs(0, 0, f"t{t}-{j}").random()) for j in range(300)]

    threads = [threading.Thread(target=draw, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in range(4):
        assert out[t] == [float(sample_rng(0, 0, f"t{t}-{j}").random()) for j in range(300)]


def test_sample_rng_keeps_all_64_bits_of_the_key_digest() -> None:
    """Half of all digests are >= 2**63; a Philox key given as a list of ints went through
    float64 and kept only their top 53 bits (two keys 1,000 apart in the digest collided)."""
    import hashlib

    seen_high = 0
    for i in range(64):
        key = f"sample-{i:06d}"
        digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        state = sample_rng(7, 3, key).bit_generator.state["state"]["key"]
        assert [int(v) for v in state] == [(7 << 32) | 3, digest], key
        seen_high += digest >= 1 << 63
    assert 0 < seen_high < 64  # both halves were checked


def test_normalize_refuses_nan_mean_or_std() -> None:
    batch = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError) as e:
        normalize(batch, std=(0.2, float("nan"), 0.2))  # passed "std must be positive": a batch of NaN
    assert str(e.value) == "mean and std must be finite, got (0.485, 0.456, 0.406) and (0.2, nan, 0.2)"
    with pytest.raises(ValueError, match=r"^mean and std must be finite, got \(nan, 0.5, 0.5\)"):
        normalize(batch, mean=(float("nan"), 0.5, 0.5))
