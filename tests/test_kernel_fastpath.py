"""The per-image fast path of the crop kernel gives the reference path's bytes and verdicts:
the native marker counter behind the scan limit, and the header parsed once for size and decode."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop, sample_rng
from shardpipe.devtools.synth import make_jpeg
from shardpipe.image.decoders import registry
from shardpipe.image.decoders.registry import TooManyScansError
from shardpipe.image.fused import build_image_fn
from shardpipe.image.restart import add_restart_intervals

if os.environ.get("SHARDPIPE_REQUIRE_NATIVE") == "1":
    from shardpipe.image.decoders import _cropjpeg, native
else:
    native = pytest.importorskip("shardpipe.image.decoders.native", reason="native crop decoder not built")
    from shardpipe.image.decoders import _cropjpeg


def _samples() -> list[bytes]:
    """Photo-like JPEGs with the generator's special cases (grey, CMYK, progressive, EXIF) and
    their restart-marked versions, plus a PNG."""
    plain = [make_jpeg(i) for i in range(0, 100, 3)] + [make_jpeg(i) for i in (1, 2, 5, 10, 20, 30, 40, 49)]
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, "PNG")
    return plain + [add_restart_intervals(d) for d in plain] + [buf.getvalue()]


SAMPLES = _samples()


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"\xda", b"\xff\xda", b"\xff\xff\xda", b"\xda\xff\xda\xff", b"\xff\xda" * 7 + b"\xff", bytes(300)],
)
def test_count_markers_equals_bytes_count_on_edge_cases(data: bytes) -> None:
    assert _cropjpeg.count_markers(data, 0xDA) == data.count(b"\xff\xda")


def test_count_markers_equals_bytes_count_on_jpegs_random_bytes_and_buffers() -> None:
    rng = np.random.default_rng(7)
    blobs = SAMPLES + [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1, 2, 1000, 65537)]
    # dense in FF: runs of FF before DA, FF at the very end
    blobs.append(bytes(rng.choice([0xFF, 0xDA, 0x00], 50_000, p=[0.5, 0.3, 0.2]).astype(np.uint8)))
    for data in blobs:
        for code in (0xDA, 0xD9, 0xD0, 0x00):
            expected = data.count(bytes([0xFF, code]))
            assert _cropjpeg.count_markers(data, code) == expected
            assert _cropjpeg.count_markers(memoryview(data), code) == expected
            assert _cropjpeg.count_markers(bytearray(data), code) == expected


def test_count_markers_refuses_a_code_beyond_a_byte() -> None:
    with pytest.raises(OverflowError):
        _cropjpeg.count_markers(b"\xff\xda", 256)


def _many_scans(copies: int) -> bytes:
    """A progressive JPEG whose last scan is repeated ``copies`` times."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90, progressive=True
    )
    data = buf.getvalue()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * copies + data[end:]


@pytest.mark.parametrize("counter", ["native", "python"])
def test_the_scan_limit_gives_the_same_verdict_with_either_counter(counter: str, monkeypatch) -> None:
    if counter == "python":
        monkeypatch.setattr(registry, "_count_markers", None)
    else:
        assert registry._count_markers is _cropjpeg.count_markers
    data = _many_scans(registry.MAX_SCANS)
    scans = data.count(b"\xff\xda")
    with pytest.raises(TooManyScansError) as info:
        registry.check_scans(data)
    assert str(info.value).startswith(f"JPEG has {scans} start-of-scan markers, more than the limit of 500")
    registry.check_scans(_many_scans(registry.MAX_SCANS - 20))  # under the limit: no error
    registry.check_scans(memoryview(_many_scans(3)))


def test_probe_gives_the_size_and_the_header_the_decoder_would_parse() -> None:
    dec = native.NativeDecoder()
    for data in SAMPLES:
        width, height, header = dec.probe(data)
        assert (width, height) == dec.size(data)
        assert header == dec.header(data)


def _reference_fn(dec, size: int):
    """The kernel as it was built before the probe: size, box, decode_crop parsing the header itself, flip."""
    rrc, flip = RandomResizedCrop(size), RandomHorizontalFlip()

    def fn(data: bytes, rng: np.random.Generator) -> np.ndarray:
        width, height = dec.size(data)
        box = rrc.get_params(height, width, rng)
        return flip(dec.decode_crop(data, box, (size, size)), rng)

    return fn


@pytest.mark.parametrize("size", [224, 96])
def test_the_fused_kernel_gives_the_reference_paths_bytes(size: int) -> None:
    dec = native.NativeDecoder()
    fast = build_image_fn(dec, Compose([RandomResizedCrop(size), RandomHorizontalFlip()]))
    ref = _reference_fn(dec, size)
    for i, data in enumerate(SAMPLES):
        for epoch in range(3):
            got = fast(data, sample_rng(0, epoch, f"k{i}"))
            want = ref(data, sample_rng(0, epoch, f"k{i}"))
            assert got.dtype == np.uint8 and got.shape == (size, size, 3)
            np.testing.assert_array_equal(got, want)


def _cmyk(index: int, size: tuple[int, int], **options) -> bytes:
    from shardpipe.devtools.synth import make_image

    buf = io.BytesIO()
    make_image(index, size=size).convert("CMYK").save(buf, "JPEG", quality=88, **options)
    return buf.getvalue()


CMYK_SAMPLES = [
    _cmyk(1, (400, 300)),
    _cmyk(2, (333, 251), progressive=True),
    _cmyk(3, (17, 9)),
    *[make_jpeg(i) for i in (17, 67, 117)],  # the generator's CMYK JPEGs (index % 50 == 17)
]


def test_the_samples_hold_cmyk_jpegs_of_the_generator() -> None:
    assert len(CMYK_SAMPLES) >= 5
    assert all(Image.open(io.BytesIO(d)).mode == "CMYK" for d in CMYK_SAMPLES)


@pytest.mark.parametrize("scale", [(1, 1), (1, 2), (1, 4), (1, 8), (3, 8)])
def test_cmyk_decodes_to_pils_pixels_at_every_scale_and_region(scale) -> None:
    from shardpipe.image.decoders.base import scaled_dim

    dec = native.NativeDecoder()
    for data in CMYK_SAMPLES:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        sw, sh = scaled_dim(w, scale), scaled_dim(h, scale)
        if scale[0] == 1:
            img.draft(None, (max(1, w // scale[1]), max(1, h // scale[1])))
            ref = np.asarray(img.convert("RGB"))
            assert ref.shape == (sh, sw, 3)
            np.testing.assert_array_equal(dec.decode_scaled(data, scale), ref)
        else:
            ref = dec.decode_scaled(data, scale)
        # regions at the edges and inside are the whole decode's pixels
        for x, y, rw, rh in (
            (0, 0, sw, sh),
            (0, 0, 1, 1),
            (sw - 1, sh - 1, 1, 1),
            (sw // 3, sh // 4, sw // 2, sh // 2),
        ):
            np.testing.assert_array_equal(dec.decode_region(data, scale, x, y, rw, rh), ref[y : y + rh, x : x + rw])


class _PilForCmyk(native.NativeDecoder):
    """The native decoder as it routed CMYK before: to PIL (the reference path)."""

    def accepts(self, hdr) -> bool:
        return hdr.turbo_decodable


def test_cmyk_kernel_output_is_the_pil_routes_bytes() -> None:
    from shardpipe.augment import CenterCrop, Resize

    for transform in (
        Compose([RandomResizedCrop(224), RandomHorizontalFlip()]),
        Compose([RandomResizedCrop(48)]),
        Compose([Resize(160), CenterCrop(128)]),
    ):
        fast, ref = build_image_fn(native.NativeDecoder(), transform), build_image_fn(_PilForCmyk(), transform)
        for i, data in enumerate(CMYK_SAMPLES):
            for epoch in range(6):
                got = fast(data, sample_rng(0, epoch, f"c{i}"))
                np.testing.assert_array_equal(got, ref(data, sample_rng(0, epoch, f"c{i}")))


def test_fuzzed_cmyk_jpegs_only_ever_raise_decode_error(monkeypatch) -> None:
    from shardpipe.devtools.jpegfuzz import check_decoder, mutants

    monkeypatch.setattr(registry, "MAX_PIXELS", 1_000_000)
    seeds = [_cmyk(4, (96, 72)), _cmyk(5, (80, 64), progressive=True)]
    counts = check_decoder(
        native.NativeDecoder(), mutants(seeds, 200, np.random.default_rng(3)), np.random.default_rng(4)
    )
    assert not [k for k in counts if k.startswith("BUG")], counts
    assert counts["decoded"] + counts["DecodeError"] == 200
    assert counts["region decoded"] > 20


def test_making_the_pil_decoder_loads_pillows_plugins_before_workers_fork() -> None:
    """In a fresh interpreter: Pillow's JPEG plugin is loaded when the decoder is made, not at a
    worker's first Image.open (each forked worker would import it again)."""
    import subprocess
    import sys

    code = (
        "import sys; from shardpipe.image.decoders.pil import PilDecoder; "
        "before = 'PIL.JpegImagePlugin' in sys.modules; PilDecoder(); "
        "print(before, 'PIL.JpegImagePlugin' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]


def _encode(index: int, size: tuple[int, int], mode: str = "RGB", **options) -> bytes:
    from shardpipe.devtools.synth import make_image

    buf = io.BytesIO()
    make_image(index, size=size).convert(mode).save(buf, "JPEG", quality=90, **options)
    return buf.getvalue()


def test_interval_decode_equals_the_whole_file_decode_for_small_regions_at_interval_edges() -> None:
    """Small regions within pixels of an interval's edge, at every DCT scale and chroma layout,
    are the bytes of the ordinary decode (a sub-image without margin fails this: chroma
    upsampling at its edge)."""
    from shardpipe.image.decoders.base import scaled_dim
    from shardpipe.image.decoders.jpeg import read_header
    from shardpipe.image.restart import restart_layout

    rng = np.random.default_rng(5)
    seeds = [make_jpeg(i) for i in (0, 5, 10)] + [
        _encode(1, (333, 251), subsampling=0),
        _encode(2, (250, 301), subsampling=1),
        _encode(3, (301, 203), "L"),
        _encode(4, (517, 389)),
    ]
    checked = 0
    for data in seeds:
        marked = add_restart_intervals(data)
        interval, per_row, rows_per_interval = restart_layout(marked)
        hdr = read_header(marked)
        mcu_w = 8 * max(h for h, _ in hdr.sampling)
        mcu_h = 8 * max(v for _, v in hdr.sampling)
        for num in (8, 4, 2, 1):
            sw, sh = scaled_dim(hdr.width, (num, 8)), scaled_dim(hdr.height, (num, 8))
            iw = interval * mcu_w * num // 8 if per_row > 1 else sw
            ih = rows_per_interval * mcu_h * num // 8
            for _ in range(40):
                x = int(np.clip(iw * int(rng.integers(0, sw // iw + 1)) + int(rng.integers(-6, 7)), 0, sw - 1))
                y = int(np.clip(ih * int(rng.integers(0, sh // ih + 1)) + int(rng.integers(-6, 7)), 0, sh - 1))
                w, h = int(rng.integers(1, min(24, sw - x) + 1)), int(rng.integers(1, min(24, sh - y) + 1))
                got, want = np.empty((h, w, 3), np.uint8), np.empty((h, w, 3), np.uint8)
                _cropjpeg.decode(marked, got, num, 8, x, y, w, h, _cropjpeg.INTERVALS, registry.MAX_PIXELS)
                _cropjpeg.decode(marked, want, num, 8, x, y, w, h, 0, registry.MAX_PIXELS)
                np.testing.assert_array_equal(got, want, err_msg=f"{hdr.sampling} {num}/8 {(x, y, w, h)}")
                checked += 1
    assert checked == len(seeds) * 4 * 40


FALLBACK_PROGRAM = r"""
import io, sys
sys.modules["shardpipe.image.decoders._cropjpeg"] = None  # a pure-pip install: no native extension
import numpy as np
from PIL import Image
from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop, sample_rng
from shardpipe.devtools.synth import make_jpeg
from shardpipe.image.decoders import get_decoder, registry
from shardpipe.image.fused import build_image_fn
assert registry._count_markers is None
fn = build_image_fn("auto", Compose([RandomResizedCrop(64), RandomHorizontalFlip()]))
for i in (0, 7, 17, 27):  # plain, grey, CMYK, progressive
    out = fn(make_jpeg(i), sample_rng(0, 0, f"k{i}"))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
buf = io.BytesIO()
Image.new("RGB", (48, 32)).save(buf, "JPEG", progressive=True)
data = buf.getvalue()
last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
try:
    registry.check_scans(data[:end] + data[last:end] * registry.MAX_SCANS + data[end:])
except registry.TooManyScansError as e:
    print("refused:", str(e).split(",")[0])
print(get_decoder("auto").name)
"""


def test_without_the_native_extension_the_kernel_and_the_scan_limit_still_work() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FALLBACK_PROGRAM], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused: JPEG has ") and "start-of-scan markers" in lines[0]
    assert lines[1] != "native"
