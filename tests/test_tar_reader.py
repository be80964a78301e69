"""The tar reader's parts on their own: resume offsets after skips, pax records, base-256 numbers."""

from __future__ import annotations

import io
import tarfile

import pytest

from shardpipe import CorruptShardError, TruncatedShardError
from shardpipe.format.tar.reader import TarStream, _octal, _parse_pax, header_sum

SIZES = [0, 1, 511, 512, 513, 3000, 7]


class CountingStream(io.RawIOBase):
    """A stream over ``data`` that logs each read and seek; ``seekable`` as asked."""

    def __init__(self, data: bytes, seekable: bool):
        self._buf = io.BytesIO(data)
        self._seekable = seekable
        self.bytes_read = 0
        self.seeks: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def read(self, n: int = -1) -> bytes:
        data = self._buf.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        self.seeks.append((offset, whence))
        return self._buf.seek(offset, whence)


def tar_of_sizes(sizes: list[int]) -> tuple[bytes, list[tarfile.TarInfo]]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"s{i:02d}.bin")
            info.size = size
            tf.addfile(info, io.BytesIO(bytes([i + 1]) * size))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return data, tf.getmembers()


@pytest.mark.parametrize("seekable", [True, False])
def test_offsets_after_skipping_are_the_next_headers(seekable: bool):
    data, members = tar_of_sizes(SIZES)
    stream = CountingStream(data, seekable)
    tar = TarStream(stream, "mem.tar", compressed=False)
    read = {1, 4}  # members read; the others skipped
    for i, member in enumerate(members):
        assert tar.offset == member.offset, f"before member {i}"
        assert tar.next_header() == (member.name, member.size)
        if i in read:
            assert tar.read_data() == bytes([i + 1]) * member.size
        else:
            tar.skip_data()
        after = members[i + 1].offset if i + 1 < len(members) else member.offset_data + -(-member.size // 512) * 512
        assert tar.offset == after, f"after member {i}"
    assert tar.next_header() is None
    padded = [m.size + -m.size % 512 for m in members]
    headers = 512 * (len(members) + 1)  # each member's header and the end-of-archive block
    if seekable:  # skipped members were seeked over, forwards by their padded size, never read
        assert stream.seeks == [(padded[i], 1) for i in range(len(members)) if i not in read]
        assert stream.bytes_read == headers + sum(padded[i] for i in read)
    else:
        assert stream.seeks == [] and stream.bytes_read == headers + sum(padded)


def test_resuming_at_an_offset_seen_after_a_skip_continues_with_the_next_member():
    data, members = tar_of_sizes(SIZES)
    tar = TarStream(io.BytesIO(data), "mem.tar", compressed=False)
    tar.next_header()
    tar.skip_data()
    tar.next_header()
    tar.skip_data()
    resume = tar.offset
    assert resume == members[2].offset
    rest = TarStream(io.BytesIO(data[resume:]), "mem.tar", resume, compressed=False)
    assert rest.next_member() == (members[2].name, bytes([3]) * members[2].size)
    assert rest.offset == members[3].offset


def test_next_header_skips_an_unread_member():
    data, members = tar_of_sizes(SIZES)
    tar = TarStream(io.BytesIO(data), "mem.tar", compressed=False)
    names = []
    while (h := tar.next_header()) is not None:  # no read_data / skip_data between the calls
        names.append(h[0])
    assert names == [m.name for m in members]


# -- pax records: each check on its own ----------------------------------------------------
def test_pax_records_parse():
    one = b"12 path=abc\n"
    two = b"16 size=1234567\n"
    assert _parse_pax(one + two) == {"path": "abc", "size": "1234567"}
    assert _parse_pax(b"") == {}
    assert _parse_pax(b"8 a=b=c\n") == {"a": "b=c"}


@pytest.mark.parametrize(
    "record, message",
    [
        (b"2 ", "malformed pax record at byte 0"),  # the length ends at the space: no key at all
        (b"3 \n", "pax record without '=' at byte 0"),  # one byte after the space: a newline, no '='
        (b"20 path=a\n", "malformed pax record at byte 0"),  # the length runs past the data (newline intact)
        (b"9 path=ab", "malformed pax record at byte 0"),  # the length fits, the newline is missing
        (b"12 path=abc\n12 path=abc!", "malformed pax record at byte 12"),  # the second record is bad
        (b"7 path\n", "pax record without '=' at byte 0"),
        # int() allows the newline in "2\n": the length ends at the space, on a newline
        (b"2\n =x\n", "malformed pax record at byte 0"),
    ],
)
def test_pax_record_checks(record: bytes, message: str):
    with pytest.raises(ValueError, match=f"^{message}$"):
        _parse_pax(record)


# -- base-256 numbers (GNU): the sign is the first byte only ------------------------------------
@pytest.mark.parametrize("n", [0, 1, 8**11, 2**40, 2**87, -1, -2, -256, -(2**40) - 3, -(2**88)])
def test_base256_round_trips_tarfiles_encoding(n: int):
    field = tarfile.itn(n, 12, tarfile.GNU_FORMAT)
    assert _octal(field) == n
    assert _octal(field) == (int.from_bytes(field, "big", signed=True) if field[0] == 0xFF else n)


def test_base256_sign_byte_alone_decides_the_sign():
    rest = bytes(10) + b"\x05"
    assert _octal(b"\x80" + rest) == 5
    assert _octal(b"\xff" + rest) == 5 - 2**88  # the same 11 bytes, negative
    assert _octal(b"\x80" + b"\xff" * 11) == 2**88 - 1  # all-ones after a positive marker: huge, not -1


def test_octal_fields():
    assert _octal(b"0000644\0") == 0o644
    assert _octal(b"  12 \0\0\0") == 0o12
    assert _octal(bytes(8)) == 0
    with pytest.raises(ValueError):
        _octal(b"9\0")


def test_a_base256_size_is_read():
    info = tarfile.TarInfo("big.bin")
    info.size = 8**11 + 3  # past 11 octal digits: GNU writes base-256
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    assert header[124] == 0x80
    tar = TarStream(io.BytesIO(bytes(header) + bytes(1024)), "mem.tar", max_member_size=None)
    assert tar.next_header() == ("big.bin", 8**11 + 3)


def test_a_bad_checksum_names_the_offset():
    data, members = tar_of_sizes([3, 4])
    damaged = bytearray(data)
    damaged[members[1].offset + 148] ^= 0x01  # the second header's checksum field
    tar = TarStream(io.BytesIO(bytes(damaged)), "mem.tar")
    assert tar.next_member() == ("s00.bin", b"\x01" * 3)
    with pytest.raises(
        CorruptShardError, match=rf"^not a tar header \(bad checksum\) in shard mem.tar at byte {members[1].offset}$"
    ):
        tar.next_member()


@pytest.mark.parametrize("fill", ["random", "zeros", "ones", "high"])
def test_the_header_byte_sum_is_exact(fill):
    import random

    blocks = {
        "random": [random.Random(i).randbytes(512) for i in range(200)],
        "zeros": [bytes(512)],
        "ones": [b"\xff" * 512, b"\xff" * 256 + bytes(256), bytes(256) + b"\xff" * 256],
        "high": [bytes([200 + i % 56 for i in range(512)])],
    }[fill]
    for block in blocks:
        assert header_sum(block) == sum(block)


def test_a_checksum_one_adler_modulus_off_is_refused():
    """The sum is exact, not modulo 65,521 (the modulus of the Adler-32 halves it is made of)."""
    data, members = tar_of_sizes([3])
    header = bytearray(data[:512])
    stored = int(header[148:154], 8)
    for wrong in (stored + 65521, stored - 65521, stored + 1):
        if wrong < 0:
            continue
        header[148:156] = b"%06o\0 " % wrong
        tar = TarStream(io.BytesIO(bytes(header) + data[512:]), "mem.tar")
        with pytest.raises(CorruptShardError, match=r"^not a tar header \(bad checksum\) in shard mem.tar at byte 0$"):
            tar.next_member()
    header[148:156] = b"%06o\0 " % stored
    assert TarStream(io.BytesIO(bytes(header) + data[512:]), "mem.tar").next_member() == ("s00.bin", b"\x01" * 3)


def test_pax_keys_and_values_that_are_not_utf8_are_kept_as_surrogates():
    assert _parse_pax(b"15 ab\xffcd=value\n") == {"ab\udcffcd": "value"}
    assert _parse_pax(b"12 path=x\xfey\n") == {"path": "x\udcfey"}


def test_a_gzip_stream_damaged_before_the_resume_point_names_the_resume():
    import gzip

    data, members = tar_of_sizes([70_000, 70_000])
    packed = gzip.compress(data)
    resume_at = members[1].offset  # the second member's header, past the first's data
    damaged = bytearray(packed)
    damaged[10] = 0xFF  # the first deflate block's header: block type 3, which does not exist
    tar = TarStream(io.BytesIO(bytes(damaged)), "mem.tar.gz", 0, compressed=True)
    with pytest.raises(CorruptShardError, match=r"^bad gzip data in shard mem.tar.gz while reading resume: "):
        tar.skip_to(resume_at)
    cut = TarStream(io.BytesIO(packed[: len(packed) // 3]), "mem.tar.gz", 0, compressed=True)
    with pytest.raises(TruncatedShardError, match=r"^truncated gzip in shard mem.tar.gz while reading resume: "):
        cut.skip_to(resume_at)


# -- names, messages and the stream wrapper ----------------------------------------------------
def raw_header(name: bytes, size: int = 0) -> bytes:
    """A ustar header block with the raw ``name`` bytes (any length up to 100, any bytes)."""
    info = tarfile.TarInfo("x")
    info.size = size
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[0:100] = name.ljust(100, b"\0")
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_a_name_filling_all_100_bytes_keeps_its_last_byte():
    name = b"k" * 96 + b".jpg"
    assert len(name) == 100
    tar = TarStream(io.BytesIO(raw_header(name, 3) + b"abc".ljust(512, b"\0") + bytes(1024)), "mem.tar")
    assert tar.next_member() == (name.decode(), b"abc")


def test_names_and_pax_values_that_are_not_utf8_survive_as_surrogates():
    tar = TarStream(io.BytesIO(raw_header(b"k\xff.bin") + bytes(1024)), "mem.tar")
    assert tar.next_member() == ("k\udcff.bin", b"")
    assert _parse_pax(b"12 path=a\xffb\n") == {"path": "a\udcffb"}


def test_sizes_above_a_gib_are_told_in_gib():
    info = tarfile.TarInfo("big.bin")
    info.size = 3 << 29  # 1.5 GiB
    data = info.tobuf(tarfile.GNU_FORMAT) + bytes(1024)
    with pytest.raises(CorruptShardError, match=r"declares 1610612736 bytes \(1\.5 GiB\), above max_member_size=1024"):
        TarStream(io.BytesIO(data), "mem.tar", max_member_size=1024).next_member()
    info.size = (1 << 30) - (1 << 20)
    data = info.tobuf(tarfile.GNU_FORMAT) + bytes(1024)
    with pytest.raises(CorruptShardError, match=r"declares 1072693248 bytes \(1023\.0 MiB\), above"):
        TarStream(io.BytesIO(data), "mem.tar", max_member_size=1024).next_member()


def test_a_gzip_cut_inside_a_header_names_what_it_was_reading():
    import gzip

    data = gzip.compress(raw_header(b"a.txt", 700) + bytes(1024) + bytes(1024))
    with pytest.raises(TruncatedShardError, match=r"^truncated gzip in shard mem.tar.gz while reading a tar header: "):
        TarStream(io.BytesIO(data[:20]), "mem.tar.gz").next_member()


def test_timed_reader_seeks_relative_to_the_bytes_it_handed_out():
    from shardpipe.format.tar.reader import _TimedReader

    raw = io.BytesIO(b"abcdef")
    reader = _TimedReader(raw, prefix=raw.read(2))  # what TarStream does to sniff gzip
    assert reader.seek(1, 1) == 1  # logical position 1: the prefix was not handed out yet
    assert reader.read(2) == b"bc"
    reader = _TimedReader(raw := io.BytesIO(b"abcdef"), prefix=raw.read(2))
    assert reader.read(1) == b"a" and reader.read(3) == b"bcd" and reader.read() == b"ef"


# one member s00.bin of 1000 bytes: header 0-511, data 512-1511, padding 1512-1535, then the next header
@pytest.mark.parametrize(
    "cut, message",
    [
        (1200, "ends inside member 's00.bin' (header at byte 0) at byte 1200"),
        (1511, "ends inside member 's00.bin' (header at byte 0) at byte 1511"),
        (1512, "ends inside the padding of member 's00.bin' (header at byte 0) at byte 1512"),
        (1530, "ends inside the padding of member 's00.bin' (header at byte 0) at byte 1530"),
        (1636, "ends at byte 1636 without the end-of-archive marker"),
    ],
)
@pytest.mark.parametrize("seekable", [True, False])
def test_a_cut_after_a_skipped_member_is_told_where_it_really_ends(cut: int, message: str, seekable: bool):
    data, _ = tar_of_sizes([1000, 10])
    tar = TarStream(CountingStream(data[:cut], seekable), "mem.tar", compressed=False)
    assert tar.next_header() == ("s00.bin", 1000)
    with pytest.raises(TruncatedShardError) as e:
        tar.skip_data()  # a seek succeeds past the end: the cut shows at the next header
        tar.next_header()
    assert str(e.value) == f"truncated tar: shard mem.tar {message}"


def test_a_seekable_stream_shorter_than_a_header_is_not_inside_a_member():
    tar = TarStream(CountingStream(bytes(100), True), "mem.tar", compressed=False)
    with pytest.raises(TruncatedShardError) as e:
        tar.next_header()
    assert str(e.value) == "truncated tar: shard mem.tar ends at byte 100 without the end-of-archive marker"


@pytest.mark.parametrize("seekable", [True, False])
def test_skipping_twice_steps_over_the_member_once(seekable: bool):
    data, members = tar_of_sizes([1000, 10])
    tar = TarStream(CountingStream(data, seekable), "mem.tar", compressed=False)
    tar.next_header()
    tar.skip_data()
    tar.skip_data()
    assert tar.offset == members[1].offset
    assert tar.next_member() == ("s01.bin", bytes([2]) * 10)


def test_a_member_size_limit_of_zero_allows_only_empty_members():
    data, _ = tar_of_sizes([0, 1])
    tar = TarStream(io.BytesIO(data), "mem.tar", compressed=False, max_member_size=0)
    assert tar.next_member() == ("s00.bin", b"")
    with pytest.raises(CorruptShardError):
        tar.next_member()
    with pytest.raises(ValueError, match=r"^max_member_size must be >= 0 or None, not -1$"):
        TarStream(io.BytesIO(data), "mem.tar", max_member_size=-1)


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize(
    "cut, inside", [(1200, "member"), (1512, "the padding of member"), (1530, "the padding of member")]
)
def test_a_cut_while_reading_a_member_names_the_byte_where_it_ends(cut: int, inside: str, seekable: bool):
    data, _ = tar_of_sizes([1000, 10])
    tar = TarStream(CountingStream(data[:cut], seekable), "mem.tar", compressed=False)
    with pytest.raises(TruncatedShardError) as e:
        tar.next_member()
    assert (
        str(e.value) == f"truncated tar: shard mem.tar ends inside {inside} 's00.bin' (header at byte 0) at byte {cut}"
    )


def test_read_seconds_count_only_the_time_spent_reading():
    import time

    data, _ = tar_of_sizes([1000, 10])
    t0 = time.perf_counter()
    tar = TarStream(io.BytesIO(data), "mem.tar")  # sniffs the gzip magic: a prefix read later
    while tar.next_member():
        pass
    elapsed = time.perf_counter() - t0
    assert 0 < tar.read_seconds <= elapsed


def test_the_timed_reader_returns_its_sniffed_prefix_first_whatever_the_read_size():
    from shardpipe.format.tar.reader import _TimedReader

    def sniffed() -> _TimedReader:
        raw = io.BytesIO(b"abcdef")
        return _TimedReader(raw, prefix=raw.read(2))  # as TarStream does: the first bytes, already read

    assert sniffed().read() == b"abcdef" and sniffed().read(-1) == b"abcdef"
    r = sniffed()
    assert [r.read(1), r.read(3), r.read(5)] == [b"a", b"bcd", b"ef"]
    r = sniffed()
    assert r.seek(1, 1) == 1 and r.read() == b"bcdef"  # a relative seek from the logical start


def test_a_stream_resumed_at_its_very_end_has_no_member_to_be_inside():
    stream = io.BytesIO(bytes(512))
    stream.seek(512)
    tar = TarStream(stream, "mem.tar", 512, compressed=False)
    with pytest.raises(TruncatedShardError) as e:
        tar.next_header()
    assert str(e.value) == "truncated tar: shard mem.tar ends at byte 512 without the end-of-archive marker"
