"""Presize: shorter side to N (only downscaling), EXIF orientation honoured, small images untouched."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shardpipe
from shardpipe.devtools.synth import make_image, make_jpeg
from shardpipe.errors import DecodeError
from shardpipe.write.job import write_shards
from shardpipe.write.presize import check_image, image_ext, presize, target_size


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1600, 1200), (257, 900)])
def test_shorter_side_becomes_n_and_aspect_is_kept(size):
    data = jpeg(make_image(3, size=size))
    out, changed = presize(data, 256, quality=90)
    assert changed
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == "JPEG"
        assert min(img.size) == 256
        assert img.size == target_size(*size, 256)
        w, h = size
        assert abs(img.size[0] / img.size[1] - w / h) < 0.01 * (w / h)


def test_quality_matches_a_full_resolution_lanczos_reference():
    """The DCT-domain pre-reduction costs nothing beyond the re-encoding itself (1600x1200 -> 256)."""
    data = jpeg(make_image(5, size=(1600, 1200)))
    out, _ = presize(data, 256, quality=95)
    with Image.open(io.BytesIO(data)) as full:
        ref_img = full.convert("RGB").resize((341, 256), Image.Resampling.LANCZOS)
    ref = np.asarray(ref_img)
    buf = io.BytesIO()
    ref_img.save(buf, "JPEG", quality=95)
    encoded_ref = np.asarray(Image.open(buf))  # the best any JPEG at quality 95 can do here
    got = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))
    assert got.shape == ref.shape
    assert psnr(got, ref) > psnr(encoded_ref, ref) - 0.5


@pytest.mark.parametrize("size", [(200, 150), (256, 400), (256, 256)])
def test_small_images_are_returned_untouched(size):
    data = jpeg(make_image(1, size=size))
    out, changed = presize(data, 256)
    assert not changed and out is data


def test_exif_orientation_is_applied():
    # stored 300 wide x 200 high: left half red, right half blue; orientation 6 = rotate 90° clockwise
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[:, :150] = (220, 20, 20)
    arr[:, 150:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg(Image.fromarray(arr), exif=exif.tobytes())
    out, changed = presize(data, 100)
    assert changed
    img = Image.open(io.BytesIO(out))
    assert img.size == (100, 150)  # displayed upright: portrait
    assert img.getexif().get(0x0112) in (None, 1)
    px = np.asarray(img.convert("RGB")).astype(int)
    assert px[20, 50, 0] > 180 and px[20, 50, 2] < 60  # top is red (the stored left side)
    assert px[130, 50, 2] > 180 and px[130, 50, 0] < 60  # bottom is blue


def test_modes_grey_cmyk_png_alpha():
    grey, _ = presize(make_jpeg(7, 0), 128)  # index 7: greyscale
    assert Image.open(io.BytesIO(grey)).mode == "L"
    cmyk_src = make_jpeg(17, 0)  # index 17: CMYK
    assert Image.open(io.BytesIO(cmyk_src)).mode == "CMYK"
    cmyk, _ = presize(cmyk_src, 128)
    assert Image.open(io.BytesIO(cmyk)).mode == "RGB"
    buf = io.BytesIO()
    Image.new("RGBA", (400, 300), (0, 255, 0, 128)).save(buf, "PNG")
    out, changed = presize(buf.getvalue(), 150)
    img = Image.open(io.BytesIO(out))
    assert changed and img.format == "JPEG" and img.size == (200, 150) and img.mode == "RGB"


def test_bad_data_raises_decode_error():
    data = make_jpeg(2)
    with pytest.raises(DecodeError, match="not a recognised image format"):
        presize(b"GIF? no, just text", 64)
    with pytest.raises(DecodeError, match="corrupt image data: image file is truncated"):
        presize(data[: len(data) // 3], 64)
    with pytest.raises(ValueError, match="presize must be a positive number of pixels, got 0"):
        presize(data, 0)


def test_check_image_and_format_detection():
    data = make_jpeg(4)
    assert image_ext(data) == "jpg"
    check_image(data, "jpg", "header")
    check_image(data, "jpg", "decode")
    with pytest.raises(DecodeError, match=r"truncated JPEG \(no end-of-image marker\)"):
        check_image(data[:-100], "jpg", "header")
    with pytest.raises(DecodeError, match=r"unreadable JPEG: corrupt JPEG header \(segment length \d+ at byte \d+\)"):
        check_image(data[:300], "jpg", "header")
    broken = data[:2000] + bytes(range(256)) * 40 + data[2000 + 256 * 40 :]
    check_image(broken, "jpg", "header")  # header and end marker are fine: only a full decode can tell
    with pytest.raises(DecodeError, match="corrupt JPEG data: broken data stream"):
        check_image(broken, "jpg", "decode")
    check_image(b"\xff\xd8\xff", "jpg", "none")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP")
    assert image_ext(buf.getvalue()) == "webp"
    with pytest.raises(ValueError, match="check must be one of"):
        check_image(data, "jpg", "thorough")


def test_write_presize_reencodes_only_large_images(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"big": (640, 480), "tall": (300, 1000), "small": (120, 90), "edge": (400, 128)}
    for name, size in sizes.items():
        (src / f"{name}.jpg").write_bytes(jpeg(make_image(len(name), size=size)))
    summary = write_shards(src, str(tmp_path / "out" / "p-%02d.tar"), presize=128, quality=85, restart_intervals=False)
    assert summary.presized == 2 and summary.written == 4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["options"]["presize"] == 128 and manifest["options"]["quality"] == 85
    got = {s["__key__"]: s["jpg"] for s in shardpipe.ShardDataset(str(tmp_path / "out" / "manifest.json"), decode=None)}
    for name in ("small", "edge"):
        assert got[name] == (src / f"{name}.jpg").read_bytes()  # byte for byte, never re-encoded
    assert Image.open(io.BytesIO(got["big"])).size == (171, 128)
    assert Image.open(io.BytesIO(got["tall"])).size == (128, 427)


def _turned(orientation: int, size=(90, 60)) -> bytes:
    """A small JPEG, stored ``size`` (w, h) with its left half red and right half blue, tagged ``orientation``."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = (220, 20, 20)
    arr[:, size[0] // 2 :] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(Image.fromarray(arr), exif=exif.tobytes())


def test_a_small_image_stored_turned_is_turned_upright_as_the_large_ones_are():
    out, changed = presize(_turned(6), 100)  # 90 x 60 stored: below the target, but tagged "rotate 90"
    assert changed
    img = Image.open(io.BytesIO(out))
    assert img.format == "JPEG" and img.size == (60, 90)  # upright: portrait, and not resized
    assert img.getexif().get(0x0112) in (None, 1)
    px = np.asarray(img.convert("RGB")).astype(int)
    assert px[10, 30, 0] > 180 and px[10, 30, 2] < 60  # top is red (the stored left side)
    assert px[80, 30, 2] > 180 and px[80, 30, 0] < 60  # bottom is blue


@pytest.mark.parametrize("orientation", [1, 0, 9])  # as displayed, and values outside the tag's range
def test_a_small_image_with_nothing_to_turn_is_returned_untouched(orientation):
    data = _turned(orientation)
    out, changed = presize(data, 100)
    assert not changed and out is data


def test_write_presize_turns_small_and_large_tagged_photos_alike(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.jpg").write_bytes(_turned(6, (90, 60)))
    (src / "large.jpg").write_bytes(_turned(6, (300, 200)))
    summary = write_shards(src, str(tmp_path / "out" / "s-%06d.tar"), presize=100)
    assert summary.presized == 2 and summary.written == 2
    out = str(tmp_path / "out" / "manifest.json")
    shapes = {s["__key__"]: s["jpg"].shape[:2] for s in shardpipe.ShardDataset(out, decode="rgb8")}
    assert shapes == {"small": (90, 60), "large": (150, 100)}  # both portrait, as displayed


@pytest.mark.timeout(120)  # (before: the pool restarted its workers forever)
def test_a_worker_that_cannot_watch_the_writer_still_presizes(tmp_path: Path, monkeypatch):
    """A pool initializer that raises makes the standard library's pool start workers again and again:
    the write's workers carry on without the watch instead (their task queue still ends them)."""
    import multiprocessing

    from shardpipe.write import prepare

    def no_watch() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(prepare, "watch_parent", no_watch)
    monkeypatch.setattr(prepare, "_process_context", lambda source, opts: multiprocessing.get_context("fork"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"im{i}.jpg").write_bytes(jpeg(make_image(i, size=(320, 240))))
    out = {}
    for workers in (1, 2):
        summary = write_shards(src, str(tmp_path / f"w{workers}" / "p-%02d.tar"), presize=64, workers=workers,
                               restart_intervals=False)  # fmt: skip
        assert summary.presized == 6 and summary.written == 6
        out[workers] = (tmp_path / f"w{workers}" / "p-00.tar").read_bytes()
    assert out[2] == out[1]
