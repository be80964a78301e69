"""The one hashing reader shared by verify, inspect and index."""

from __future__ import annotations

import hashlib
import io

import pytest

from shardpipe.errors import CorruptShardError
from shardpipe.io.verify import HashingReader, VerifyingReader

DATA = bytes(range(256)) * 9000  # a little over 2 MiB: drain reads in several chunks


class _Failing(io.BytesIO):
    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if self.tell() >= 1000:
            raise OSError("connection reset")
        return super().read(min(n, 1000) if n >= 0 else 1000)


def test_hashes_and_counts_what_is_read_and_drains_the_rest():
    r = HashingReader(io.BytesIO(DATA))
    assert r.read(10) == DATA[:10] and not r.seekable()
    r.drain()
    assert r.read_bytes == len(DATA) and r.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_drain_on_close_reads_the_rest_and_tolerates_a_read_error():
    raw = io.BytesIO(DATA)
    r = HashingReader(raw, drain_on_close=True)
    r.read(5)
    r.close()
    assert raw.closed and r.hexdigest() == hashlib.sha256(DATA).hexdigest()
    failing = _Failing(DATA)
    r = HashingReader(failing, drain_on_close=True)
    r.close()
    assert failing.closed and r.read_bytes == 1000 and r.hexdigest() == hashlib.sha256(DATA[:1000]).hexdigest()


def test_verifying_reader_names_the_shard_and_the_difference():
    good = hashlib.sha256(DATA).hexdigest()
    VerifyingReader(io.BytesIO(DATA), "s.tar", len(DATA), good.upper()).finish()
    with pytest.raises(
        CorruptShardError, match=r"shard s.tar holds at least 1048576 bytes but its manifest entry says 5$"
    ):
        VerifyingReader(io.BytesIO(DATA), "s.tar", 5, good).finish()
    with pytest.raises(CorruptShardError, match=r"shard s.tar has sha256 [0-9a-f]{64} but its manifest entry says 0+$"):
        VerifyingReader(io.BytesIO(DATA), "s.tar", len(DATA), "0" * 64).finish()


@pytest.mark.parametrize("sha256", [None, ""])
def test_an_entry_without_a_sha256_checks_the_size_alone(sha256):
    r = VerifyingReader(io.BytesIO(DATA), "s.tar", len(DATA), sha256)
    assert r.sha256 is None
    r.finish()  # the size matches and there is no digest to compare
    assert r.read_bytes == len(DATA)
    short = VerifyingReader(io.BytesIO(DATA[:-1]), "s.tar", len(DATA), sha256)
    with pytest.raises(
        CorruptShardError, match=f"holds {len(DATA) - 1} bytes but its manifest entry says {len(DATA)}$"
    ):
        short.finish()


def test_an_upper_case_sha256_in_the_manifest_matches():
    r = VerifyingReader(io.BytesIO(DATA), "s.tar", None, hashlib.sha256(DATA).hexdigest().upper())
    r.finish()
    assert r.sha256 == hashlib.sha256(DATA).hexdigest()


def test_close_reads_nothing_more_unless_asked_to_drain():
    raw = io.BytesIO(DATA)
    r = HashingReader(raw)
    r.read(10)
    r.close()
    assert raw.closed and r.read_bytes == 10  # a consumer that stops early pays for no more reads
