"""The index sidecar's own checks: damaged files named, loaded read-only, sample ranges parsed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shardpipe.errors import CorruptShardError
from shardpipe.format.index import HEADER, SampleIndex, ShardIndex, encode_index, index_name, key_crc, sample_from_bytes


def two_shards() -> list[ShardIndex]:
    a, b = ShardIndex(size=4096), ShardIndex(size=9000, compressed=True)
    for i in range(3):
        a.add(512 * 2 * i, f"a{i}")
    a.end(3072)
    for i in range(2):
        b.add(1024 * i, f"b{i}")
    b.end(2048)
    return [a, b]


def test_encoded_fields_read_back():
    idx = SampleIndex(encode_index(two_shards()), "mem.index")
    assert (idx.shards, idx.samples, len(idx)) == (2, 5, 5)
    assert idx.starts.tolist() == [0, 3, 5] and idx.counts().tolist() == [3, 2]
    assert idx.sizes.tolist() == [4096, 9000] and [idx.compressed(0), idx.compressed(1)] == [False, True]
    assert [idx.locate(i) for i in (0, 2, 3, 4)] == [
        (0, 0, 1024, key_crc("a0")),
        (0, 2048, 3072, key_crc("a2")),
        (1, 0, 1024, key_crc("b0")),
        (1, 1024, 2048, key_crc("b1")),
    ]
    with pytest.raises(IndexError, match=r"^sample 5 out of range: the index holds 5$"):
        idx.locate(5)


def test_counts_that_do_not_add_up_are_damage():
    data = bytearray(encode_index(two_shards()))
    starts = np.frombuffer(data, "<u8", 3, HEADER)
    assert starts.tolist() == [0, 3, 5]
    data[HEADER + 8 : HEADER + 16] = np.array([6], "<u8").tobytes()  # 0, 6, 5: the total still matches
    with pytest.raises(ValueError, match=r"^mem.index is damaged: its per-shard sample counts do not add up to 5$"):
        SampleIndex(bytes(data), "mem.index")
    data[HEADER + 8 : HEADER + 24] = np.array([3, 4], "<u8").tobytes()  # ordered, but ends at 4 of 5
    with pytest.raises(ValueError, match=r"do not add up to 5$"):
        SampleIndex(bytes(data), "mem.index")


def test_a_loaded_index_is_read_only_and_names_its_file(tmp_path: Path):
    path = tmp_path / "manifest.index"
    path.write_bytes(encode_index(two_shards()))
    idx = SampleIndex.load(str(path))
    assert idx.url == str(path) and idx.counts().tolist() == [3, 2]
    with pytest.raises(ValueError, match="read-only"):
        idx.offsets[0] = 1  # a memory map of the user's file: never written through
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=rf"^{path} is truncated or damaged: "):
        SampleIndex.load(str(path))


def test_check_matches_names_the_fix():
    idx = SampleIndex(encode_index(two_shards()), "mem.index")
    idx.check_matches([3, 2])
    with pytest.raises(
        ValueError,
        match=r"^index mem.index does not match its manifest: per-shard sample counts differ "
        r"\(rebuild it with `shardpipe index`\)$",
    ):
        idx.check_matches([2, 3])


@pytest.mark.parametrize(
    "manifest, expected",
    [
        ("manifest.json", "manifest.index"),
        ("s3://bucket/data/train.json", "train.index"),
        ("data/manifest.json/", "manifest.index"),
        ("/abs/listing", "listing.index"),
    ],
)
def test_index_name(manifest: str, expected: str):
    assert index_name(manifest) == expected


def sample_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        end = tf.offset  # where the last member ends: a sample's byte range holds no end-of-archive
    return buf.getvalue()[:end]


def test_members_outside_any_sample_inside_a_range_are_stepped_over():
    data = sample_bytes([("__meta__.json", b"{}"), ("README", b"x"), ("k1.jpg", b"J"), ("k1.cls", b"3")])
    assert sample_from_bytes(data, "s.tar", key_crc("k1")) == {"__key__": "k1", "jpg": b"J", "cls": b"3"}
    with pytest.raises(CorruptShardError, match=r"^the index does not match shard s.tar: the sample read is not"):
        sample_from_bytes(data, "s.tar", key_crc("k2"))
    with pytest.raises(CorruptShardError, match=r"member 'k2.cls' of another sample inside 'k1'"):
        sample_from_bytes(sample_bytes([("k1.jpg", b"J"), ("k2.cls", b"3")]), "s.tar")
