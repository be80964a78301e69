"""shardpipe.image.size.image_size: a JPEG's ``(width, height)`` from its SOF marker without PIL, anything
else (and a JPEG whose header gives no size) through PIL's lazy open, with PIL's verdict on bad data."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shardpipe.errors import DecodeError
from shardpipe.image.decoders import pil
from shardpipe.image.size import image_size


def encode(width: int, height: int, fmt: str = "JPEG", mode: str = "RGB", **options) -> bytes:
    pixels = (np.arange(width * height * 3) % 251).astype(np.uint8).reshape(height, width, 3)
    img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def sof_offset(data: bytes) -> int:
    """Where the baseline frame header (FF C0) starts."""
    at = data.find(b"\xff\xc0")
    assert at > 0
    return at


@pytest.fixture
def pil_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Each call image_size makes to PIL (``pil.open_image``), which still answers."""
    calls: list[bytes] = []
    real = pil.open_image

    def spy(data: bytes) -> Image.Image:
        calls.append(bytes(data))
        return real(data)

    monkeypatch.setattr(pil, "open_image", spy)
    return calls


@pytest.mark.parametrize(
    ("width", "height", "options"),
    [
        (7, 3, {}),
        (3, 7, {}),
        (5, 1, {}),  # one row: a height of 1 is a size the header gives
        (1, 5, {}),
        (1, 1, {}),
        (300, 200, {"progressive": True}),
        (33, 17, {"subsampling": 0}),
    ],
)
def test_a_jpeg_size_comes_from_its_frame_header_without_pil(
    width: int, height: int, options: dict, pil_calls: list[bytes]
) -> None:
    data = encode(width, height, **options)
    assert image_size(data) == (width, height)
    assert image_size(memoryview(data)) == (width, height)
    assert image_size(bytearray(data)) == (width, height)
    assert pil_calls == []


def test_a_grey_jpeg_size_comes_from_its_frame_header(pil_calls: list[bytes]) -> None:
    assert image_size(encode(9, 4, mode="L")) == (9, 4)
    assert pil_calls == []


def test_the_frame_header_is_read_not_what_pil_would_say(pil_calls: list[bytes]) -> None:
    # the SOF's height and width edited to 2x513: PIL would agree, but it is never asked
    data = bytearray(encode(8, 8))
    at = sof_offset(bytes(data))
    data[at + 5 : at + 9] = (2).to_bytes(2, "big") + (513).to_bytes(2, "big")
    assert image_size(bytes(data)) == (513, 2)
    assert pil_calls == []


def test_a_jpeg_of_height_0_goes_to_pil_and_gets_its_verdict(pil_calls: list[bytes]) -> None:
    # height 0 in the frame header: the height comes later (a DNL marker), so the header has no size
    data = bytearray(encode(5, 1))
    at = sof_offset(bytes(data))
    data[at + 5 : at + 7] = b"\x00\x00"
    data = bytes(data)
    with pytest.raises(DecodeError, match=r"^not a recognised image format \(\d+ bytes starting b'\\xff\\xd8\\xff"):
        image_size(data)
    assert pil_calls == [data]


def test_a_jpeg_whose_header_does_not_parse_gets_pils_verdict(pil_calls: list[bytes]) -> None:
    data = encode(7, 3)
    cut = data[: sof_offset(data) + 4]  # ends inside the frame header
    with pytest.raises(DecodeError, match=r"^corrupt JPEG header: "):
        image_size(cut)
    assert pil_calls == [cut]
    with pytest.raises(DecodeError, match=r"^not a recognised image format \(3 bytes starting b'\\xff\\xd8\\xff'\)$"):
        image_size(data[:3])


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats_get_their_size_from_pil(fmt: str, pil_calls: list[bytes]) -> None:
    data = encode(7, 3, fmt)
    assert image_size(data) == (7, 3)
    assert pil_calls == [data]


def test_unreadable_data_gets_pils_error(pil_calls: list[bytes]) -> None:
    with pytest.raises(DecodeError, match=r"^empty image data \(0 bytes\)$"):
        image_size(b"")
    with pytest.raises(DecodeError, match=r"^not a recognised image format \(11 bytes starting b'hello wo'\)$"):
        image_size(b"hello world")
    assert pil_calls == [b"", b"hello world"]
