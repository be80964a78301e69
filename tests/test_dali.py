"""DALI batch decode, run with DALI's CPU operators (and on the GPU where one exists)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install shardpipe[gpu])")

from shardpipe.augment import CenterCrop, RandomResizedCrop, Resize, random_resized_crop_box  # noqa: E402
from shardpipe.batchdecode.dali import DaliBatchDecoder, import_dali, signature_problem  # noqa: E402
from shardpipe.devtools.synth import make_jpeg  # noqa: E402
from shardpipe.errors import DecodeError  # noqa: E402
from shardpipe.image.decoders.pil import PilDecoder  # noqa: E402

from .helpers import ks_statistic  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def encode(pixels: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def solid_jpeg(level: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A flat grey JPEG: its decoded level (any crop, resize or flip) tells its label."""
    return encode(np.full((size[1], size[0], 3), level, np.uint8))


def coordinate_jpeg(side: int = 256) -> bytes:
    """Red = x, green = y: a crop's output reveals the crop box (and whether it was flipped)."""
    y, x = np.mgrid[0:side, 0:side]
    return encode(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8))


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Photo-like JPEGs of varied sizes, including greyscale (index 7) and CMYK (17)."""
    return [make_jpeg(i, seed=3) for i in range(20)]


def cpu(**kw) -> DaliBatchDecoder:
    kw.setdefault("seed", 0)
    kw.setdefault("batch_size", 8)
    return DaliBatchDecoder(device="cpu", num_threads=2, **kw)


# -- shapes, dtypes, batching -----------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16])
def test_shapes_and_dtypes_with_short_last_batch(photos, train, dtype):
    dec = cpu(size=(64, 48), train=train, resize_short=72, dtype=dtype)
    out = dec(photos)  # 20 images through a pipeline of at most 8: chunks of 8, 8 and 4
    assert out.shape == (20, 3, 64, 48) and out.dtype == dtype and out.device.type == "cpu"
    assert dec(photos[:3]).shape == (3, 3, 64, 48)  # a batch shorter than the pipeline's
    assert dec([]).shape == (0, 3, 64, 48)
    if dtype != torch.uint8:
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.max()) > 0.5


def test_float_and_normalized_outputs_equal_scaled_uint8(photos):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    raw = cpu(train=False, size=32, resize_short=40)(photos[:6]).float()
    unit = cpu(train=False, size=32, resize_short=40, dtype="float")(photos[:6])
    norm = cpu(train=False, size=32, resize_short=40, dtype=torch.float32, normalize=(mean, std))(photos[:6])
    half = cpu(train=False, size=32, resize_short=40, dtype="half", normalize=(mean, std))(photos[:6])
    expected = (raw / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(unit, raw / 255, atol=1e-5)
    assert torch.allclose(norm, expected, atol=1e-4)
    assert torch.allclose(half.float(), expected, atol=2e-2)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="normalize needs a float dtype"):
        cpu(normalize=((0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ValueError, match="device must be 'gpu', 'cpu' or 'auto'"):
        DaliBatchDecoder(device="tpu")
    with pytest.raises(ValueError, match="scale must satisfy"):
        cpu(scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        cpu(batch_size=0)


# -- alignment ---------------------------------------------------------------------------
def test_labels_stay_aligned_through_random_crops_and_skips():
    labels = [int(v) for v in np.random.default_rng(5).integers(0, 12, 40)]
    images = [solid_jpeg(10 + 20 * lab, size=(80 + 7 * i % 50, 60 + 11 * i % 40)) for i, lab in enumerate(labels)]
    images[9] = b"\xff\xd8\xff\xe0" + b"\x00" * 200  # a JPEG signature and nothing decodable
    images[23] = b"<html>not found</html>" * 4
    batch = {"jpg": images, "cls": torch.tensor(labels), "__key__": [f"k{i:03d}" for i in range(40)]}
    dec = cpu(size=24, batch_size=16, on_error="skip")
    out = dec.decode_batch(batch)
    assert out["__key__"] == [f"k{i:03d}" for i in range(40) if i not in (9, 23)]
    assert out["cls"].tolist() == [lab for i, lab in enumerate(labels) if i not in (9, 23)]
    levels = out["jpg"].float().mean(dim=(1, 2, 3))
    assert torch.equal(((levels - 10) / 20).round().long(), out["cls"])
    assert dec.errors.counts["DecodeError"] == 2 and dec.skipped == 2


# -- agreement with the CPU path ----------------------------------------------------------
@pytest.mark.parametrize("size, resize_short", [(224, 256), ((200, 240), 220), (300, 256)])
def test_center_crop_agrees_with_pil_resize_and_center_crop(photos, size, resize_short):
    """DALI's Resize(shorter side) + CenterCrop vs the same on PIL-decoded arrays.

    Sizes and crop offsets must be identical (torchvision's rounding), so the images
    differ only by resampling: against PIL's antialiased bilinear, well under a grey level;
    against shardpipe's ``Resize`` (which may use OpenCV approximations), a few levels.
    """
    out = cpu(train=False, size=size, resize_short=resize_short)(photos).numpy().transpose(0, 2, 3, 1)
    resize, crop, pil = Resize(resize_short), CenterCrop(size), PilDecoder()
    to_shardpipe = []
    for i, data in enumerate(photos):
        img = pil.decode(data)
        h, w = resize.output_size(*img.shape[:2])
        exact = crop(np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR)), None)
        assert np.abs(out[i].astype(float) - exact).mean() < 1.0, i
        to_shardpipe.append(np.abs(out[i].astype(float) - crop(resize(img, None), None)).mean())
    assert np.mean(to_shardpipe) < 3.0, to_shardpipe


def test_center_crop_pads_small_images_with_zeros():
    small = encode(np.full((40, 50, 3), 200, np.uint8))
    out = cpu(train=False, size=(48, 64), resize_short=40)([small])[0].numpy()
    ref = CenterCrop((48, 64))(np.full((40, 50, 3), 200, np.uint8), None).transpose(2, 0, 1)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2


def read_boxes(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Recover (top, left, h, w) and flipped flags from outputs of ``coordinate_jpeg``."""
    x = out.numpy().astype(np.float64)
    oh, ow = x.shape[2:]
    cols = x[:, 0].mean(axis=1)[:, 4:-4]  # red, averaged over rows: x of each output column
    rows = x[:, 1].mean(axis=2)[:, 4:-4]  # green, averaged over columns: y of each output row
    j, i = np.arange(4, ow - 4) + 0.5, np.arange(4, oh - 4) + 0.5
    sx, cx = np.polyfit(j, cols.T, 1)  # value = start + (j + 0.5) * w / ow - 0.5
    sy, cy = np.polyfit(i, rows.T, 1)
    w, h = np.abs(sx) * ow, sy * oh
    flipped = sx < 0
    left = np.where(flipped, cx + sx * ow, cx) + 0.5  # flipped: value = left + w - (j+0.5)*w/ow - 0.5
    top = cy + 0.5
    return np.stack([top, left, h, w], 1), flipped


def test_read_boxes_recovers_known_crop_boxes():
    """The measuring tool of the next test, checked on crops whose boxes are known."""
    img = PilDecoder().decode(coordinate_jpeg(256))
    rrc = RandomResizedCrop(64)
    for s in range(20):
        box = rrc.get_params(256, 256, np.random.default_rng(s))
        out = rrc(img, np.random.default_rng(s)).transpose(2, 0, 1)[None].copy()
        boxes, flipped = read_boxes(torch.from_numpy(out))
        assert np.abs(boxes[0] - np.array(box)).max() < 1.5 and not flipped[0]
        mirrored, flipped = read_boxes(torch.from_numpy(out[..., ::-1].copy()))
        assert np.abs(mirrored[0] - np.array(box)).max() < 1.5 and flipped[0]


def crop_ks_statistics(dec: DaliBatchDecoder, side: int = 256, n: int = 800) -> tuple[dict[str, float], float]:
    """KS statistics of DALI's crop boxes vs ``random_resized_crop_box``'s; the flip rate."""
    boxes, flipped = read_boxes(dec([coordinate_jpeg(side)] * n).cpu())
    rng = np.random.default_rng(11)
    ref = np.array([random_resized_crop_box(side, side, rng) for _ in range(n)], dtype=np.float64)

    def features(b: np.ndarray) -> dict[str, np.ndarray]:
        top, left, h, w = b.T
        return {"area": h * w / side**2, "log_aspect": np.log(w / h), "centre_x": left + w / 2, "centre_y": top + h / 2}

    got, want = features(boxes), features(ref)
    assert got["area"].min() > 0.08 - 0.01 and got["area"].max() < 1.0 + 0.02
    assert np.exp(got["log_aspect"]).min() > 0.75 - 0.02 and np.exp(got["log_aspect"]).max() < 4 / 3 + 0.03
    return {name: ks_statistic(got[name], want[name]) for name in got}, float(flipped.mean())


#: 0.1% critical value of the two-sample KS statistic for n = m = 800: 1.95 * sqrt(2/800).
#: DALI with scale=(0.3, 1) or ratio=(0.6, 1.6) instead of the defaults scores about 0.3 / 0.2.
KS_CRITICAL = 0.0975


def test_random_crop_statistics_match_cpu_random_resized_crop():
    stats, flip_rate = crop_ks_statistics(cpu(size=64, batch_size=200, seed=11, flip_p=0.5))
    assert max(stats.values()) < KS_CRITICAL, stats
    assert 0.42 < flip_rate < 0.58
    assert not read_boxes(cpu(size=64, seed=1, flip_p=0.0)([coordinate_jpeg(256)] * 50))[1].any()
    skewed, _ = crop_ks_statistics(cpu(size=64, batch_size=200, seed=11, scale=(0.3, 1.0)))
    assert skewed["area"] > 2 * KS_CRITICAL  # the check can tell a different distribution


def test_same_seed_same_crops_and_scale_range_is_honoured():
    data = [coordinate_jpeg(128)] * 30
    a, b = cpu(size=32, seed=4)(data), cpu(size=32, seed=4)(data)
    assert torch.equal(a, b)
    boxes, _ = read_boxes(cpu(size=32, seed=4, scale=(0.9, 1.0), flip_p=0)(data))
    area = boxes[:, 2] * boxes[:, 3] / 128**2
    assert area.min() > 0.85


# -- bad input ------------------------------------------------------------------------------
def corrupt_batch(photos: list[bytes]) -> tuple[list[bytes], list[str]]:
    bad = list(photos[:10])
    bad[2] = b"definitely not an image" * 8  # fails the signature check
    bad[6] = photos[6][:300]  # a JPEG whose data stops inside the header: DALI fails the batch
    bad[8] = photos[8][: len(photos[8]) // 2]  # stops mid-scan: DALI names the sample it failed on
    return bad, [f"img-{i}" for i in range(10)]


def test_corrupt_jpeg_in_batch_is_skipped_and_counted(photos):
    bad, keys = corrupt_batch(photos)
    dec = cpu(train=False, size=48, resize_short=56, batch_size=10, on_error="skip")
    out, kept = dec.decode(bad, keys)
    assert kept == [0, 1, 3, 4, 5, 7, 9]
    assert dec.skipped == 3
    good = cpu(train=False, size=48, resize_short=56)([bad[i] for i in kept])
    assert torch.equal(out, good)  # the rest of the batch decodes exactly as without the bad ones
    assert torch.equal(dec(photos[:2]), good[:2])  # and the decoder keeps working


def test_a_bad_image_dali_names_costs_three_runs(photos):
    batch = list(photos[:16])
    batch[11] = photos[11][: len(photos[11]) // 2]
    dec = cpu(train=False, size=48, resize_short=56, batch_size=16, on_error="skip")
    out, kept = dec.decode(batch)
    assert kept == [i for i in range(16) if i != 11] and dec.skipped == 1
    assert dec._builds == 3  # failed batch, then [0..10] + [11] (fails) and [12..15]: no bisection
    assert torch.equal(out, cpu(train=False, size=48, resize_short=56, batch_size=16)(photos[:11] + photos[12:16]))


def test_a_batch_where_every_image_fails_alone_is_an_error_not_skips(photos):
    truncated = [p[:300] for p in photos[:6]]  # look like JPEGs, none decodes
    with pytest.raises(
        RuntimeError, match=r"DALI failed on every one of 6 images, each on its own; last error: DALI: "
    ):
        cpu(train=False, size=48, on_error="skip").decode(truncated)


def test_corrupt_jpeg_in_batch_raises_naming_its_key(photos):
    bad, keys = corrupt_batch(photos)
    with pytest.raises(DecodeError, match=r"sample 'img-2': image does not decode \(no image signature"):
        cpu(train=False, size=48, on_error="raise").decode(bad, keys)
    del bad[2], keys[2]
    with pytest.raises(DecodeError, match=r"sample 'img-6': image does not decode \(DALI: "):
        cpu(train=False, size=48, on_error="raise").decode(bad, keys)
    with pytest.raises(DecodeError, match=r"batch item 1: image does not decode"):
        cpu(on_error="raise")([photos[0], b"\x89PNG\r\n\x1a\n" + b"\x00" * 64])


def test_signature_check():
    assert signature_problem(np.frombuffer(make_jpeg(0), np.uint8)) is None
    assert signature_problem(np.frombuffer(b"\xff\xd8", np.uint8)) == "only 2 bytes"
    assert "no image signature" in signature_problem(np.frombuffer(b"GIF89a" + b"\x00" * 20, np.uint8))


# -- no GPU, no DALI ------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_gpu_device_without_gpu_raises_a_clear_error():
    with pytest.raises(
        RuntimeError, match=r"needs a usable NVIDIA GPU, but torch.cuda.is_available\(\) is False.*device='cpu'"
    ):
        DaliBatchDecoder(device="gpu")
    assert DaliBatchDecoder(device="auto").device == "cpu"


def test_missing_dali_raises_import_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # what Python does for a missing package
    with pytest.raises(ImportError, match=r"needs NVIDIA DALI.*pip install shardpipe\[gpu\]"):
        import_dali()


# -- on a GPU ------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
def test_gpu_decode_returns_cuda_tensors_matching_cpu_mode(photos):
    gpu = DaliBatchDecoder(device="gpu", train=False, size=224, batch_size=8, seed=0)
    out = gpu(photos)
    assert out.device.type == "cuda" and out.shape == (20, 3, 224, 224) and out.dtype == torch.uint8
    ref = cpu(train=False, size=224)(photos)
    diff = (out.cpu().float() - ref.float()).abs().mean(dim=(1, 2, 3))
    assert float(diff.max()) < 3.0  # nvJPEG vs libjpeg-turbo: tiny IDCT/upsampling differences
    train = DaliBatchDecoder(device="gpu", size=64, dtype=torch.float16, normalize=((0.5,) * 3, (0.25,) * 3))
    assert train(photos).shape == (20, 3, 64, 64) and train(photos).device.type == "cuda"


@pytest.mark.cuda
@needs_cuda
def test_gpu_corrupt_jpeg_is_skipped(photos):
    bad, keys = corrupt_batch(photos)
    dec = DaliBatchDecoder(device="gpu", train=False, size=48, on_error="skip")
    out, kept = dec.decode(bad, keys)
    assert kept == [0, 1, 3, 4, 5, 7, 9] and out.device.type == "cuda" and dec.skipped == 3


@pytest.mark.cuda
@needs_cuda
def test_gpu_random_crop_statistics_match_cpu():
    stats, flip_rate = crop_ks_statistics(DaliBatchDecoder(device="gpu", size=64, batch_size=200, seed=11))
    assert max(stats.values()) < KS_CRITICAL and 0.42 < flip_rate < 0.58, (stats, flip_rate)
