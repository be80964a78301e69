"""Decoder backends: same pixels as PIL on every format, clear errors on bad data, no crashes."""

from __future__ import annotations

import io
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from shardpipe.augment import RandomResizedCrop, sample_rng
from shardpipe.devtools.synth import make_image
from shardpipe.errors import DecodeError
from shardpipe.image.decoders import AUTO_ORDER, available_decoders, get_decoder, register_decoder, registry
from shardpipe.image.decoders.base import scaled_dim
from shardpipe.image.decoders.jpeg import has_end_marker, read_header
from shardpipe.image.decoders.registry import ImageTooLargeError
from shardpipe.image.fused import build_image_fn

from .helpers import DECODER_BACKENDS, decoder_or_skip, run_in_group, small_jpeg

BACKENDS = DECODER_BACKENDS
backend = decoder_or_skip


def photo(size: tuple[int, int] = (160, 120), index: int = 3) -> Image.Image:
    return make_image(index, size=size)


def encode(img: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def pil_rgb(data: bytes) -> np.ndarray:
    """The reference: what PIL's own conversion to RGB gives."""
    img = Image.open(io.BytesIO(data))
    if img.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGB", img.size)
        bg.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return np.asarray(bg)
    return np.asarray(img.convert("RGB"))


JPEG_VARIANTS = {
    "baseline-420": lambda: encode(photo(), quality=90),
    "baseline-444": lambda: encode(photo(), quality=95, subsampling=0),
    "baseline-422": lambda: encode(photo(), quality=90, subsampling=1),
    "odd-size": lambda: encode(photo((157, 93)), quality=90),
    "grey": lambda: encode(photo().convert("L"), quality=90),
    "cmyk": lambda: encode(photo().convert("CMYK"), quality=90),
    "progressive": lambda: encode(photo(), quality=90, progressive=True),
}
OTHER_FORMATS = {
    "png-rgb": lambda: encode(photo(), "PNG"),
    "png-rgba": lambda: encode(photo().convert("RGBA"), "PNG"),
    "png-grey": lambda: encode(photo().convert("L"), "PNG"),
    "png-palette": lambda: encode(photo().convert("P"), "PNG"),
    "webp": lambda: encode(photo(), "WEBP", quality=90),
    "bmp": lambda: encode(photo(), "BMP"),
}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("variant", list(JPEG_VARIANTS))
def test_jpeg_variants_match_pil(name: str, variant: str) -> None:
    data = JPEG_VARIANTS[variant]()
    out = backend(name).decode(data)
    ref = pil_rgb(data)
    assert out.dtype == np.uint8 and out.shape == ref.shape and out.shape[2] == 3
    assert out.flags["C_CONTIGUOUS"]
    # same libjpeg-turbo algorithms; versions may round a few pixels differently
    assert np.abs(out.astype(int) - ref).mean() < 0.5
    if variant == "cmyk":  # colours must be PIL's CMYK conversion exactly (PIL decodes it)
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("variant", list(OTHER_FORMATS))
def test_other_formats_decode_to_rgb_through_fallback(name: str, variant: str) -> None:
    data = OTHER_FORMATS[variant]()
    out = backend(name).decode(data)
    np.testing.assert_array_equal(out, pil_rgb(data))


@pytest.mark.parametrize("name", BACKENDS)
def test_png_named_jpg_decodes_by_content(name: str) -> None:
    png = encode(photo(), "PNG")  # a sample whose .jpg member holds PNG bytes
    np.testing.assert_array_equal(backend(name).decode(png), np.asarray(photo()))


@pytest.mark.parametrize("name", BACKENDS)
def test_size_from_header(name: str) -> None:
    dec = backend(name)
    for make in list(JPEG_VARIANTS.values()) + [OTHER_FORMATS["png-rgb"]]:
        data = make()
        assert dec.size(data) == Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("name", BACKENDS)
def test_scaled_decode_sizes_and_content(name: str) -> None:
    dec = backend(name)
    img = photo((400, 300))
    data = encode(img, quality=92)
    full = dec.decode(data)
    assert dec.scale_factors[0] == (1, 1)
    for scale in dec.scale_factors[1:]:
        out = dec.decode_scaled(data, scale)
        assert out.shape == (scaled_dim(300, scale), scaled_dim(400, scale), 3), scale
        # a DCT-scaled decode is a low-passed image: its coarse means match the full image's
        # (a wrong scale or garbled pixels differ by tens of levels)
        coarse = [np.asarray(Image.fromarray(a).resize((25, 19), Image.BOX)).astype(int) for a in (out, full)]
        assert np.abs(coarse[0] - coarse[1]).mean() < 5, scale


def test_auto_is_first_installed_in_auto_order() -> None:
    installed = [n for n in AUTO_ORDER if n in available_decoders()]
    expected = installed[0] if installed else "pil"
    assert get_decoder("auto").name == expected
    assert "pil" in available_decoders()


def test_unknown_and_missing_decoders_say_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"unknown decoder 'nope': choose one of .*'pil'"):
        get_decoder("nope")
    register_decoder("test-missing", "shardpipe_no_such_module:Decoder", "pip install shardpipe-no-such")
    try:
        with pytest.raises(
            ImportError,
            match=r"decoder 'test-missing' needs a package that is not installed .*: pip install shardpipe-no-such",
        ):
            get_decoder("test-missing")
        assert "test-missing" not in available_decoders()
    finally:
        registry.DECODERS.unregister("test-missing")


# -- bad input ------------------------------------------------------------------------------


def _with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its JPEG frame header claiming ``width`` x ``height``."""
    hdr = read_header(data)
    pos = data.find(b"\xff\xc0") if hdr.sof == 0xC0 else data.find(bytes([0xFF, hdr.sof]))
    b = bytearray(data)
    b[pos + 5 : pos + 7] = height.to_bytes(2, "big")
    b[pos + 7 : pos + 9] = width.to_bytes(2, "big")
    return bytes(b)


@pytest.mark.parametrize("name", BACKENDS)
def test_decompression_bomb_refused_from_header(name: str) -> None:
    dec = backend(name)
    bomb = _with_declared_size(encode(photo(), quality=80), 60000, 60000)
    with pytest.raises(ImageTooLargeError, match=r"60000x60000 = 3600000000 pixels exceeds the limit of 100000000"):
        dec.decode(bomb)
    assert isinstance(ImageTooLargeError("x"), DecodeError)


@pytest.mark.parametrize("name", BACKENDS)
def test_pixel_limit_applies_to_every_format(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dec = backend(name)
    monkeypatch.setattr(registry, "MAX_PIXELS", 160 * 120 - 1)
    for data in (encode(photo(), quality=90), encode(photo(), "PNG"), encode(photo(), "WEBP")):
        with pytest.raises(ImageTooLargeError, match=r"160x120 = 19200 pixels exceeds the limit of 19199"):
            dec.decode(data)
    monkeypatch.setattr(registry, "MAX_PIXELS", 160 * 120)
    assert dec.decode(encode(photo(), "PNG")).shape == (120, 160, 3)


@pytest.mark.parametrize("name", BACKENDS)
def test_empty_and_garbage_data(name: str) -> None:
    dec = backend(name)
    with pytest.raises(DecodeError, match=r"empty image data \(0 bytes\)"):
        dec.decode(b"")
    with pytest.raises(DecodeError, match=r"not a recognised image format \(11 bytes starting b'hello w"):
        dec.decode(b"hello world")
    with pytest.raises(DecodeError, match=r"not a recognised image format"):
        dec.decode(b"\xff\xd8\xff")  # a JPEG signature and nothing else


@pytest.mark.parametrize("name", BACKENDS)
def test_truncated_jpeg_is_a_clear_error(name: str) -> None:
    dec = backend(name)
    data = encode(photo((320, 240)), quality=90)
    for cut in (len(data) // 2, len(data) - 2):
        with pytest.raises(DecodeError, match=r"corrupt JPEG data: image file is truncated"):
            dec.decode(data[:cut])
    with pytest.raises(DecodeError, match=r"corrupt JPEG header: Truncated File Read"):
        dec.decode(data[:200])  # cut inside the header


def test_corrupt_data_never_crashes_the_process() -> None:
    """Thousands of damaged JPEGs through every backend, in a child process: a crash
    (segfault, abort) would show as a non-zero exit; anything but DecodeError fails."""
    script = textwrap.dedent(
        """
        import io, sys
        import numpy as np
        from PIL import Image
        from shardpipe.image.decoders import get_decoder, available_decoders
        from shardpipe.errors import DecodeError
        from shardpipe.devtools.synth import make_image
        rng = np.random.default_rng(0)
        sources = []
        for i, opts in enumerate([{}, {"progressive": True}, {"subsampling": 0}]):
            buf = io.BytesIO(); make_image(i, size=(96, 64)).save(buf, "JPEG", quality=90, **opts)
            sources.append(buf.getvalue())
        ok = errors = 0
        decoders = [get_decoder(n) for n in available_decoders()]
        for trial in range(300):
            b = bytearray(sources[trial % 3])
            kind = trial % 4
            if kind == 0:    # random bytes overwritten
                for p in rng.integers(2, len(b), 8): b[p] = int(rng.integers(256))
            elif kind == 1:  # a run of garbage in the middle
                p = int(rng.integers(2, len(b) - 40)); b[p:p + 32] = bytes(rng.integers(0, 256, 32, dtype=np.uint8))
            elif kind == 2:  # truncated anywhere
                b = b[: int(rng.integers(1, len(b)))]
            else:            # header bytes damaged
                for p in rng.integers(2, 200, 3): b[p] = int(rng.integers(256))
            for dec in decoders:
                try:
                    out = dec.decode(bytes(b))
                    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
                    ok += 1
                except DecodeError:
                    errors += 1
        print(ok, errors)
        """
    )
    proc = run_in_group([sys.executable, "-c", script], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, errors = map(int, proc.stdout.split())
    assert ok > 0 and errors > 0  # both outcomes happened: the fuzzing reached the decoders


@pytest.mark.parametrize("name", BACKENDS)
def test_decoders_are_thread_safe(name: str) -> None:
    dec = backend(name)
    datas = [encode(make_image(i, size=(120 + 8 * i, 90)), quality=85 + i % 10) for i in range(12)]
    datas += [encode(photo().convert("CMYK")), encode(photo(), "PNG"), b"", b"\xff\xd8\xff\xe0junk"]

    def run(data: bytes):
        try:
            return dec.decode(data).tobytes()
        except DecodeError as e:
            return str(e)

    serial = [run(d) for d in datas]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(run, datas * 2)) == serial * 2


@pytest.mark.parametrize("name", BACKENDS)
def test_sixteen_bit_png_keeps_the_high_byte(name: str) -> None:
    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)  # up to ~64500
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = backend(name).decode(data)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], (ramp >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


# -- Pillow's own decompression-bomb guard is left alone ------------------------------------


def test_importing_the_pil_decoder_leaves_pillows_guard_alone() -> None:
    code = textwrap.dedent(
        """
        from PIL import Image
        default = Image.MAX_IMAGE_PIXELS
        import shardpipe, shardpipe.image.decoders.pil
        from shardpipe.image.decoders import get_decoder
        get_decoder("pil")
        print(default, Image.MAX_IMAGE_PIXELS)
        """
    )
    out = run_in_group([sys.executable, "-c", code], timeout=120, check=True).stdout.split()
    assert out == [str(1024 * 1024 * 1024 // 4 // 3)] * 2


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) declares ``width`` x ``height``."""
    import zlib

    b = bytearray(encode(photo(), "PNG"))
    assert b[12:16] == b"IHDR"
    b[16:20], b[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")
    return bytes(b)


def test_png_bomb_beyond_pillows_limit_is_image_too_large() -> None:
    # 400M pixels: Pillow refuses it at open (over twice its limit) before our own check can run
    with pytest.raises(ImageTooLargeError, match=r"Pillow refuses it.*shardpipe's limit is 100000000 pixels"):
        backend("pil").decode(_png_declaring(20000, 20000))


def test_pillows_lower_limit_error_and_warning_become_image_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    dec = backend("pil")
    png = encode(photo(), "PNG")  # 19200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 19200 > 2 * 5000: DecompressionBombError
    with pytest.raises(ImageTooLargeError, match=r"limit is 100000000 pixels .*MAX_IMAGE_PIXELS is 5000"):
        dec.decode(png)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15000)  # 19200 in (15000, 30000]: a warning
    with pytest.warns(Image.DecompressionBombWarning):
        assert dec.decode(png).shape == (120, 160, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match=r"MAX_IMAGE_PIXELS is 15000"):
            dec.decode(png)


@pytest.mark.parametrize(
    "data",
    [
        small_jpeg(1),
        small_jpeg(2) + b"\x00\x01trailing",  # bytes after the end marker (cameras add them)
        small_jpeg(3)[:-2],  # no end marker: truncated
        small_jpeg(4)[:2] + b"junk" + small_jpeg(4)[2:],  # bytes between segments
        b"\xff\xd8\xff",
    ],
)
def test_jpeg_header_checks_read_any_buffer_as_they_read_bytes(data: bytes) -> None:
    """``has_end_marker`` (with its shortcut for a file that ends in its marker) and ``read_header``
    give the same answers for a read-only buffer as for bytes."""

    view = memoryview(bytearray(data)).toreadonly()
    assert has_end_marker(view) == has_end_marker(data) == (b"\xff\xd9" in data)
    assert has_end_marker(view, 4) == has_end_marker(data, 4)
    assert has_end_marker(data, len(data) - 1) is False  # the marker must lie after `after`
    try:
        want = read_header(data)
    except ValueError as e:
        with pytest.raises(ValueError, match=str(e).split("(")[0]):
            read_header(view)
    else:
        assert read_header(view) == want


def _pgm16(grey: np.ndarray, maxval: int = 65535) -> bytes:
    """A binary 16-bit PGM (Pillow opens it as 32-bit mode "I", scaled to 0..65535)."""
    h, w = grey.shape
    return b"P5 %d %d %d\n" % (w, h, maxval) + grey.astype(">u2").tobytes()


@pytest.mark.parametrize("name", BACKENDS)
def test_16_bit_images_opened_as_32_bit_keep_their_high_byte(name: str) -> None:
    """Pillow opens 16-bit PGMs (and 16-bit PNGs before 10.3) as mode "I", whose conversion to RGB
    clips at 255: the image came out white. They decode as the I;16 images do: by the high byte."""
    dec = backend(name)
    grey = np.asarray(photo((40, 30)).convert("L"))
    want = np.repeat(grey[:, :, None], 3, axis=2)
    for data in (_pgm16(grey.astype(np.uint16) * 257), _pgm16(grey.astype(np.uint16) * 4, maxval=1023)):
        assert Image.open(io.BytesIO(data)).mode == "I"
        np.testing.assert_array_equal(dec.decode(data), want)
    fused = build_image_fn(dec, RandomResizedCrop(16))(_pgm16(grey.astype(np.uint16) * 257), sample_rng(0, 0, "k"))
    assert fused.shape == (16, 16, 3) and abs(float(fused.mean()) - float(grey.mean())) < 25


@pytest.mark.parametrize("name", BACKENDS)
def test_32_bit_samples_decode_only_where_they_hold_8_bit_values(name: str) -> None:
    dec = backend(name)
    grey = np.asarray(photo((40, 30)).convert("L"))
    eight = encode(Image.fromarray(grey.astype(np.int32)), "TIFF")  # 8-bit values stored in 32 bits
    np.testing.assert_array_equal(dec.decode(eight), np.repeat(grey[:, :, None], 3, axis=2))
    wide = encode(Image.fromarray(grey.astype(np.int32) * 257), "TIFF")
    with pytest.raises(DecodeError) as e:
        dec.decode(wide)
    lo, hi = int(grey.min()) * 257, int(grey.max()) * 257
    assert str(e.value) == (
        f"TIFF of 32-bit integer samples ({lo} to {hi}): no 8-bit scale to decode it to "
        "(store it with 8 or 16 bits per sample)"
    )
    floats = encode(Image.fromarray(grey.astype(np.float32) / 255), "TIFF")  # 0..1: was black and 1 grey level
    with pytest.raises(DecodeError, match=r"^TIFF of 32-bit floating-point samples \(.* to .*\): no 8-bit scale"):
        dec.decode(floats)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_transparent_colour_key_is_black_in_every_png_mode(name: str) -> None:
    """A PNG's tRNS colour is transparent, and transparency is composited on black: that was so for
    palette images only; a grey or RGB PNG with the same key kept the key's colour."""
    dec = backend(name)
    grey = np.asarray(photo((40, 30)).convert("L"))
    key = int(grey[0, 0])
    want = np.repeat(np.where(grey == key, 0, grey)[:, :, None], 3, axis=2)
    palette = Image.fromarray(grey).convert("P")  # an index per grey level: ...
    palette.putpalette([v for level in range(256) for v in (level, level, level)])
    palette.putdata(grey.ravel().tolist())  # ... index = grey level
    rgb = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    for img, trns in ((palette, key), (Image.fromarray(grey), key), (rgb, (key, key, key))):
        np.testing.assert_array_equal(dec.decode(encode(img, "PNG", transparency=trns)), want, err_msg=img.mode)


@pytest.mark.parametrize("name", BACKENDS)
def test_exif_orientation_is_not_applied(name):
    # docs/reference.md: the CPU decoders return the pixels as stored (torchvision's decode_jpeg default)
    dec = backend(name)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored turned 90 degrees
    data = encode(photo((160, 120)), quality=90, exif=exif.tobytes())
    out = dec.decode(data)
    assert out.shape == (120, 160, 3)
    np.testing.assert_array_equal(out, pil_rgb(data))
