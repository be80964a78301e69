"""Restart intervals: the lossless transcode (pixels, markers, what it leaves alone) and the
interval-aware crop decode (equal to the ordinary native crop at every edge and scale,
safe on hostile restart markers, fuzzed)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from shardpipe.devtools.jpegfuzz import check_decoder, restart_mutants
from shardpipe.devtools.synth import CMYK_INDEX, GREY_INDEX, PROGRESSIVE_INDEX, make_image, make_jpeg
from shardpipe.errors import DecodeError
from shardpipe.image.decoders import registry
from shardpipe.image.decoders.base import scaled_dim

if os.environ.get("SHARDPIPE_REQUIRE_NATIVE") == "1":
    from shardpipe.image.decoders import native
else:
    native = pytest.importorskip("shardpipe.image.decoders.native", reason="native crop decoder not built")

from shardpipe.image.decoders import _cropjpeg  # noqa: E402
from shardpipe.image.decoders.jpeg import read_header  # noqa: E402
from shardpipe.image.restart import PROGRESSIVE_MAX_GROWTH, add_restart_intervals, restart_layout  # noqa: E402

SCALES = ((1, 1), (1, 2), (1, 4), (1, 8), (3, 8))


def jpeg(index: int, size: tuple[int, int], mode: str = "RGB", **options) -> bytes:
    buf = io.BytesIO()
    make_image(index, size=size).convert(mode).save(buf, "JPEG", quality=options.pop("quality", 90), **options)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


EXIF = Image.Exif()
EXIF[0x010F] = "shardpipe test camera"  # Make
EXIF[0x0112] = 6  # Orientation
ICC = b"\x00\x00\x01\x00fake-icc-profile-for-the-test" * 40

KINDS = {
    "420": jpeg(1, (500, 375)),
    "444": jpeg(2, (333, 251), subsampling=0),
    "422": jpeg(3, (250, 301), subsampling=1),
    "grey": make_jpeg(GREY_INDEX),
    "odd": jpeg(4, (97, 53)),
    "tiny": jpeg(5, (9, 7)),
    "exif+icc": jpeg(6, (401, 299), exif=EXIF.tobytes(), icc_profile=ICC),
    "synth": make_jpeg(1),
}


@pytest.fixture(scope="module")
def marked() -> dict[str, bytes]:
    return {k: add_restart_intervals(v) for k, v in KINDS.items()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_transcode_is_pixel_identical_and_marked(marked, kind: str) -> None:
    before, after = KINDS[kind], marked[kind]
    assert after != before and restart_layout(before) is None
    interval, per_row, rows = restart_layout(after)
    assert interval >= 1 and per_row >= 1 and rows == 1
    a, b = pixels(before), pixels(after)
    assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    assert len(after) <= len(before) * 1.02
    assert Image.open(io.BytesIO(after)).mode == Image.open(io.BytesIO(before)).mode


def test_transcode_keeps_exif_and_icc(marked) -> None:
    img = Image.open(io.BytesIO(marked["exif+icc"]))
    assert img.info["icc_profile"] == ICC
    exif = img.getexif()
    assert exif[0x010F] == "shardpipe test camera" and exif[0x0112] == 6


def test_interval_grid_cuts_rows_into_at_most_per_row_intervals() -> None:
    data = KINDS["420"]  # 500 px wide, 4:2:0: 32 MCUs per row
    for per_row, interval in ((8, 4), (4, 8), (3, 16), (1, 32)):
        assert restart_layout(add_restart_intervals(data, per_row)) == (interval, 32 // interval, 1)
    prime = jpeg(7, (16 * 29, 64))  # 29 MCUs per row: one interval per row
    assert restart_layout(add_restart_intervals(prime, 8)) == (29, 1, 1)
    with pytest.raises(ValueError, match="per_row must be at least 1"):
        add_restart_intervals(data, 0)


@pytest.mark.parametrize(
    "kind, data",
    [
        ("cmyk", make_jpeg(CMYK_INDEX)),
        ("rgb-coded", jpeg(8, (64, 48), keep_rgb=True)),
        ("png", b"\x89PNG\r\n\x1a\n" + bytes(40)),
        ("truncated", KINDS["420"][:5000]),
    ],
)
def test_files_that_cannot_be_transcoded_are_returned_as_they_are(kind: str, data: bytes) -> None:
    assert add_restart_intervals(data) is data


def _progressive(index: int, size: tuple[int, int], mode: str = "RGB", **options) -> bytes:
    buf = io.BytesIO()
    make_image(index, size=size).convert(mode).save(buf, "JPEG", quality=90, progressive=True, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name",
    ["generator", "420", "444", "422", "grey", "odd", "tiny"],
)
def test_progressive_files_become_baseline_with_intervals_and_the_same_pixels(name: str) -> None:
    data = {
        "generator": lambda: make_jpeg(PROGRESSIVE_INDEX),
        "420": lambda: _progressive(1, (500, 375)),
        "444": lambda: _progressive(2, (333, 251), subsampling=0),
        "422": lambda: _progressive(3, (250, 301), subsampling=1),
        "grey": lambda: _progressive(4, (301, 203), "L"),
        "odd": lambda: _progressive(5, (517, 389), optimize=True),
        "tiny": lambda: _progressive(6, (17, 9)),
    }[name]()
    assert read_header(data).progressive
    out = add_restart_intervals(data)
    assert out != data and not read_header(out).progressive and read_header(out).sof in (0xC0, 0xC1)
    assert np.array_equal(pixels(out), pixels(data))  # the same coefficients: the same pixels
    assert len(out) <= len(data) * (1 + PROGRESSIVE_MAX_GROWTH)
    if read_header(out).width >= 64:
        assert restart_layout(out) is not None  # the crop decoder takes its intervals
    assert add_restart_intervals(out) is out  # already marked
    assert add_restart_intervals(data, progressive_growth=None) is data  # opting out
    if len(out) > len(data):  # a bound the conversion does not fit leaves the file as it is
        assert add_restart_intervals(data, progressive_growth=(len(out) - len(data) - 1) / len(data)) is data


def test_a_progressive_crop_decodes_the_same_box_after_conversion() -> None:
    """The native crop of a converted progressive file equals the crop of the original, at
    every DCT scale, through the restart intervals."""
    data = _progressive(7, (500, 375))
    out = add_restart_intervals(data)
    rng = np.random.default_rng(3)
    for num in (8, 4, 2, 1):
        sw, sh = -(-500 * num // 8), -(-375 * num // 8)
        for _ in range(8):
            w, h = int(rng.integers(1, sw // 2)), int(rng.integers(1, sh // 2))
            x, y = int(rng.integers(0, sw - w)), int(rng.integers(0, sh - h))
            got, want = np.empty((h, w, 3), np.uint8), np.empty((h, w, 3), np.uint8)
            _cropjpeg.decode(out, got, num, 8, x, y, w, h, _cropjpeg.INTERVALS, registry.MAX_PIXELS)
            _cropjpeg.decode(data, want, num, 8, x, y, w, h, 0, registry.MAX_PIXELS)
            np.testing.assert_array_equal(got, want, err_msg=f"{num}/8 {(x, y, w, h)}")


def test_already_marked_files() -> None:
    usable = add_restart_intervals(KINDS["420"])
    assert add_restart_intervals(usable) is usable  # intervals the decoder uses: unchanged
    # PIL's restart interval of 5 MCUs does not tile a 32-MCU row: re-marked, same pixels
    odd = jpeg(1, (500, 375), restart_marker_blocks=5)
    assert restart_layout(odd) is None
    again = add_restart_intervals(odd)
    assert again != odd and restart_layout(again) is not None
    assert np.array_equal(pixels(again), pixels(odd))
    rows = jpeg(1, (500, 375), restart_marker_rows=2)  # whole rows per interval: usable, rows only
    assert restart_layout(rows) == (64, 1, 2) and add_restart_intervals(rows) is rows


def boxes(w: int, h: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """(x, y, width, height) boxes touching every edge and corner, inside, and random."""
    out = [(0, 0, w, h), (0, 0, 1, 1), (w - 1, h - 1, 1, 1), (0, h - 1, w, 1), (w - 1, 0, 1, h)]
    for fx in (0.0, 0.3, 1.0):
        for fy in (0.0, 0.6, 1.0):
            bw, bh = max(1, w // 3), max(1, h // 4)
            out.append((round(fx * (w - bw)), round(fy * (h - bh)), bw, bh))
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        out.append((x, y, int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1))))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_interval_crop_equals_the_ordinary_native_crop(marked, kind: str) -> None:
    new, old = native.NativeDecoder(), native.NativeDecoder(intervals=False)
    data = marked[kind]
    width, height = Image.open(io.BytesIO(data)).size
    rng = np.random.default_rng(len(data))
    for scale in SCALES:
        w, h = scaled_dim(width, scale), scaled_dim(height, scale)
        for x, y, bw, bh in boxes(w, h, rng):
            a = new.decode_region(data, scale, x, y, bw, bh)
            b = old.decode_region(data, scale, x, y, bw, bh)
            assert np.array_equal(a, b), (kind, scale, (x, y, bw, bh))


def test_interval_crop_through_decode_crop(marked) -> None:
    new, old = native.NativeDecoder(), native.NativeDecoder(intervals=False)
    for kind in ("420", "444", "grey"):
        data = marked[kind]
        w, h = Image.open(io.BytesIO(data)).size
        for box, out in (((h / 2, w / 2, h / 2, w / 2), (64, 64)), ((10.5, 3.25, 100, 80), (40, 50))):
            assert np.array_equal(new.decode_crop(data, box, out), old.decode_crop(data, box, out))


def _rst_offsets(data: bytes) -> list[int]:
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]


def test_intervals_outside_the_crop_are_not_decoded(marked) -> None:
    """Garbage in the first interval: the ordinary path must decode through it and refuses
    the image; the interval path never reads it, and its crop equals the clean file's."""
    data = marked["420"]
    first = _rst_offsets(data)[0]
    damaged = bytearray(data)
    damaged[first - 30 : first] = bytes(30)  # zeros: an invalid Huffman code sequence there
    damaged = bytes(damaged)
    with pytest.raises(DecodeError):
        native.NativeDecoder(intervals=False).decode_region(damaged, (1, 1), 300, 200, 100, 100)
    got = native.NativeDecoder().decode_region(damaged, (1, 1), 300, 200, 100, 100)
    assert np.array_equal(got, native.NativeDecoder().decode_region(data, (1, 1), 300, 200, 100, 100))


def _set_dri(data: bytes, value: int) -> bytes:
    at = data.index(b"\xff\xdd\x00\x04")
    return data[: at + 4] + value.to_bytes(2, "big") + data[at + 6 :]


def hostile(data: bytes) -> dict[str, bytes]:
    rst = _rst_offsets(data)
    mid = rst[len(rst) // 2]
    wrong = bytearray(data)
    wrong[mid + 1] = 0xD0 | ((wrong[mid + 1] + 3) & 7)
    interval = restart_layout(data)[0]
    return {
        "wrong numbering": bytes(wrong),
        "missing marker": data[:mid] + data[mid + 2 :],
        "extra marker": data[:mid] + data[mid : mid + 2] + data[mid:],
        "DRI 0": _set_dri(data, 0),
        "DRI not tiling rows": _set_dri(data, 3),
        "DRI doubled": _set_dri(data, 2 * interval),
        "DRI halved": _set_dri(data, max(1, interval // 2)),
        "DRI 65535": _set_dri(data, 65535),
        "interval ends early": data[: mid - 20] + data[mid:],
        "interval runs on": data[:mid] + bytes(range(1, 60)) + data[mid:],
        "all markers renumbered 0": bytes(b if i - 1 not in set(rst) else 0xD0 for i, b in enumerate(data)),
    }


@pytest.mark.parametrize("case", list(hostile(add_restart_intervals(KINDS["420"]))))
def test_hostile_restart_markers_fall_back_or_raise_decode_error(marked, case: str) -> None:
    data = hostile(marked["420"])[case]
    new, old = native.NativeDecoder(), native.NativeDecoder(intervals=False)
    for scale in ((1, 1), (1, 4)):
        w, h = scaled_dim(500, scale), scaled_dim(375, scale)
        for x, y, bw, bh in ((w // 2, h // 2, w // 3, h // 3), (0, h - 8, w, 8), (w - 5, 0, 5, h)):
            try:
                expected = old.decode_region(data, scale, x, y, bw, bh)
            except DecodeError:
                expected = None
            try:
                got = new.decode_region(data, scale, x, y, bw, bh)
            except DecodeError:
                assert expected is None, (case, scale)  # only what the ordinary path also refuses
                continue
            if expected is not None:
                assert np.array_equal(got, expected), (case, scale, (x, y, bw, bh))
        try:  # PIL decides when libjpeg refuses, except for scan data that ends early (at a marker that lies)
            out = new.decode_crop(data, (100.0, 120.0, 200.0, 250.0), (56, 56))
        except registry.CutShortError:
            continue
        assert out.shape == (56, 56, 3)


def test_fuzzed_restart_markers_only_ever_raise_decode_error(marked, monkeypatch) -> None:
    """A few hundred restart-marker mutants (tools/fuzz_native.py --restart runs thousands)."""
    monkeypatch.setattr(registry, "MAX_PIXELS", 1_000_000)
    seeds = [marked[k] for k in ("420", "444", "grey", "odd")]
    counts = check_decoder(
        native.NativeDecoder(), restart_mutants(seeds, 300, np.random.default_rng(7)), np.random.default_rng(8)
    )
    assert not [k for k in counts if k.startswith("BUG")], counts
    assert counts["decoded"] + counts["DecodeError"] == 300
    assert counts["inner region decoded"] > 50 and counts["inner region DecodeError"] > 20, counts
