"""Format compatibility with the real webdataset package, both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardpipe
from shardpipe import ShardDataset

from .helpers import make_samples

wds = pytest.importorskip("webdataset")


def _fields(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if not k.startswith("__")}


def _as_bytes(sample: dict) -> dict:
    return {k: shardpipe.writer.encode_field(k, v) for k, v in _fields(sample).items()}


@pytest.mark.parametrize("ext", ["tar", "tar.gz"])
def test_webdataset_writes_shardpipe_reads(tmp_path: Path, ext):
    samples = make_samples(17)
    samples[4]["seg.bin"] = b"\x00\x01 raw bytes"  # a dotted extension
    samples[5]["txt"] = "héllo"
    with wds.ShardWriter(str(tmp_path / f"w-%03d.{ext}"), maxcount=6, verbose=0) as w:
        for s in samples:
            w.write(dict(s))
    urls = sorted(str(p) for p in tmp_path.glob(f"w-*.{ext}"))
    assert len(urls) == 3
    got = list(ShardDataset(urls, decode=None))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        assert _fields(g) == _as_bytes(s)
    # and decoded: labels, json and text come back as the values written
    dec = list(ShardDataset(urls))
    assert [d["cls"] for d in dec] == [s["cls"] for s in samples]
    assert [d["json"] for d in dec] == [s["json"] for s in samples]
    assert dec[5]["txt"] == "héllo"


@pytest.mark.parametrize("compress", [None, "gz"])
def test_shardpipe_writes_webdataset_reads(tmp_path: Path, compress):
    samples = make_samples(17)
    suffix = "tar.gz" if compress else "tar"
    with shardpipe.ShardWriter(str(tmp_path / f"s-%03d.{suffix}"), maxcount=6, compress=compress) as w:
        for s in samples:
            w.write(s)
    urls = sorted(str(p) for p in tmp_path.glob(f"s-*.{suffix}"))
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        assert _fields(g) == _as_bytes(s)
    decoded = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"))
    assert [d["cls"] for d in decoded] == [s["cls"] for s in samples]
    assert decoded[0]["jpg"].shape == (40, 48, 3)


def test_same_decoded_pixels_as_webdataset(tmp_path: Path):
    samples = make_samples(5)
    with shardpipe.ShardWriter(str(tmp_path / "p-%03d.tar")) as w:
        for s in samples:
            w.write(s)
    url = str(tmp_path / "p-000.tar")
    ours = list(ShardDataset(url, decoder="pil"))
    theirs = list(wds.WebDataset(url, shardshuffle=False, empty_check=False).decode("rgb8"))
    for a, b in zip(ours, theirs):
        assert (a["jpg"] == b["jpg"]).all()
