"""TarWriter on its own: what write() returns and counts, gzip headers and levels, refusals by message."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from shardpipe.format.fields import encode_field
from shardpipe.format.tar.reader import TarStream
from shardpipe.format.tar.writer import TarWriter

SAMPLES = [
    {"__key__": "a", "jpg": b"\xff\xd8" + bytes(range(256)) * 40, "cls": 3, "json": {"w": 1}},
    {"__key__": "b", "txt": "hello " * 500},
]


def _write(out, **kw) -> tuple[TarWriter, list[int]]:
    w = TarWriter(out, **kw)
    returned = [w.write(s) for s in SAMPLES]
    w.close()
    return w, returned


def test_write_returns_and_counts_the_member_bytes_of_every_field():
    w, returned = _write(io.BytesIO())
    expected = [sum(len(encode_field(k, v)) for k, v in s.items() if not k.startswith("__")) for s in SAMPLES]
    assert returned == expected  # the first sample has three fields: all of them count
    assert w.payload == sum(expected) and w.samples == 2


def test_a_gzip_shard_names_no_file_and_no_time_whatever_it_is_written_to(tmp_path: Path):
    memory = io.BytesIO()
    _write(memory, compress="gz")
    with open(tmp_path / "named.tgz", "wb") as f:  # a real file: GzipFile would store its name
        _write(f, compress="gz")
    data = (tmp_path / "named.tgz").read_bytes()
    assert data == memory.getvalue()
    assert data[3] == 0 and data[4:8] == bytes(4)  # FLG: no FNAME, no FEXTRA, no comment; MTIME 0


def test_the_compression_level_is_the_one_asked_for():
    by_level = {}
    for level in (1, 6, 9):
        out = io.BytesIO()
        _write(out, compress="gz", level=level)
        by_level[level] = out.getvalue()
    plain = io.BytesIO()
    _write(plain)
    for level, data in by_level.items():
        assert gzip.decompress(data) == plain.getvalue()
        assert data[8] == {1: 4, 6: 0, 9: 2}[level]  # XFL: 4 fastest, 2 best, 0 otherwise
    assert len(by_level[1]) > len(by_level[9])


def test_a_key_that_is_not_utf8_keeps_its_bytes_through_the_tar():
    out = io.BytesIO()
    w = TarWriter(out)
    w.write({"__key__": "caf\udce9", "txt": "x"})  # a Latin-1 name as Python reads it from a file system
    w.close()
    out.seek(0)
    assert TarStream(out, "x.tar").next_header() == ("caf\udce9.txt", 1)


def test_refusals_say_what_is_wrong():
    with pytest.raises(ValueError) as e:
        TarWriter(io.BytesIO(), compress="zstd")
    assert str(e.value) == "compress must be None or 'gz', not 'zstd'"
    w = TarWriter(io.BytesIO())
    with pytest.raises(ValueError) as e:
        w.write({"__key__": "k", "a\\b": b"x"})
    assert str(e.value) == (
        "field name 'a\\\\b' of sample 'k' must be a lower-case extension without '/', "
        "backslashes or control characters"
    )
    assert w.samples == 0 and w.payload == 0 and w.tar_size == 0


def test_gzip_writer_names_no_file_even_over_a_named_one(tmp_path: Path):
    from shardpipe.format.tar.writer import gzip_writer

    with open(tmp_path / "tmp-123.part", "wb") as f:  # restart writes through a temporary file like this
        with gzip_writer(f, level=6) as gz:
            gz.write(b"x" * 1000)
    data = (tmp_path / "tmp-123.part").read_bytes()
    assert data[3] == 0 and b"tmp-123" not in data and gzip.decompress(data) == b"x" * 1000
