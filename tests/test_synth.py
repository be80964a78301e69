"""The deterministic photo-like image generator: determinism, sizes, special JPEGs, content."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardpipe.devtools import synth
from shardpipe.devtools.synth import image_size, make_dataset, make_image, make_jpeg

N = 100


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [make_jpeg(i) for i in range(N)]


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes every scan: fails on a broken file
    return img


def test_same_index_and_seed_give_the_same_bytes(jpegs):
    assert make_jpeg(3) == jpegs[3]
    assert make_jpeg(11, seed=5) == make_jpeg(11, seed=5)
    assert np.array_equal(np.asarray(make_image(4, 2)), np.asarray(make_image(4, 2)))


def test_different_seed_or_index_gives_different_images(jpegs):
    assert make_jpeg(3, seed=1) != jpegs[3]
    assert len(set(jpegs)) == N
    a, b = make_image(0, size=(64, 48)), make_image(0, seed=9, size=(64, 48))
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() > 10


def test_size_distribution_is_imagenet_like():
    sizes = [image_size(i) for i in range(1000)]
    portrait = sum(h > w for w, h in sizes) / len(sizes)
    assert 0.18 <= portrait <= 0.35
    assert 0.4 <= sizes.count((500, 375)) / len(sizes) <= 0.6
    large = sum(max(s) >= 1000 for s in sizes) / len(sizes)
    assert 0.04 <= large <= 0.12
    assert all(max(s) <= 1600 for s in sizes)
    assert 5 <= sum(max(s) < 256 for s in sizes) <= 60
    medium = [w / h for w, h in sizes if 256 <= max(w, h) < 1000]
    assert min(medium) >= 0.59 and max(medium) <= 1.81
    assert len({round(a, 2) for a in medium}) > 50  # varied aspect ratios, not just two


def test_images_have_the_promised_size(jpegs):
    for i in range(N):
        assert _open(jpegs[i]).size == image_size(i)
    assert make_image(1, size=(33, 17)).size == (33, 17)


def test_special_jpegs_by_index(jpegs):
    for i, data in enumerate(jpegs):
        img = _open(data)
        want = {synth.GREY_INDEX: "L", synth.CMYK_INDEX: "CMYK"}.get(i % 50, "RGB")
        assert img.mode == want, i
        assert bool(img.info.get("progressive")) == (i % 50 == synth.PROGRESSIVE_INDEX), i
    for i in (7, 17, 27, 57):
        img = _open(make_jpeg(i, plain=True))
        assert img.mode == "RGB" and not img.info.get("progressive")
        assert np.asarray(img).std() > 20


def test_default_quality_and_explicit_quality():
    assert {synth.jpeg_quality(i) for i in range(200)} == {88, 89, 90, 91, 92}
    assert len(make_jpeg(1, quality=50)) < 0.6 * len(make_jpeg(1, quality=95))


def test_mean_file_size_is_photo_like(jpegs):
    mean_kb = np.mean([len(d) for d in jpegs[:60]]) / 1024
    assert 60 <= mean_kb <= 180, mean_kb


def test_content_is_textured_and_colourful(jpegs):
    for i in range(0, N, 5):
        rgb = np.asarray(_open(jpegs[i]).convert("RGB"), np.float32)
        grey = rgb.mean(axis=2)
        assert grey.std() > 15, i
        high_freq = np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean()
        assert high_freq > 6, i
        if i % 50 != synth.GREY_INDEX:
            assert np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean() > 5, i  # not grey


def test_make_dataset_keys_labels_and_bytes():
    items = list(make_dataset(12, seed=1, num_classes=5))
    assert [k for k, _, _ in items] == [f"sample-{i:06d}" for i in range(12)]
    assert [lab for _, _, lab in items] == [i % 5 for i in range(12)]
    assert items[4][1] == make_jpeg(4, seed=1)


def test_parallel_generation_matches_serial_and_keeps_order():
    assert list(make_dataset(10, seed=2, workers=2)) == list(make_dataset(10, seed=2))


def test_write_image_folder(tmp_path):
    files = synth.write_image_folder(tmp_path, 12, num_classes=3, seed=0)
    assert files[:4] == [
        ("class_00/img-000000.jpg", 0),
        ("class_01/img-000001.jpg", 1),
        ("class_02/img-000002.jpg", 2),
        ("class_00/img-000003.jpg", 0),
    ]
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == sorted(rel for rel, _ in files)
    assert (tmp_path / "class_01/img-000007.jpg").read_bytes() == make_jpeg(7)


def test_write_flat_folder(tmp_path):
    files = synth.write_flat_folder(tmp_path, 5, num_classes=2)
    assert files == [(f"sample-{i:06d}.jpg", i % 2) for i in range(5)]
    assert (tmp_path / "sample-000003.cls").read_text() == "1"
    assert (tmp_path / "sample-000003.jpg").read_bytes() == make_jpeg(3)
    assert len(list(tmp_path.iterdir())) == 10


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="index and seed must be >= 0"):
        make_jpeg(-1)
    with pytest.raises(ValueError, match="size must be positive"):
        make_image(0, size=(0, 10))
    with pytest.raises(ValueError, match="need n >= 0 and num_classes >= 1"):
        list(make_dataset(3, num_classes=0))


def test_make_images_cli(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "tools" / "make_images.py"
    spec = importlib.util.spec_from_file_location("make_images", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(tmp_path / "out"), "-n", "6", "--layout", "imagefolder", "--classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "images     6 (imagefolder, seed 0, 3 classes)" in out
    assert "mean size" in out and "images/s" in out
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 6
