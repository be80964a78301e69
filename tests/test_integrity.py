"""Hostile and damaged shards: size fields never drive an allocation, gzip trailers are
checked, shards are compared with their manifest entries, and keys cannot escape."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

import shardpipe
from shardpipe import CorruptShardError, TruncatedShardError
from shardpipe.format.tar.reader import MAX_MEMBER_SIZE, MAX_TAIL, TarStream

from .helpers import make_samples, write_manifest_dataset, write_shards

GiB = 1 << 30
MiB = 1 << 20


def member_header(name: str, size: int, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """Header block(s) of a regular member declaring ``size`` bytes (GNU base-256 or pax for big sizes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def read_members(data: bytes, url: str = "mem.tar", **kw) -> list[tuple[str, bytes]]:
    tar = TarStream(io.BytesIO(data), url, **kw)
    out = []
    while (m := tar.next_member()) is not None:
        out.append(m)
    return out


def peak_allocation(fn) -> int:
    """Peak bytes Python allocated while ``fn`` ran."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def read_expecting(exc: type[Exception], match: str, data: bytes, **kw) -> int:
    def run():
        with pytest.raises(exc, match=match):
            read_members(data, **kw)

    return peak_allocation(run)


# -- member size limit ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_64_gib_member_is_refused_before_any_allocation(fmt):
    data = member_header("dir/k.jpg", 64 * GiB, fmt) + b"only a few bytes"
    peak = read_expecting(
        CorruptShardError,
        r"member 'dir/k.jpg' \(key 'dir/k'\) of shard mem.tar at byte \d+ declares 68719476736 bytes \(64.0 GiB\), "
        r"above max_member_size=268435456",
        data,
    )
    assert peak < 1 * MiB


def test_without_a_limit_a_lying_size_still_allocates_only_what_arrives():
    data = member_header("k.bin", 64 * GiB) + bytes(3 * MiB)
    peak = read_expecting(TruncatedShardError, r"shard mem.tar ends inside member 'k.bin'", data, max_member_size=None)
    assert peak < 16 * MiB  # the 3 MiB that came (read in chunks, then joined), never 64 GiB


def test_the_limit_is_configurable_and_inclusive():
    body = b"x" * 1000
    data = member_header("k.bin", 1000) + body + bytes(-1000 % 512) + bytes(1024)
    assert read_members(data, max_member_size=1000) == [("k.bin", body)]
    with pytest.raises(CorruptShardError, match=r"declares 1000 bytes \(0.0 MiB\), above max_member_size=999"):
        read_members(data, max_member_size=999)
    with pytest.raises(ValueError, match="max_member_size must be >= 0 or None, not -1"):
        TarStream(io.BytesIO(data), "mem.tar", max_member_size=-1)


def test_negative_sizes_are_corrupt():
    gnu = bytearray(member_header("k.bin", 0, tarfile.GNU_FORMAT)[:512])
    gnu[124:136] = b"\xff" * 12  # base-256 -1
    gnu[148:156] = b"        "
    gnu[148:156] = b"%06o\0 " % sum(gnu)
    with pytest.raises(
        CorruptShardError, match=r"member 'k.bin' of shard mem.tar at byte 0 declares a negative size -1"
    ):
        read_members(bytes(gnu) + bytes(1024))
    pax = tarfile.TarInfo("k.bin")
    pax.pax_headers = {"size": "-5"}
    with pytest.raises(CorruptShardError, match=r"declares a negative size -5"):
        read_members(pax.tobuf(tarfile.PAX_FORMAT) + bytes(1024))


def test_a_skipped_member_with_an_impossible_size_is_refused():
    # found by tools/fuzz.py: a directory entry declaring 2**60 bytes made the skip-seek overflow
    block = bytearray(member_header("d/", 0, tarfile.GNU_FORMAT))
    block[156:157] = b"5"
    block[124:136] = b"\x80" + (1 << 60).to_bytes(11, "big")
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(
        CorruptShardError,
        match=r"member 'd/' of shard mem.tar at byte 0 declares 1152921504606846976 "
        r"bytes: more than any shard holds",
    ):
        read_members(bytes(block) + bytes(1024))


def test_a_huge_pax_header_is_refused():
    block = bytearray(member_header("././@PaxHeader", 0, tarfile.USTAR_FORMAT))
    block[156:157] = b"x"
    block[124:136] = b"%011o\0" % (5 * GiB)
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(
        CorruptShardError,
        match=r"pax header of shard mem.tar at byte 0 declares 5368709120 bytes "
        r"\(5.0 GiB\), above the 1048576-byte limit",
    ):
        read_members(bytes(block) + b"abc")


def zero_bomb_tgz(declared: int, inflated: int) -> bytes:
    """A tar.gz of one member ``declared`` bytes long whose gzip inflates to ``inflated`` zeros.

    Built from one 16 MiB zero chunk compressed once and repeated (a full flush makes
    each copy independent), so making it costs a fraction of a second. Its trailer is
    left wrong: a reader must refuse the shard long before reaching it.
    """
    chunk = 16 * MiB
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = c.compress(member_header("bomb.bin", declared)) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    body = head + zeros * (inflated // chunk) + c.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + bytes(8)


def test_a_gzip_bomb_member_is_refused_without_inflating_it():
    data = zero_bomb_tgz(2 * GiB, 2 * GiB)
    assert len(data) < 3 * MiB
    peak = read_expecting(
        CorruptShardError, r"member 'bomb.bin' \(key 'bomb'\) .* declares 2147483648 bytes \(2.0 GiB\)", data
    )
    assert peak < 2 * MiB


def test_a_gzip_bomb_behind_a_small_header_stops_after_the_allowed_tail():
    # the header says 0 bytes: then 2 GiB of zeros look like end-of-archive blocks followed by padding
    data = zero_bomb_tgz(0, 2 * GiB)
    peak = read_expecting(
        CorruptShardError, rf"shard mem.tar holds more than {MAX_TAIL} bytes after its end-of-archive block", data
    )
    assert peak < 16 * MiB


def test_default_limit_passes_through_shard_dataset(tmp_path: Path):
    big = {"__key__": "big", "bin": b"x" * 4096}
    urls = write_shards(tmp_path, [big], [1])
    assert MAX_MEMBER_SIZE == 256 * MiB
    assert [s["bin"] for s in shardpipe.ShardDataset(urls, decode=None)] == [b"x" * 4096]
    with pytest.raises(
        CorruptShardError,
        match=r"member 'big.bin' \(key 'big'\) of shard .*shard-0000.tar at byte 0 "
        r"declares 4096 bytes \(0.0 MiB\), above max_member_size=4095",
    ):
        list(shardpipe.ShardDataset(urls, decode=None, max_member_size=4095))
    ds = shardpipe.ShardDataset(urls, decode=None, max_member_size=4095, on_error="skip")
    assert list(ds) == []
    assert ds.stats.errors() == {"CorruptShardError": 1}


# -- gzip trailers -------------------------------------------------------------------------
@pytest.fixture
def tgz(tmp_path: Path) -> bytes:
    return Path(write_shards(tmp_path, make_samples(6), [6], "gz")[0]).read_bytes()


def test_a_gzip_shard_reads_back(tgz):
    assert [n for n, _ in read_members(tgz)][:3] == ["sample00000.jpg", "sample00000.cls", "sample00000.json"]


def test_wrong_crc32_is_corrupt(tgz):
    bad = tgz[:-8] + bytes([tgz[-8] ^ 1]) + tgz[-7:]
    with pytest.raises(
        CorruptShardError,
        match=r"bad gzip data in shard mem.tar while reading the end of the gzip "
        r"stream: CRC check failed",
    ):
        read_members(bad)


def test_wrong_length_is_corrupt(tgz):
    bad = tgz[:-4] + bytes([tgz[-4] ^ 1]) + tgz[-3:]
    with pytest.raises(CorruptShardError, match="bad gzip data in shard mem.tar .*Incorrect length of data produced"):
        read_members(bad)


@pytest.mark.parametrize("cut", [8, 5, 1])
def test_missing_trailer_is_truncated(tgz, cut):
    with pytest.raises(
        TruncatedShardError,
        match=r"truncated gzip in shard mem.tar while reading the end of the gzip "
        r"stream: Compressed file ended before the end-of-stream marker",
    ):
        read_members(tgz[:-cut])


def multi_member(tar: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(tar)]
    return [gzip.compress(tar[a:b], mtime=0) for a, b in zip(bounds, bounds[1:])]


def test_multi_member_gzip_checks_every_member(tmp_path: Path):
    tar = Path(write_shards(tmp_path, make_samples(6), [6])[0]).read_bytes()
    members = multi_member(tar, [1000, 5000])
    good = read_members(b"".join(members))
    assert good == read_members(tar) and len(good) == 18
    broken = members[1][:-8] + bytes([members[1][-8] ^ 0x80]) + members[1][-7:]  # the middle member's CRC
    with pytest.raises(CorruptShardError, match="CRC check failed"):
        read_members(members[0] + broken + members[2])
    # a trailer missing mid-stream: the next member's header is read as the trailer, which cannot match
    with pytest.raises(CorruptShardError, match="while reading member .*CRC check failed"):
        read_members(members[0] + members[1][:-8] + members[2])
    with pytest.raises(CorruptShardError, match="Not a gzipped file"):
        read_members(b"".join(members) + b"garbage")


def test_trailer_checked_through_the_pipeline(tmp_path: Path):
    url = write_shards(tmp_path, make_samples(6), [6], "gz")[0]
    data = Path(url).read_bytes()
    Path(url).write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])
    with pytest.raises(CorruptShardError, match=rf"bad gzip data in shard {url} .*CRC check failed"):
        list(shardpipe.ShardDataset([url], decode=None))


# -- shards against their manifest ---------------------------------------------------------
def edit_manifest(path: str, index: int, **changes) -> None:
    m = json.loads(Path(path).read_text())
    m["shards"][index].update(changes)
    Path(path).write_text(json.dumps(m))


@pytest.fixture
def manifest(tmp_path: Path) -> str:
    return write_manifest_dataset(tmp_path, make_samples(20), [10, 10])


def keys(ds) -> list[str]:
    return [s["__key__"] for s in ds]


def test_fewer_samples_than_the_manifest_says_raises(manifest):
    edit_manifest(manifest, 0, samples=50)
    with pytest.raises(
        CorruptShardError, match=r"shard .*shard-0000.tar holds 10 samples but its manifest entry says 50"
    ):
        keys(shardpipe.ShardDataset(manifest, decode=None))


def test_more_samples_than_the_manifest_says_raises(manifest):
    edit_manifest(manifest, 1, samples=4)
    with pytest.raises(
        CorruptShardError,
        match=r"shard .*shard-0001.tar holds at least 5 samples but its manifest "
        r"entry says 4",
    ):
        keys(shardpipe.ShardDataset(manifest, decode=None))


def test_count_mismatch_is_a_counted_skip_under_skip(manifest):
    edit_manifest(manifest, 0, samples=50)
    ds = shardpipe.ShardDataset(manifest, decode=None, on_error="skip", epoch_policy="uneven")
    got = keys(ds)
    assert got == [f"sample{i:05d}" for i in range(20)]  # every sample that was there, none dropped
    assert ds.stats.errors() == {"CorruptShardError": 1}


def test_byte_size_mismatch_raises(manifest):
    edit_manifest(manifest, 1, bytes=123)
    with pytest.raises(
        CorruptShardError, match=r"shard .*shard-0001.tar is 51200 bytes but its manifest entry says 123"
    ):
        keys(shardpipe.ShardDataset(manifest, decode=None))


def flip_payload_byte(manifest: str, index: int) -> None:
    """Change one byte inside a member's data: tar structure and size stay valid."""
    shard = Path(manifest).parent / json.loads(Path(manifest).read_text())["shards"][index]["name"]
    data = bytearray(shard.read_bytes())
    data[512 + 1] ^= 0xFF  # inside the first member's data (a .cls digit turns into another byte)
    shard.write_bytes(bytes(data))


def test_verify_catches_a_wrong_sha256(manifest):
    flip_payload_byte(manifest, 1)
    assert len(keys(shardpipe.ShardDataset(manifest, decode=None))) == 20  # unverified: not noticed
    with pytest.raises(
        CorruptShardError,
        match=r"shard .*shard-0001.tar has sha256 [0-9a-f]{64} but its manifest "
        r"entry says [0-9a-f]{64}",
    ):
        keys(shardpipe.ShardDataset(manifest, decode=None, verify=True))
    ds = shardpipe.ShardDataset(manifest, decode=None, verify=True, on_error="skip")
    assert len(keys(ds)) == 20 and ds.stats.errors() == {"CorruptShardError": 1}


@pytest.mark.parametrize("compress", [None, "gz"])
def test_verify_passes_good_shards_read_in_ranges(tmp_path: Path, compress):
    samples = make_samples(21)
    manifest = write_manifest_dataset(tmp_path, samples, [7, 9, 5], compress)
    got = []
    for rank in range(3):  # 7 samples per rank: ranks 0 and 1 stop mid-shard, rank 1 and 2 start mid-shard
        got += keys(shardpipe.ShardDataset(manifest, decode=None, verify=True, rank=rank, world_size=3))
    assert sorted(got) == sorted(s["__key__"] for s in samples)


def test_verify_resumes_mid_shard(manifest):
    ds = shardpipe.ShardDataset(manifest, decode=None, verify=True)
    it = iter(ds)
    first = [next(it)["__key__"] for _ in range(13)]
    state = ds.state_dict()
    it.close()
    flip_payload_byte(manifest, 1)  # in the part already read: a verified resume hashes it again
    ds2 = shardpipe.ShardDataset(manifest, decode=None, verify=True)
    ds2.load_state_dict(state)
    with pytest.raises(CorruptShardError, match="shard-0001.tar has sha256"):
        keys(ds2)
    assert first == [f"sample{i:05d}" for i in range(13)]


def test_sha256_of_the_writer_matches(manifest):
    m = json.loads(Path(manifest).read_text())
    shard = Path(manifest).parent / m["shards"][0]["name"]
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == m["shards"][0]["sha256"]


# -- keys that would escape the extraction folder ------------------------------------------
@pytest.mark.parametrize(
    "key, why",
    [
        ("../../escape", r"contains a '\.\.' component: tar would extract it outside its folder"),
        ("a/../b", r"contains a '\.\.' component"),
        ("/etc/passwd", r"is an absolute path"),
        ("a//b", r"has an empty or '\.' path component"),
        ("a/b/", r"has an empty or '\.' path component"),
        ("./a", r"has an empty or '\.' path component"),
        ("a\\b", r"contains a backslash"),
        ("a\0b", r"contains the control character '\\x00'"),
        ("a\nb", r"contains the control character '\\n'"),
        ("a\x7fb", r"contains the control character '\\x7f'"),
    ],
)
def test_writer_refuses_keys_that_escape_or_misread(tmp_path: Path, key, why):
    with pytest.raises(ValueError, match=rf"sample key {_re_repr(key)} {why}"):
        with shardpipe.ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
            w.write({"__key__": key, "txt": "x"})
    assert not list(tmp_path.iterdir())  # nothing written, not even a manifest


def _re_repr(key: str) -> str:
    import re

    return re.escape(repr(key))


@pytest.mark.parametrize("ext", ["j\0pg", "j\\pg", "jp\x1bg"])
def test_writer_refuses_field_names_with_control_characters_or_backslashes(tmp_path: Path, ext):
    with pytest.raises(ValueError, match=rf"field name {_re_repr(ext)} of sample 'k' must be"):
        with shardpipe.ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
            w.write({"__key__": "k", ext: b"x"})


def test_writer_still_accepts_nested_keys(tmp_path: Path):
    with shardpipe.ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        w.write({"__key__": "train/n01440764/img_0001", "txt": "x"})
    with tarfile.open(tmp_path / "s-000000.tar") as tf:
        assert tf.getnames() == ["train/n01440764/img_0001.txt"]


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"samples": -5}, r"has samples -5, not a non-negative integer"),
        ({"samples": "50"}, r"has samples '50', not a non-negative integer"),
        ({"bytes": 1.5}, r"has bytes 1.5, not a non-negative integer"),
        ({"sha256": "abc"}, r"has sha256 'abc', not 64 hex digits"),
    ],
)
def test_manifest_numbers_are_checked_before_use(manifest, changes, why):
    edit_manifest(manifest, 1, **changes)
    with pytest.raises(ValueError, match=rf"manifest .*manifest.json: shard entry 1 .*{why}"):
        shardpipe.ShardDataset(manifest, decode=None)


def test_verify_cli_reports_members_over_the_limit_and_takes_a_larger_one(tmp_path: Path, capsys):
    from shardpipe.cli import main

    with shardpipe.ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        w.write({"__key__": "k", "bin": b"x" * 5000})
    manifest = str(tmp_path / "manifest.json")
    assert main(["verify", manifest, "--max-member-size", "4999"]) == 1
    out = capsys.readouterr().out
    assert "truncated or damaged shard: member 'k.bin' (key 'k') of shard " in out
    assert "declares 5000 bytes (0.0 MiB), above max_member_size=4999" in out
    assert main(["verify", manifest, "--max-member-size", "5000", "--workers", "2"]) == 0
    assert main(["verify", manifest]) == 0


def test_a_huge_gnu_long_name_header_is_refused():
    block = bytearray(member_header("././@LongLink", 0, tarfile.USTAR_FORMAT))
    block[156:157] = b"L"
    block[124:136] = b"%011o\0" % (2 * MiB)
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(CorruptShardError, match=r"GNU long-name header of shard mem.tar at byte 0 declares 2097152 "
                       r"bytes \(2.0 MiB\), above the 1048576-byte limit"):  # fmt: skip
        read_members(bytes(block) + b"abc")


@pytest.mark.parametrize("size, why", [(99, "holds at least 100 bytes"), (101, "holds 100 bytes")])
def test_verifying_reader_checks_the_size_of_unsized_streams(size, why):
    from shardpipe.io.verify import VerifyingReader

    data = b"y" * 100
    reader = VerifyingReader(io.BytesIO(data), "pipe:cat x", size, hashlib.sha256(data).hexdigest())
    assert reader.read(10) == data[:10]
    with pytest.raises(CorruptShardError, match=rf"shard pipe:cat x {why} but its manifest entry says {size}"):
        reader.finish()
    good = VerifyingReader(io.BytesIO(data), "pipe:cat x", 100, hashlib.sha256(data).hexdigest().upper())
    good.finish()  # upper-case hex in a manifest is the same digest
    assert good.read_bytes == 100
