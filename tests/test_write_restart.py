"""``write_shards`` gives JPEGs restart intervals by default, as ``shardpipe write`` does: the same
pixels as the source files, and everything it cannot re-encode losslessly copied byte for byte."""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shardpipe
from shardpipe.cli import write as write_cli
from shardpipe.devtools.synth import CMYK_INDEX, GREY_INDEX, PROGRESSIVE_INDEX, make_jpeg
from shardpipe.write.job import write_shards
from shardpipe.write.options import WriteOptions

restart = pytest.importorskip("shardpipe.image.restart")
pytest.importorskip("shardpipe.image.decoders._cropjpeg", reason="native extension not built")

#: photo-like JPEGs of every kind the generator makes: 4:2:0 at several qualities and sizes,
#: greyscale, CMYK and progressive
INDICES = (0, 1, 2, 3, 4, 5, GREY_INDEX, 11, 12, CMYK_INDEX, 20, PROGRESSIVE_INDEX, 33)
UNTOUCHABLE = (CMYK_INDEX,)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A flat folder: the JPEGs above, two PNGs, and a label sidecar for one JPEG."""
    root = tmp_path_factory.mktemp("restart-src")
    for i in INDICES:
        (root / f"img-{i:03d}.jpg").write_bytes(make_jpeg(i))
    for i in range(2):
        (root / f"pic-{i}.png").write_bytes(png(i))
    return root


def read_back(manifest: Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in shardpipe.ShardDataset(str(manifest), decode=None)}


def test_the_library_default_is_the_commands() -> None:
    parser = argparse.ArgumentParser()
    write_cli.add_arguments(parser)
    assert parser.parse_args(["src", "out-%02d.tar"]).restart_intervals is True
    assert parser.parse_args(["src", "out-%02d.tar", "--no-restart-intervals"]).restart_intervals is False
    assert WriteOptions().restart_intervals is True and WriteOptions().prepare.restart_intervals is True


def test_default_write_decodes_to_the_source_pixels_and_copies_the_rest(source: Path, tmp_path: Path) -> None:
    summary = write_shards(source, str(tmp_path / "out" / "s-%02d.tar"), maxcount=6)
    got = read_back(tmp_path / "out" / "manifest.json")
    assert sorted(got) == sorted([f"img-{i:03d}" for i in INDICES] + ["pic-0", "pic-1"])
    for i in INDICES:
        before, after = make_jpeg(i), got[f"img-{i:03d}"]["jpg"]
        assert np.array_equal(pixels(after), pixels(before)), i  # lossless: PIL decodes the same pixels
        if i in UNTOUCHABLE:
            assert after == before, i  # CMYK: byte for byte
            assert restart.restart_layout(after) is None
        else:
            assert after != before and restart.restart_layout(after) is not None, i
            bound = restart.PROGRESSIVE_MAX_GROWTH if i == PROGRESSIVE_INDEX else restart.MAX_GROWTH
            assert len(after) <= len(before) * (1 + bound), i
    for i in range(2):
        assert got[f"pic-{i}"]["png"] == png(i)  # not a JPEG: byte for byte
    marked = len(INDICES) - len(UNTOUCHABLE)
    assert (summary.written_now, summary.presized, summary.marked) == (len(INDICES) + 2, 0, marked)
    assert (
        f"(0 presized, {marked} given restart intervals, {len(UNTOUCHABLE) + 2} copied unchanged)" in summary.format()
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["options"]["restart_intervals"] is True

    rolling = write_shards(source, str(tmp_path / "rolling" / "s-%02d.tar"), maxsize=400_000)  # shards closed by bytes
    assert rolling.shards > 1 and (rolling.presized, rolling.marked) == (0, marked)
    again = read_back(tmp_path / "rolling" / "manifest.json")
    assert {k: s.get("jpg", s.get("png")) for k, s in again.items()} == {
        k: s.get("jpg", s.get("png")) for k, s in got.items()
    }


def test_restart_intervals_false_copies_every_image_byte_for_byte(source: Path, tmp_path: Path) -> None:
    summary = write_shards(source, str(tmp_path / "out" / "s-%02d.tar"), restart_intervals=False)
    got = read_back(tmp_path / "out" / "manifest.json")
    for i in INDICES:
        assert got[f"img-{i:03d}"]["jpg"] == make_jpeg(i), i
    assert summary.marked == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["options"]["restart_intervals"] is False


def test_presized_images_get_intervals_too_and_are_counted_as_presized(source: Path, tmp_path: Path) -> None:
    summary = write_shards(source, str(tmp_path / "out" / "s-%02d.tar"), presize=64)
    got = read_back(tmp_path / "out" / "manifest.json")
    resized = [k for k, s in got.items() if "jpg" in s and min(pixels(s["jpg"]).shape[:2]) == 64]
    assert summary.presized == len(resized) > 0 and summary.marked == 0  # every generated JPEG is larger than 64
    assert all(restart.restart_layout(got[k]["jpg"]) is not None for k in resized)


def test_resume_with_the_other_restart_setting_rewrites_the_shards(source: Path, tmp_path: Path) -> None:
    """The setting is in the resume fingerprint: a finished run with the other one is not reused."""
    pattern = str(tmp_path / "out" / "s-%02d.tar")
    write_shards(source, pattern, maxcount=6)
    finished = write_shards(source, pattern, maxcount=6, resume=True)
    assert finished.written_now == 0 and finished.written == len(INDICES) + 2  # same options: already done
    copied = write_shards(source, pattern, maxcount=6, resume=True, restart_intervals=False)
    assert copied.written_now == len(INDICES) + 2 and copied.resumed_shards == 0
    got = read_back(tmp_path / "out" / "manifest.json")
    assert all(got[f"img-{i:03d}"]["jpg"] == make_jpeg(i) for i in INDICES)


def test_without_the_extension_images_are_copied_and_the_log_says_so(
    source: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(restart, "_cropjpeg", None)  # as in a pure-pip install without the native decoder
    with caplog.at_level(logging.INFO, logger="shardpipe"):
        summary = write_shards(source, str(tmp_path / "out" / "s-%02d.tar"))
    got = read_back(tmp_path / "out" / "manifest.json")
    assert all(got[f"img-{i:03d}"]["jpg"] == make_jpeg(i) for i in INDICES) and summary.marked == 0
    assert "native extension is not built: JPEGs are copied without restart intervals" in caplog.text
