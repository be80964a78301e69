"""The index sidecar is checked, not believed: offsets against the shard's size and the next
sample's start, and a sample read through it has every member it has in the shard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shardpipe import CorruptShardError, IndexedDataset, ShardDataset, ShardNotFoundError, ShardpipeError
from shardpipe.format.index import HEADER, DamagedIndexError, SampleIndex

from .helpers import strict_cli, write_indexed_dataset

COUNTS = [4, 3]


@pytest.fixture
def indexed(tmp_path):
    """A manifest with its index over 2 shards; samples carry jpg, cls and json members."""
    return write_indexed_dataset(tmp_path, COUNTS)


def _offsets_at(path) -> tuple[bytearray, int, int]:
    raw = bytearray(path.read_bytes())
    n_shards, _ = np.frombuffer(bytes(raw[8:24]), dtype="<u8")
    return raw, HEADER + 8 * (int(n_shards) + 1) + 16 * int(n_shards), int(n_shards)


def _set_offset(path, k: int, value: int) -> None:
    raw, at, _ = _offsets_at(path)
    raw[at + 8 * k : at + 8 * k + 8] = int(value).to_bytes(8, "little")
    path.write_bytes(bytes(raw))


def _get_offset(path, k: int) -> int:
    raw, at, _ = _offsets_at(path)
    return int.from_bytes(raw[at + 8 * k : at + 8 * k + 8], "little")


@pytest.mark.parametrize(
    ("k", "value", "message"),
    [
        (1, 2**63, "a sample offset of 9223372036854775808"),
        (1, 2**62 - 512, "the sample offsets of shard 0 do not increase"),
        (1, 513, "is not on a 512-byte tar block"),
        (2, 0, "the sample offsets of shard 0 do not increase"),
        (4, 10**9 * 512, "shard 0's samples end at byte 512000000000, past its size"),
    ],
)
def test_an_impossible_offset_is_refused_when_the_index_loads(indexed, k, value, message):
    manifest, index = indexed
    _set_offset(index, k, value)
    with pytest.raises(DamagedIndexError) as info:
        SampleIndex.load(str(index))
    assert message in str(info.value) and isinstance(info.value, CorruptShardError)


def test_an_end_cut_before_a_samples_last_member_is_a_corrupt_shard(indexed):
    """Move sample 0's end (= sample 1's start) back by its last member: the index still looks
    consistent, but reading sample 0 would drop a member."""
    manifest, index = indexed
    ds = IndexedDataset(str(manifest), decode=None)
    full = ds[0]
    assert {"jpg", "cls", "json"} <= set(full)
    start, end = _get_offset(index, 0), _get_offset(index, 1)
    # the last member of sample 0 is json: a header block plus one data block for its few bytes
    _set_offset(index, 1, end - 1024)
    cut = IndexedDataset(str(manifest), decode=None)
    with pytest.raises(
        CorruptShardError, match=r"sample 'sample00000' goes on past its indexed end \(member 'sample00000\."
    ):
        cut[0]
    assert start < end - 1024


def test_an_end_inside_a_member_is_a_corrupt_shard(indexed):
    manifest, index = indexed
    end = _get_offset(index, 1)
    _set_offset(index, 1, end - 512)  # inside the last member's data
    with pytest.raises(CorruptShardError, match="the index does not match shard"):
        IndexedDataset(str(manifest), decode=None)[0]


def test_an_intact_index_reads_every_member(indexed):
    manifest, _ = indexed
    ds = IndexedDataset(str(manifest), decode=None)
    for i in range(sum(COUNTS)):
        assert set(ds[i]) >= {"__key__", "jpg", "cls", "json"}


def _spoil(index, how: str) -> None:
    if how == "missing":
        index.unlink()
    else:
        index.write_bytes(b"")


EXPECTED = {  # how the sidecar is spoilt -> (error type, what the message says about it)
    "missing": (ShardNotFoundError, "does not exist ({fix})"),
    "empty": (DamagedIndexError, "is empty (0 bytes): {fix}"),
}
#: the fix for an index read over http(s), which cannot be written there
HTTP_FIX = (
    "rebuild it where the files are written, not over http(s), which is read-only: `shardpipe index manifest.json "
    "-o manifest.json` in the folder the server publishes (or a local copy of it), then upload the new "
    "manifest.json and manifest.index beside the shards"
)


@pytest.mark.parametrize("how", sorted(EXPECTED))
def test_a_missing_or_empty_sidecar_is_named_with_its_fix_by_every_reader(indexed, how):
    """It was a bare FileNotFoundError (``[Errno 2] ...``) or ValueError (``cannot mmap an empty file``)
    from deep inside numpy, naming neither the index nor what to do."""
    manifest, index = indexed
    _spoil(index, how)
    kind, said = EXPECTED[how]
    message = f"index {index} " + said.format(fix=f"rebuild it with `shardpipe index {manifest} -o {manifest}`")
    with pytest.raises(kind) as random_access:
        IndexedDataset(str(manifest), decode=None)
    with pytest.raises(kind) as streaming:
        ShardDataset(str(manifest), decode=None, shuffle=True, shuffle_algo="block")
    for info in (random_access, streaming):
        assert str(info.value) == message and isinstance(info.value, ShardpipeError)
    verify = strict_cli("verify", str(manifest))
    assert verify.returncode == 1 and verify.stderr == "", verify.stderr
    assert f"problems in 2 shards (7 samples):\n  {message}\n" in verify.stdout


@pytest.mark.servers
@pytest.mark.parametrize("how", sorted(EXPECTED))
def test_a_missing_or_empty_remote_sidecar_is_named_with_its_fix(indexed, http_store, how):
    manifest, index = indexed
    _spoil(index, how)
    for path in manifest.parent.iterdir():
        http_store.put(f"{how}-sidecar/{path.name}", path.read_bytes())
    url = http_store.url(f"{how}-sidecar/manifest.json")
    kind, said = EXPECTED[how]
    message = f"index {url[: -len('json')]}index " + said.format(fix=HTTP_FIX)
    with pytest.raises(kind) as info:
        IndexedDataset(url, decode=None)
    assert str(info.value) == message  # it said `shardpipe index URL -o URL`, which cannot write to a web server
    verify = strict_cli("verify", url)
    assert verify.returncode == 1 and verify.stderr == "", verify.stderr
    assert f"problems in 2 shards (7 samples):\n  {message}\n" in verify.stdout


@pytest.mark.servers
def test_a_remote_manifest_without_an_index_says_to_create_one_where_the_files_are_written(indexed, http_store):
    manifest, _ = indexed
    doc = json.loads(manifest.read_text())
    del doc["index"]
    http_store.put("no-index/manifest.json", json.dumps(doc).encode())
    url = http_store.url("no-index/manifest.json")
    with pytest.raises(ValueError) as info:
        IndexedDataset(url, decode=None)
    assert str(info.value) == (
        f"{url} has no index: create one where the files are written, not over http(s), which is read-only: "
        "`shardpipe index manifest.json -o manifest.json` in the folder the server publishes (or a local copy "
        "of it), then upload the new manifest.json and manifest.index beside the shards (or write the shards "
        "with ShardWriter / `shardpipe write`)"
    )
