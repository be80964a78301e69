"""The tar format: byte-for-byte round trips, gzip, long names, and broken streams."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

import shardpipe
from shardpipe import CorruptShardError, NotTarError, ShardNotFoundError, TruncatedShardError
from shardpipe.format.fields import encode_field
from shardpipe.format.tar.reader import TarStream
from shardpipe.stages import GroupSamples, Pipeline, ShardList, Untar, expand_urls

from .helpers import make_samples, write_shards


def read_raw(urls, on_error="raise"):
    """Samples as grouped from the shards, fields left as bytes."""
    ctx = shardpipe.stages.Context(errors=shardpipe.ErrorHandler(on_error))
    return list(Pipeline([ShardList(expand_urls(urls)), Untar(), GroupSamples()], ctx)), ctx


def as_bytes(sample: dict) -> dict:
    return {k: encode_field(k, v) for k, v in sample.items() if not k.startswith("__")}


@pytest.mark.parametrize("compress", [None, "gz"])
def test_round_trip_byte_for_byte_in_order(tmp_path: Path, compress):
    samples = make_samples(25)
    urls = write_shards(tmp_path, samples, [10, 15], compress)
    got, _ = read_raw(urls)
    assert [s["__key__"] for s in got] == [s["__key__"] for s in samples]
    for s, g in zip(samples, got):
        assert {k: v for k, v in g.items() if not k.startswith("__")} == as_bytes(s)
    assert got[0]["__url__"] == urls[0] and got[-1]["__url__"] == urls[1]


def test_gzip_detected_by_content_not_name(tmp_path: Path):
    urls = write_shards(tmp_path, make_samples(4), [4], compress="gz")
    renamed = tmp_path / "plain-name.tar"
    Path(urls[0]).rename(renamed)
    got, _ = read_raw([str(renamed)])
    assert len(got) == 4


def test_writer_output_is_reproducible(tmp_path: Path):
    samples = make_samples(6)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_shards(tmp_path / "a", samples, [6], "gz")
    b = write_shards(tmp_path / "b", samples, [6], "gz")
    assert Path(a[0]).read_bytes() == Path(b[0]).read_bytes()


def _tar_with(members: list[tuple[str, bytes]], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_dots_and_metadata(tmp_path: Path, fmt):
    deep = "d" * 60 + ".v1/" + "e" * 50 + "/k"  # > 100 chars: needs pax, GNU or ustar prefix
    members = [
        ("__meta__.json", b"{}"),
        (f"{deep}.jpg", b"J1"),
        (f"{deep}.cls", b"3"),
        ("__index__", b"ignored"),
        ("dir.v2/a.b.seg.png", b"P"),
        ("dir.v2/a.b.cls", b"1"),
        ("noext", b"skipped"),
    ]
    path = tmp_path / "names.tar"
    path.write_bytes(_tar_with(members, fmt))
    got, _ = read_raw([str(path)])
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in got] == [
        (deep, ["cls", "jpg"]),
        ("dir.v2/a", ["b.cls", "b.seg.png"]),
    ]
    assert got[0]["jpg"] == b"J1"


def test_directories_and_links_are_skipped(tmp_path: Path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        link = tarfile.TarInfo("dir/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "x"
        tf.addfile(link)
        info = tarfile.TarInfo("dir/a.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "x.tar").write_bytes(buf.getvalue())
    got, _ = read_raw([str(tmp_path / "x.tar")])
    assert [(s["__key__"], s["txt"]) for s in got] == [("dir/a", b"hi")]


def test_missing_shard_raises_with_url(tmp_path: Path):
    with pytest.raises(ShardNotFoundError, match="shard not found: .*nope.tar"):
        read_raw([str(tmp_path / "nope.tar")])


def content_end(path: str) -> int:
    """Offset just after the last member's data (tar files are zero-padded beyond it)."""
    stream = TarStream(open(path, "rb"), path)
    end = 0
    while stream.next_member() is not None:
        end = stream.offset
    stream.close()
    return end


@pytest.mark.parametrize("cut", [700, 512 * 3, "last-member", "at-end-marker"])
def test_truncated_tar_raises_naming_shard(tmp_path: Path, cut):
    urls = write_shards(tmp_path, make_samples(5), [5])
    data = Path(urls[0]).read_bytes()
    end = content_end(urls[0])
    # a cut exactly at a member boundary must not read as a shorter, valid shard
    cut = {"last-member": end - 100, "at-end-marker": end}.get(cut, cut)
    Path(urls[0]).write_bytes(data[:cut])
    with pytest.raises(TruncatedShardError, match=r"truncated tar: shard .*shard-0000.tar"):
        read_raw(urls)


def test_truncated_gzip_raises(tmp_path: Path):
    urls = write_shards(tmp_path, make_samples(5), [5], compress="gz")
    data = Path(urls[0]).read_bytes()
    Path(urls[0]).write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedShardError, match=r"truncated gzip in shard .*shard-0000.tar.gz"):
        read_raw(urls)


def test_corrupt_gzip_and_not_a_tar(tmp_path: Path):
    bad_gz = tmp_path / "bad.tar.gz"
    data = bytearray(gzip.compress(_tar_with([("a.txt", b"x" * 5000)])))
    data[30:60] = b"\xff" * 30
    bad_gz.write_bytes(bytes(data))
    with pytest.raises((CorruptShardError, TruncatedShardError), match="bad.tar.gz"):
        read_raw([str(bad_gz)])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(NotTarError, match=r"shard .*junk.tar is not a tar archive: its first 512 bytes \(starting "):
        read_raw([str(junk)])
    damaged = bytearray(_tar_with([("a.txt", b"x" * 5000)]))
    damaged[148:156] = b"0000000\0"  # a tar whose first header is damaged: corrupt, not another kind of file
    junk.write_bytes(bytes(damaged))
    with pytest.raises(CorruptShardError, match=r"not a tar header \(bad checksum\) in shard .*junk.tar at byte 0"):
        read_raw([str(junk)])


def test_skip_policy_keeps_complete_samples_and_counts(tmp_path: Path):
    samples = make_samples(12)
    urls = write_shards(tmp_path, samples, [6, 6])
    data = Path(urls[0]).read_bytes()
    Path(urls[0]).write_bytes(data[: content_end(urls[0]) - 100])  # cut inside the last sample
    missing = str(tmp_path / "missing.tar")
    got, ctx = read_raw([urls[0], missing, urls[1]], on_error="skip")
    keys = [s["__key__"] for s in got]
    assert keys[-6:] == [s["__key__"] for s in samples[6:]]
    # the cut sample is lost (and counted); the complete ones before it come through
    assert keys[:-6] == [s["__key__"] for s in samples[:5]]
    assert ctx.errors.counts == {"TruncatedShardError": 1, "ShardNotFoundError": 1}


def test_duplicate_extension_in_one_sample(tmp_path: Path):
    path = tmp_path / "dup.tar"
    path.write_bytes(_tar_with([("k.jpg", b"1"), ("k.jpg", b"2"), ("m.jpg", b"3")]))
    with pytest.raises(CorruptShardError, match="sample 'k' in shard .*dup.tar has two 'jpg' members"):
        read_raw([str(path)])
    got, ctx = read_raw([str(path)], on_error="skip")
    assert [s["__key__"] for s in got] == ["m"] and ctx.errors.counts["DuplicateMemberError"] == 1


def test_member_offsets_are_resume_points(tmp_path: Path):
    urls = write_shards(tmp_path, make_samples(4), [4])
    raw = Path(urls[0]).read_bytes()
    stream = TarStream(io.BytesIO(raw), "mem")
    offsets, names = [], []
    while (m := stream.next_member()) is not None:
        names.append(m[0])
        offsets.append(stream.offset)
    # reopening at any recorded offset continues with the following members
    for i, off in enumerate(offsets[:-1]):
        rest = TarStream(io.BytesIO(raw[off:]), "mem", off)
        assert rest.next_member()[0] == names[i + 1]


@pytest.mark.parametrize("record", [b"0 x\n", b"zz path=a\n", b"30 path=too-long-for-its-length\n", b"10 nokey\n"])
def test_malformed_pax_header_is_a_corrupt_shard(tmp_path: Path, record: bytes):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        pax = tarfile.TarInfo("././@PaxHeader")
        pax.type = tarfile.XHDTYPE
        pax.size = len(record)
        tf.addfile(pax, io.BytesIO(record))
        info = tarfile.TarInfo("k.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    path = tmp_path / "pax.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(CorruptShardError, match=r"bad pax header in shard .*pax.tar at byte 0"):
        read_raw([str(path)])
    got, ctx = read_raw([str(path)], on_error="skip")  # ends, and counts it
    assert got == [] and ctx.errors.counts == {"CorruptShardError": 1}


def test_unreadable_shard_is_a_shard_read_error(tmp_path: Path):
    (tmp_path / "dir.tar").mkdir()
    with pytest.raises(shardpipe.ShardReadError, match=r"cannot read shard .*dir.tar"):
        read_raw([str(tmp_path / "dir.tar")])
