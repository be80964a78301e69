"""The native crop decoder (C extension on libjpeg-turbo): exact regions, agreement with
decode-whole-then-crop, errors as DecodeError (fuzzed), bombs refused, fallbacks, auto order."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from shardpipe.augment import CenterCrop, Compose, RandomHorizontalFlip, RandomResizedCrop, Resize, sample_rng
from shardpipe.augment.geometry import random_resized_crop_box
from shardpipe.augment.resample import resized_crop
from shardpipe.devtools.jpegfuzz import check_decoder, mutants
from shardpipe.devtools.synth import make_image, make_jpeg
from shardpipe.errors import DecodeError
from shardpipe.image.decoders import CutShortError, ImageTooLargeError, get_decoder, register_decoder, registry
from shardpipe.image.decoders.base import POWER_OF_TWO_SCALES, pick_scale
from shardpipe.image.decoders.pil import PilDecoder
from shardpipe.image.fused import FusedDecoder, build_image_fn

if os.environ.get("SHARDPIPE_REQUIRE_NATIVE") == "1":  # CI builds it: a missing build is a failure there
    from shardpipe.image.decoders import native
else:
    native = pytest.importorskip("shardpipe.image.decoders.native", reason="native crop decoder not built")


@pytest.fixture(scope="module")
def dec():
    return native.NativeDecoder()


def jpeg(index: int, size: tuple[int, int], mode: str = "RGB", **options) -> bytes:
    buf = io.BytesIO()
    make_image(index, size=size).convert(mode).save(buf, "JPEG", quality=options.pop("quality", 90), **options)
    return buf.getvalue()


def whole(data: bytes) -> np.ndarray:
    """The reference: PIL decodes the whole image (same libjpeg-turbo IDCT and upsampling)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize(
    "kind, data",
    [
        ("420", jpeg(1, (500, 375))),
        ("444", jpeg(2, (333, 251), subsampling=0)),
        ("422", jpeg(3, (250, 301), subsampling=1)),
        ("grey", jpeg(4, (301, 203), "L")),
        ("progressive", jpeg(5, (400, 300), progressive=True)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_regions_are_the_whole_images_pixels(dec, kind: str, data: bytes) -> None:
    """Any box at 1/1 scale is exactly that box of the whole decoded image (crop_scanline's
    iMCU alignment and skip_scanlines change nothing), also at odd offsets and the edges."""
    ref = whole(data)
    h, w = ref.shape[:2]
    rng = np.random.default_rng(0)
    boxes = [(0, 0, w, h), (w - 1, h - 1, 1, 1), (0, h - 7, 13, 7), (17, 0, w - 17, 9), (144, 37, 40, 120)]
    boxes += [
        (int(x), int(y), int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1)))
        for x, y in zip(rng.integers(0, w, 12), rng.integers(0, h, 12))
    ]
    for x, y, bw, bh in boxes:
        region = dec.decode_region(data, (1, 1), x, y, bw, bh)
        assert region.shape == (bh, bw, 3)
        diff = np.abs(region.astype(int) - ref[y : y + bh, x : x + bw])
        assert diff.max() <= 1, (kind, (x, y, bw, bh), diff.max())  # PIL vs libjpeg-turbo build: a level


def test_scaled_regions_match_the_scaled_whole_decode(dec) -> None:
    data = jpeg(6, (1400, 1050))
    for scale in ((1, 2), (1, 4), (3, 4), (1, 8)):
        full = dec.decode_scaled(data, scale)
        assert full.shape[:2] == (-(-1050 * scale[0] // scale[1]), -(-1400 * scale[0] // scale[1]))
        region = dec.decode_region(data, scale, 37, 29, 101, 57)
        np.testing.assert_array_equal(region, full[29:86, 37:138])


def test_crop_agrees_with_decode_whole_then_crop_on_the_synthetic_set(dec) -> None:
    """Same box, same resize: at 1/1 scale identical; where a DCT scale applies (boxes >= twice
    the output), libjpeg's scaled IDCT is a slightly different low-pass filter."""
    rng = np.random.default_rng(1)
    means, scaled_means, worst_exact = [], [], 0
    for i in range(40):
        data = make_jpeg(i)
        ref = whole(data)
        h, w = ref.shape[:2]
        for _ in range(3):
            box = random_resized_crop_box(h, w, rng)
            out = dec.decode_crop(data, box, (224, 224))
            diff = np.abs(out.astype(int) - resized_crop(ref, box, 224, 224))
            means.append(diff.mean())
            if pick_scale(int(box[3]), int(box[2]), 224, 224, POWER_OF_TWO_SCALES) == (1, 1):
                worst_exact = max(worst_exact, int(diff.max()))
            else:
                scaled_means.append(diff.mean())
                assert np.percentile(diff, 99) <= 12, i
    assert np.mean(means) <= 1.0
    assert worst_exact <= 2  # 1/1 scale: the same pixels (a level of rounding at most)
    assert scaled_means and max(scaled_means) <= 3.0


def test_crop_equals_the_fused_simplejpeg_path_pixel_for_pixel(dec) -> None:
    """The native crop is the existing fused path's output, only cheaper."""
    sj = pytest.importorskip("shardpipe.image.decoders.simplejpeg").SimpleJpegDecoder()
    t = Compose([RandomResizedCrop(224), RandomHorizontalFlip()])
    a, b = build_image_fn(dec, t), build_image_fn(sj, t)
    for i in (*range(0, 40, 3), 17, 27):
        data = make_jpeg(i)  # (17: CMYK, both go to PIL; 27: progressive)
        rng_a, rng_b = sample_rng(0, 0, f"k{i}"), sample_rng(0, 0, f"k{i}")
        np.testing.assert_array_equal(a(data, rng_a), b(data, rng_b))


def test_eval_transforms_are_fused_and_agree(dec) -> None:
    """Resize + CenterCrop and a lone CenterCrop decode only the centre box."""
    data = jpeg(7, (500, 375))
    ref = whole(data)
    for t in (Compose([Resize(256), CenterCrop(224)]), CenterCrop(224), Compose([CenterCrop(300), Resize(128)])):
        fused, plain = build_image_fn(dec, t), build_image_fn(dec, t, fuse=False)
        a, b = fused(data, None), plain(data, None)
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b).mean() <= 1.0, t
    np.testing.assert_array_equal(build_image_fn(dec, CenterCrop(224))(data, None), ref[76:300, 138:362])
    small = jpeg(8, (180, 140))  # smaller than the crop: padded like the unfused transform
    np.testing.assert_array_equal(
        build_image_fn(dec, CenterCrop(224))(small, None), build_image_fn(dec, CenterCrop(224), fuse=False)(small, None)
    )


def test_corrupt_data_is_a_decode_error_with_libjpegs_message(dec) -> None:
    data = bytearray(jpeg(9, (320, 240)))
    hdr_end = data.find(b"\xff\xda")
    data[hdr_end + 600 : hdr_end + 640] = b"\xff\xd0" * 20  # restart markers where none belong
    # a marker inside the scan ends its data early, as a cut does (the rest would be grey)
    with pytest.raises(CutShortError, match=r"cut short \(libjpeg: Corrupt JPEG data: premature end of data segment\)"):
        dec.decode_region(bytes(data), (1, 1), 0, 0, 320, 240)
    with pytest.raises(CutShortError, match="Premature end of JPEG file"):
        dec.decode_region(bytes(data[:1000]), (1, 1), 0, 0, 320, 240)
    with pytest.raises(DecodeError, match="Not a JPEG file"):
        dec.decode_region(b"\x89PNG\r\n\x1a\n" + bytes(100), (1, 1), 0, 0, 8, 8)
    with pytest.raises(DecodeError, match="not inside the 320x240 decoded image"):
        dec.decode_region(jpeg(9, (320, 240)), (1, 1), 300, 0, 21, 10)
    # the backend gives PIL the verdict: truncated is an error, as with every backend
    good = jpeg(9, (320, 240))
    with pytest.raises(DecodeError, match="truncated"):
        dec.decode_crop(good[: len(good) // 2], (0, 0, 100, 100), (64, 64))


def test_bombs_are_refused_from_the_header(dec, monkeypatch) -> None:
    data = jpeg(10, (400, 300))
    monkeypatch.setattr(registry, "MAX_PIXELS", 400 * 300 - 1)
    with pytest.raises(ImageTooLargeError, match="400x300 = 120000 pixels exceeds the limit"):
        dec.decode_crop(data, (0, 0, 100, 100), (32, 32))
    with pytest.raises(ImageTooLargeError, match="400x300 = 120000 pixels exceeds the limit of 119999"):
        dec.decode_region(data, (1, 1), 0, 0, 10, 10)  # the C check, from libjpeg's own header read


def test_cmyk_is_decoded_here_with_pils_colours_and_odd_files_fall_back_to_pil(dec) -> None:
    """CMYK is decoded natively, converted exactly as PIL converts it; anything libjpeg refuses goes to PIL."""
    data = jpeg(11, (400, 300), "CMYK")
    raw = np.empty((40, 40, 3), np.uint8)
    with pytest.raises(native._cropjpeg.Error, match="CMYK"):  # without the CMYK flag the C call refuses
        native._cropjpeg.decode(data, raw, 8, 8, 0, 0, 40, 40, 0, registry.MAX_PIXELS)
    np.testing.assert_array_equal(dec.decode_region(data, (1, 1), 7, 5, 40, 40), whole(data)[5:45, 7:47])
    np.testing.assert_array_equal(dec.decode(data), whole(data))
    box = (30, 40, 200, 260)  # decoded at 1/2 scale, as the other backends' fused path does
    out = dec.decode_crop(data, box, (100, 130))
    np.testing.assert_array_equal(out, FusedDecoder(PilDecoder()).decode_box(data, 400, 300, box, 100, 130))
    assert np.abs(out.astype(int) - resized_crop(whole(data), box, 100, 130)).mean() < 4
    png = io.BytesIO()
    make_image(12, size=(120, 90)).save(png, "PNG")
    out = dec.decode_crop(png.getvalue(), (10, 10, 50, 60), (50, 60))
    np.testing.assert_array_equal(out, np.asarray(make_image(12, size=(120, 90)))[10:60, 10:70])
    with pytest.raises(ValueError, match="not inside the 120x90 image"):
        dec.decode_crop(png.getvalue(), (50, 10, 50, 60), (50, 60))


def test_fast_flags_stay_close(dec) -> None:
    data = jpeg(13, (500, 375))
    ref = dec.decode(data)
    for flags in (native.FAST_IDCT, native.FAST_UPSAMPLE):
        out = native.NativeDecoder(flags).decode(data)
        assert 0 < np.abs(out.astype(int) - ref).mean() <= 1.5, flags


def test_fuzzed_jpegs_only_ever_raise_decode_error(dec, monkeypatch) -> None:
    """A few hundred mutated JPEGs (tools/fuzz_native.py runs 12,000): no crash, no other error."""
    monkeypatch.setattr(registry, "MAX_PIXELS", 1_000_000)
    seeds = [
        jpeg(14, (160, 120)),
        jpeg(15, (120, 96), "L"),
        jpeg(16, (144, 112), progressive=True),
        jpeg(17, (128, 96), subsampling=0),
    ]
    counts = check_decoder(dec, mutants(seeds, 300, np.random.default_rng(5)), np.random.default_rng(6))
    assert not [k for k in counts if k.startswith("BUG")], counts
    assert counts["decoded"] + counts["DecodeError"] == 300
    assert counts["region DecodeError"] > 50 and counts["region decoded"] > 50  # both outcomes exercised


def test_auto_prefers_native_and_logs_once_why_it_cannot(caplog) -> None:
    assert get_decoder("auto").name == "native"
    register_decoder("test-unbuilt", "shardpipe.no_such_extension:X", "a compiler", auto_rank=0)
    try:
        with caplog.at_level(logging.WARNING, logger="shardpipe.image.decoders.registry"):
            first, second = get_decoder("auto"), get_decoder("auto")
        assert first is second and first.name == "native"
        notes = [r.getMessage() for r in caplog.records if "test-unbuilt" in r.getMessage()]
        assert len(notes) == 1 and "decoder='auto' skips 'test-unbuilt'" in notes[0], notes
    finally:
        registry.AUTO_ORDER.remove("test-unbuilt")
        registry.DECODERS.unregister("test-unbuilt")


class LoggedRegions(native.NativeDecoder):
    """The native decoder, logging each region it asks libjpeg for: (scale, x, y, width, height)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.regions: list[tuple] = []

    def decode_region(self, data, scale, x, y, width, height):
        self.regions.append((scale, x, y, width, height))
        return super().decode_region(data, scale, x, y, width, height)


def test_an_integer_box_near_the_output_size_decodes_exactly_the_box() -> None:
    data = jpeg(10, (500, 375))
    dec = LoggedRegions()
    out = dec.decode_crop(data, (40, 60, 100, 120), (100, 120))
    assert dec.regions == [((1, 1), 60, 40, 120, 100)]  # no margins: resized_crop reflects at the box's edges
    np.testing.assert_array_equal(out, resized_crop(whole(data), (40, 60, 100, 120), 100, 120))


def test_a_fractional_box_decodes_the_filter_margins_around_it() -> None:
    data = jpeg(10, (500, 375))
    dec = LoggedRegions()
    out = dec.decode_crop(data, (40.5, 60, 100, 120), (100, 120))
    # 4 blocks of 1 pixel + 2 on each side, clipped to the image
    assert dec.regions == [((1, 1), 54, 34, 186 - 54, 147 - 34)]
    assert np.abs(out.astype(int) - resized_crop(whole(data), (40.5, 60, 100, 120), 100, 120)).max() <= 1
    dec.regions.clear()
    dec.decode_crop(data, (0.5, 0, 100, 120), (100, 120))
    assert dec.regions == [((1, 1), 0, 0, 126, 107)]


def test_a_large_downscale_widens_the_margins_by_the_averaging_block() -> None:
    """Without a DCT scale, a 400-pixel box to 50 averages blocks of ceil(8 / 3) = 3 pixels first,
    so the margins are 4 x 3 + 2 = 14 pixels."""
    data = jpeg(11, (500, 375))
    dec = LoggedRegions(factors=((1, 1),))
    out = dec.decode_crop(data, (100.5, 50, 40, 400), (40, 50))
    assert dec.regions == [((1, 1), 50 - 14, 100 - 6, 450 + 14 - 36, 141 + 6 - 94)]
    assert np.abs(out.astype(int) - resized_crop(whole(data), (100.5, 50, 40, 400), 40, 50)).max() <= 1


def test_boxes_outside_the_image_or_empty_are_refused() -> None:
    dec = native.NativeDecoder()
    data = jpeg(12, (320, 240))
    for box in ((0, 0, 10, 0), (0, 0, 0, 10), (-1, 0, 10, 10), (0, -1, 10, 10), (231, 0, 10, 10), (0, 311, 10, 10)):
        with pytest.raises(ValueError) as e:
            dec.decode_crop(data, box, (8, 8))
        assert str(e.value) == f"crop box (top, left, height, width) = {box} is not inside the 320x240 image"
    assert dec.decode_crop(data, (230, 310, 10, 10), (10, 10)).shape == (10, 10, 3)  # touching the corner


def test_restart_intervals_are_used_by_default() -> None:
    assert native.NativeDecoder().flags == native.INTERVALS | native.CMYK
    assert native.NativeDecoder(intervals=False).flags == native.CMYK
    assert native.NativeDecoder(native.FAST_IDCT).flags == native.FAST_IDCT | native.INTERVALS | native.CMYK
    assert native.NativeDecoder(native.FAST_IDCT, intervals=False).flags == native.FAST_IDCT | native.CMYK


def test_a_png_falls_back_at_full_size_whatever_scale_the_box_allows() -> None:
    buf = io.BytesIO()
    make_image(13, size=(600, 400)).save(buf, "PNG")
    data = buf.getvalue()
    box = (50, 100, 300, 400)  # a 1/2 scale would do: PIL decodes a PNG whole all the same
    out = native.NativeDecoder().decode_crop(data, box, (70, 40))
    np.testing.assert_array_equal(out, resized_crop(whole(data), box, 70, 40))


def test_a_cmyk_jpeg_falls_back_to_a_scaled_pil_decode_mapped_by_the_scale() -> None:
    """The box picks 1/2 (its height must stay 1.5x the output's 70 rows); PIL decodes at ceil(size / 2),
    and the box maps by exactly 1/2 (each scaled pixel covers two), not by the rounded-up sizes."""
    data = jpeg(14, (501, 375), "CMYK")

    class PilForCmyk(native.NativeDecoder):  # CMYK routed to PIL, as before the native CMYK path
        def accepts(self, hdr) -> bool:
            return hdr.turbo_decodable

    dec = PilForCmyk()
    assert dec.header(data) is None
    half = PilDecoder().decode_scaled(data, (1, 2))
    assert half.shape == (188, 251, 3)
    out = dec.decode_crop(data, (31, 77, 300, 400), (70, 40))
    np.testing.assert_array_equal(out, resized_crop(half, (15.5, 38.5, 150, 200), 70, 40))
    # the native CMYK path decodes only the box, at the same scale, to the same bytes
    assert native.NativeDecoder().header(data) is not None
    np.testing.assert_array_equal(native.NativeDecoder().decode_crop(data, (31, 77, 300, 400), (70, 40)), out)
