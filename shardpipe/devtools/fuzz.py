"""Fuzz targets: what the tar reader, the gzip path and the JPEG header parser promise on any input.

Each ``check_*`` function runs one input and raises ``AssertionError`` (or lets an
unexpected exception through) when a promise is broken:

- tar: any bytes give members or a ``ShardpipeError``; never another exception, never
  more memory than the member limit;
- gzip: a damaged tar.gz gives a ``ShardpipeError`` or exactly the original members
  (the CRC32/length trailers leave no silent corruption);
- JPEG headers: any bytes give a header whose fields are in range, or ``ValueError``.

``mutate`` makes inputs from valid seeds. The suite drives these targets with
hypothesis for a few seconds; ``tools/fuzz.py`` runs them for minutes.
"""

from __future__ import annotations

import io
import random

from shardpipe.errors import ShardpipeError
from shardpipe.format.tar.reader import TarStream
from shardpipe.image.decoders.jpeg import read_header

#: the member limit the targets read with: inputs are small, so 1 MiB is plenty
FUZZ_MEMBER_LIMIT = 1 << 20

Members = list[tuple[str, bytes]]


def read_tar(data: bytes, max_member_size: int = FUZZ_MEMBER_LIMIT) -> Members:
    """Every member of the tar (or tar.gz) ``data``, read as the pipeline reads it."""
    tar = TarStream(io.BytesIO(data), "fuzz.tar", max_member_size=max_member_size)
    members = []
    while (m := tar.next_member()) is not None:
        assert len(m[1]) <= max_member_size, f"member of {len(m[1])} bytes passed the limit"
        members.append(m)
    return members


def check_tar(data: bytes) -> Members | None:
    """Members, or None when the reader refused the input with a shardpipe error."""
    try:
        return read_tar(data)
    except ShardpipeError:
        return None


def check_gzip(data: bytes, original: Members) -> None:
    """A mutated tar.gz reads back as ``original`` or not at all."""
    got = check_tar(data)
    assert got is None or got == original, "a damaged gzip shard read back different members without an error"


def check_jpeg(data: bytes) -> None:
    """Header fields in range, or ValueError."""
    try:
        h = read_header(data)
    except ValueError:
        return
    assert 0 < h.width <= 0xFFFF and 0 <= h.height <= 0xFFFF, (h.width, h.height)
    assert 1 <= h.components <= 255 and len(h.sampling) == h.components, h
    assert 2 <= h.scan_offset < len(data) and data[h.scan_offset : h.scan_offset + 2] == b"\xff\xda", h


_INTERESTING = [b"\x00", b"\xff", b"\x80", b"7", b" ", b"0", b"\x1f\x8b", b"\xff\xd8", b"\xff\xda", b"\xff\xc0"]


def mutate(data: bytes, rng: random.Random, rounds: int = 3) -> bytes:
    """``data`` with a few random edits: flipped bits, interesting bytes, cuts, copies, size fields."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        if not buf:
            buf += rng.randbytes(rng.randint(1, 64))
            continue
        op = rng.randrange(7)
        i = rng.randrange(len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            token = rng.choice(_INTERESTING)
            buf[i : i + len(token)] = token
        elif op == 2:
            del buf[rng.randrange(len(buf) + 1) :]
        elif op == 3:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j : j + rng.randint(1, 600)]
        elif op == 4:
            del buf[i : i + rng.randint(1, 600)]
        elif op == 5:  # a tar size field (offset 124 in a 512-byte block) with a large octal or base-256 value
            start = i - i % 512 + 124
            value = rng.choice(
                [b"77777777777\0", b"\x80" + rng.randbytes(11), b"\xff" * 12, b"%011o\0" % rng.getrandbits(33)]
            )
            buf[start : start + 12] = value
            block = buf[start - 124 : start + 388]
            if len(block) == 512:  # a valid checksum, so the size field itself is what gets tested
                block[148:156] = b"        "
                buf[start + 24 : start + 32] = b"%06o\0 " % sum(block)
        else:
            buf[i : i + 2] = rng.randbytes(2)
    return bytes(buf)


def seed_inputs() -> dict[str, list[bytes]]:
    """Small valid inputs to mutate: plain and pax tars, a tar.gz, baseline/progressive/grey JPEGs."""
    from PIL import Image

    from shardpipe.format.tar.writer import TarWriter

    def tar(compress: str | None, key: str) -> bytes:
        out = io.BytesIO()
        w = TarWriter(out, compress)
        w.write({"__key__": key, "cls": 3, "txt": "x" * 700})
        w.write({"__key__": key + "_2", "bin": bytes(range(256))})
        w.close()
        return out.getvalue()

    def jpeg(mode: str, **kw: object) -> bytes:
        img = Image.new(mode, (19, 11), 90 if mode == "L" else (200, 30, 60))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=80, **kw)
        return out.getvalue()

    return {
        "tar": [tar(None, "a/k"), tar(None, "d" * 120 + "/ü")],  # the second needs pax headers
        "gzip": [tar("gz", "a/k")],
        "jpeg": [jpeg("RGB"), jpeg("RGB", progressive=True), jpeg("L"), jpeg("RGB", subsampling=0)],
    }
