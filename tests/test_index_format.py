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


def test_an_entry_with_offsets_not_matching_its_samples_is_refused():
    a = ShardIndex(size=4096)
    a.add(0, "a0")
    with pytest.raises(ValueError, match=r"^shard 0 of the index has 1 samples but 1 offsets$"):
        encode_index([a])


def _offsets_at(data: bytearray, shards: int = 2) -> int:
    return HEADER + 8 * ((shards + 1) + shards + shards)  # after starts, sizes and flags


@pytest.mark.parametrize(
    "value, message",
    [
        (1 << 62, "mem.index is damaged: a sample offset of 4611686018427387904"),
        (1000, "mem.index is damaged: a sample offset is not on a 512-byte tar block"),
    ],
)
def test_impossible_offsets_are_damage_by_message(value: int, message: str):
    data = bytearray(encode_index(two_shards()))
    at = _offsets_at(data) + 8  # shard 0's second offset (1024)
    assert np.frombuffer(data, "<u8", 1, at).tolist() == [1024]
    data[at : at + 8] = np.array([value], "<u8").tobytes()
    with pytest.raises(ValueError) as e:
        SampleIndex(bytes(data), "mem.index")
    assert str(e.value) == message


def test_samples_may_end_exactly_at_the_shards_size_but_not_past_it():
    def one(end: int) -> bytes:
        a = ShardIndex(size=4096)
        a.add(0, "a0")
        a.end(end)
        return encode_index([a])

    assert SampleIndex(one(4096), "mem.index").locate(0) == (0, 0, 4096, key_crc("a0"))
    with pytest.raises(ValueError) as e:
        SampleIndex(one(4608), "mem.index")
    assert str(e.value) == "mem.index is damaged: shard 0's samples end at byte 4608, past its size 4096"


def test_a_sample_going_on_past_its_end_is_seen_through_a_ustar_prefix():
    """Names over 100 bytes live in the ustar prefix field: the follower's key includes it."""
    folder = "d" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in (f"{folder}/k1.jpg", f"{folder}/k1.cls", f"{folder}/k2.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    assert data[257:262] == b"ustar" and data[345:350] == b"ddddd"  # the folder is in the prefix field
    with pytest.raises(CorruptShardError) as e:
        sample_from_bytes(data[: 1024 + 512], "mem.tar", length=1024)  # cut before k1.cls
    assert str(e.value) == (
        f"the index does not match shard mem.tar: sample '{folder}/k1' goes on past its indexed end "
        f"(member '{folder}/k1.cls'); rebuild the index with `shardpipe index`"
    )
    whole = sample_from_bytes(data[: 2048 + 512], "mem.tar", length=2048)  # followed by k2: fine
    assert whole == {"__key__": f"{folder}/k1", "jpg": b"abc", "cls": b"abc"}


def test_a_follower_without_the_ustar_magic_is_read_by_its_name_alone():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in ("k1.jpg", "k1.cls"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(buf.getvalue())
    data[1024 + 257 : 1024 + 265] = bytes(8)  # an old (v7) header: no magic, so no prefix field
    with pytest.raises(CorruptShardError, match=r"sample 'k1' goes on past its indexed end \(member 'k1.cls'\)"):
        sample_from_bytes(bytes(data[: 1024 + 512]), "mem.tar", length=1024)
