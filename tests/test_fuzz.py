"""Property-based fuzzing (hypothesis) of the tar reader, the gzip path and the JPEG header
parser: a few seconds here; ``tools/fuzz.py`` runs the same targets for minutes. Inputs that
once broke a promise live in tests/fuzz_corpus/ and are replayed on every run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardpipe.devtools.fuzz import check_gzip, check_jpeg, check_tar, mutate, read_tar, seed_inputs
from shardpipe.format.tar.writer import TarWriter

SEEDS = seed_inputs()
CORPUS = Path(__file__).parent / "fuzz_corpus"
FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip

mutations = st.randoms(use_true_random=False)


@FAST
@given(st.binary(max_size=3000))
def test_tar_reader_on_any_bytes(data):
    check_tar(data)


@FAST
@given(st.sampled_from(SEEDS["tar"]), mutations)
def test_tar_reader_on_damaged_tars(seed, rng):
    check_tar(mutate(seed, rng))


@FAST
@given(st.sampled_from(SEEDS["tar"] + SEEDS["gzip"]), st.integers(0, 20000))
def test_every_cut_is_an_error(seed, cut):
    """A cut gzip shard lacks its trailer; a cut plain tar, its end-of-archive block (the padding after it may go)."""
    cut = min(cut, len(seed) - 1)
    got = check_tar(seed[:cut])
    if seed[:2] == b"\x1f\x8b" or cut < _content_end(seed):
        assert got is None
    else:
        assert got == read_tar(seed)


def _content_end(tar: bytes) -> int:
    """Offset just past the end-of-archive block of a plain tar (bytes after it are padding)."""
    pos = 0
    while tar[pos : pos + 512] != bytes(512):
        size = int(tar[pos + 124 : pos + 136].strip(b"\0 ") or b"0", 8)
        pos += 512 + size + (-size % 512)
    return pos + 512


@FAST
@given(st.sampled_from(SEEDS["gzip"]), mutations)
def test_damaged_gzip_reads_back_exactly_or_raises(seed, rng):
    check_gzip(mutate(seed, rng), read_tar(seed))


names = st.text(st.characters(min_codepoint=0x30, max_codepoint=0x7A, categories=["L", "N"]), min_size=1, max_size=30)


@settings(FAST, max_examples=100)
@given(st.lists(st.tuples(names, st.binary(max_size=2000)), min_size=1, max_size=6, unique_by=lambda t: t[0]),
       st.sampled_from([None, "gz"]))  # fmt: skip
def test_written_samples_read_back_byte_for_byte(samples, compress):
    import io

    out = io.BytesIO()
    w = TarWriter(out, compress)
    for key, data in samples:
        w.write({"__key__": key, "bin": data})
    w.close()
    assert read_tar(out.getvalue()) == [(f"{k}.bin", d) for k, d in samples]


@FAST
@given(st.binary(max_size=600).map(lambda b: b"\xff\xd8\xff" + b))
def test_jpeg_header_on_any_bytes(data):
    check_jpeg(data)


@FAST
@given(st.sampled_from(SEEDS["jpeg"]), mutations)
def test_jpeg_header_on_damaged_jpegs(seed, rng):
    check_jpeg(mutate(seed, rng))


def test_seed_jpegs_parse():
    for data in SEEDS["jpeg"]:
        check_jpeg(data)
        assert data[:2] == b"\xff\xd8"


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*/*.bin")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_corpus_regressions(path: Path):
    """Inputs that once broke a promise (found by tools/fuzz.py); each must keep it now."""
    data = path.read_bytes()
    if path.parent.name == "jpeg":
        check_jpeg(data)
    elif path.parent.name == "gzip":
        check_gzip(data, read_tar(SEEDS["gzip"][0]))
    else:
        check_tar(data)


def test_mutations_are_reproducible():
    a = mutate(SEEDS["tar"][0], random.Random(5))
    assert a == mutate(SEEDS["tar"][0], random.Random(5)) and a != SEEDS["tar"][0]
