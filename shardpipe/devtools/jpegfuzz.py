"""Mutated JPEGs for fuzzing decoders: bit flips, truncations, header field changes.

``mutants(seeds, n, rng)`` yields ``n`` damaged copies of the seed JPEGs; ``check_decoder``
feeds each to the native decoder (whole image, a region inside it, a crop, a random DCT
scale) and sorts the outcomes: decoded, ``DecodeError`` (the only acceptable failure), or anything else (a bug).
``restart_mutants`` also damages restart markers (numbering, missing, DRI, interval lengths).
A crash would end the process: ``tools/fuzz_native.py`` runs chunks in child processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np

from shardpipe.augment.geometry import random_resized_crop_box
from shardpipe.errors import DecodeError

_SOF = (0xC0, 0xC1, 0xC2)


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset of the marker, segment length) of the header segments, up to the scan."""
    out = []
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        out.append((marker, pos, length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def _set16(buf: bytearray, at: int, value: int) -> None:
    if at + 1 < len(buf):
        buf[at], buf[at + 1] = (value >> 8) & 0xFF, value & 0xFF


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage of ``data`` (a valid JPEG)."""
    buf = bytearray(data)
    kind = int(rng.integers(0, 8))
    segs = _segments(data)
    header_end = segs[-1][1] if segs else min(len(buf), 600)
    if kind == 0:  # bit flips anywhere
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(buf)))
            buf[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # bit flips in the header
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(0, max(1, header_end)))
            buf[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == 2:  # truncation
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    elif kind == 3:  # frame header fields: size, components, sampling, table ids
        frames = [s for s in segs if s[0] in _SOF]
        if frames:
            _, at, _ = frames[0]
            field = int(rng.integers(0, 5))
            values = (0, 1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 4095, 16384, 65535)
            if field == 0:
                _set16(buf, at + 5, int(rng.choice(values)))  # height
            elif field == 1:
                _set16(buf, at + 7, int(rng.choice(values)))  # width
            elif field == 2:
                buf[at + 9] = int(rng.integers(0, 6))  # number of components
            elif field == 3:
                comp = int(rng.integers(0, 3))
                buf[min(len(buf) - 1, at + 11 + 3 * comp)] = int(rng.integers(0, 256))  # sampling factors
            else:
                comp = int(rng.integers(0, 3))
                buf[min(len(buf) - 1, at + 12 + 3 * comp)] = int(rng.integers(0, 6))  # quant table id
    elif kind == 4:  # a segment's length field
        if segs:
            _, at, _ = segs[int(rng.integers(0, len(segs)))]
            _set16(buf, at + 2, int(rng.integers(0, 65536)))
    elif kind == 5:  # a span overwritten with random bytes or zeros
        at = int(rng.integers(0, len(buf)))
        n = int(rng.integers(1, 64))
        fill = rng.integers(0, 256, n, dtype=np.uint8).tobytes() if rng.random() < 0.5 else bytes(n)
        buf[at : at + n] = fill
    elif kind == 6:  # markers planted in the entropy-coded data
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(header_end, len(buf) - 1)) if header_end < len(buf) - 1 else 0
            buf[at : at + 2] = bytes((0xFF, int(rng.choice((0xD0, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0x00, 0xFF)))))
    else:  # a header segment dropped or repeated
        if len(segs) > 1:
            marker, at, length = segs[int(rng.integers(0, len(segs) - 1))]
            seg = bytes(buf[at : at + 2 + length])
            if rng.random() < 0.5:
                del buf[at : at + 2 + length]
            else:
                buf[at:at] = seg
    return bytes(buf)


def _restart_markers(data: bytes, start: int) -> list[int]:
    """Offsets of the RSTn markers (FF D0..D7) after ``start``."""
    out, pos = [], data.find(b"\xff", start)
    while 0 <= pos < len(data) - 1:
        if 0xD0 <= data[pos + 1] <= 0xD7:
            out.append(pos)
        pos = data.find(b"\xff", pos + 1)
    return out


def mutate_restarts(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage of ``data``'s restart intervals: a marker renumbered, dropped or
    repeated, an interval cut short or lengthened, or the DRI segment's interval changed."""
    buf = bytearray(data)
    segs = _segments(data)
    scan = segs[-1][1] + 2 + segs[-1][2] if segs and segs[-1][0] == 0xDA else 2
    rst = _restart_markers(data, scan)
    kind = int(rng.integers(0, 6))
    if kind == 0 or not rst:  # the restart interval: 0, one off, a non-divisor, huge
        dri = [s for s in segs if s[0] == 0xDD]
        if dri:
            old = (buf[dri[0][1] + 4] << 8) | buf[dri[0][1] + 5]
            _set16(buf, dri[0][1] + 4, int(rng.choice((0, 1, 3, old - 1, old + 1, 2 * old, 65535))) & 0xFFFF)
        return bytes(buf)
    at = rst[int(rng.integers(0, len(rst)))]
    if kind == 1:  # wrong number
        buf[at + 1] = 0xD0 | ((buf[at + 1] + int(rng.integers(1, 8))) & 7)
    elif kind == 2:  # a marker missing: two intervals run together
        del buf[at : at + 2]
    elif kind == 3:  # a marker repeated: an empty interval
        buf[at:at] = buf[at : at + 2]
    elif kind == 4:  # an interval ends early
        cut = int(rng.integers(1, 40))
        del buf[max(scan, at - cut) : at]
    else:  # an interval runs on
        buf[at:at] = rng.integers(0, 255, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
    return bytes(buf)


def restart_mutants(seeds: Sequence[bytes], n: int, rng: np.random.Generator) -> Iterator[bytes]:
    """``n`` damaged copies of restart-marked ``seeds``: half with damaged restart markers
    (:func:`mutate_restarts`), half with :func:`mutate`'s damage."""
    for i in range(n):
        seed = seeds[i % len(seeds)]
        yield mutate_restarts(seed, rng) if rng.random() < 0.5 else mutate(seed, rng)


def mutants(seeds: Sequence[bytes], n: int, rng: np.random.Generator) -> Iterator[bytes]:
    """``n`` mutated copies of the ``seeds``; some get two mutations."""
    for i in range(n):
        data = mutate(seeds[i % len(seeds)], rng)
        if rng.random() < 0.2 and len(data) > 4:
            data = mutate(data, rng)
        yield data


def check_decoder(
    decoder: object, cases: Iterator[bytes], rng: np.random.Generator, bugs: list[bytes] | None = None
) -> Counter:
    """Run each case through ``decoder`` (a ``NativeDecoder``); count the outcomes.

    Keys: ``decoded``, ``DecodeError``, ``region decoded`` / ``region DecodeError`` (the raw
    C call, no fallback), and ``BUG <type>: <message>`` for anything else (the case's bytes
    are appended to ``bugs`` when given).
    """
    from shardpipe.image.decoders.jpeg import read_header

    out: Counter = Counter()
    for data in cases:
        try:  # the raw call: libjpeg's verdict, no PIL fallback
            try:
                hdr = read_header(data)
                w, h = max(1, min(hdr.width, 512)), max(1, min(hdr.height or 1, 512))
            except ValueError:
                w, h = 16, 16
            num = int(rng.integers(1, 9))
            w, h = -(-w * num // 8), -(-h * num // 8)
            decoder.decode_region(data, (num, 8), 0, 0, w, h)  # type: ignore[attr-defined]
            out["region decoded"] += 1
        except DecodeError:
            out["region DecodeError"] += 1
        except Exception as e:  # noqa: BLE001 - what the fuzzer looks for
            out[f"BUG region {type(e).__name__}: {str(e)[:80]}"] += 1
            if bugs is not None:
                bugs.append(data)
        try:
            hdr = read_header(data)
        except ValueError:
            hdr = None
        try:  # a raw region inside the image: what the restart-interval path takes
            if hdr is None:
                raise DecodeError("no header")
            num = int(rng.integers(1, 9))
            sw, sh = -(-min(hdr.width, 4096) * num // 8), -(-max(1, min(hdr.height, 4096)) * num // 8)
            x, y = int(rng.integers(0, sw)), int(rng.integers(0, sh))
            decoder.decode_region(  # type: ignore[attr-defined]
                data, (num, 8), x, y, int(rng.integers(1, sw - x + 1)), int(rng.integers(1, sh - y + 1))
            )
            out["inner region decoded"] += 1
        except DecodeError:
            out["inner region DecodeError"] += 1
        except Exception as e:  # noqa: BLE001 - what the fuzzer looks for
            out[f"BUG inner region {type(e).__name__}: {str(e)[:80]}"] += 1
            if bugs is not None:
                bugs.append(data)
        try:  # the backend, as the fused path calls it: size, a box inside, native crop or PIL
            width, height = decoder.size(data)  # type: ignore[attr-defined]
            box = random_resized_crop_box(height, width, rng)
            img = decoder.decode_crop(data, box, (32, 32))  # type: ignore[attr-defined]
            if img.shape != (32, 32, 3) or img.dtype != np.uint8:
                out[f"BUG crop shape {img.shape} {img.dtype}"] += 1
            else:
                out["decoded"] += 1
        except DecodeError:
            out["DecodeError"] += 1
        except Exception as e:  # noqa: BLE001
            out[f"BUG crop {type(e).__name__}: {str(e)[:80]}"] += 1
            if bugs is not None:
                bugs.append(data)
    return out
