"""Format compatibility with the real webdataset package, both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import shardpipe
from shardpipe import ShardDataset

from .helpers import make_samples

wds = pytest.importorskip("webdataset")


def _fields(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if not k.startswith("__")}


def _as_bytes(sample: dict) -> dict:
    """The bytes each field must be stored as (the format, written out independently of the writer)."""
    out = {}
    for k, v in _fields(sample).items():
        if k == "json":
            out[k] = json.dumps(v, sort_keys=True).encode()
        elif isinstance(v, int):
            out[k] = str(v).encode()
        elif isinstance(v, str):
            out[k] = v.encode("utf-8")
        else:
            out[k] = bytes(v)
    return out


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
    for g, s in zip(got, samples, strict=True):
        assert _fields(g) == _as_bytes(s)
    assert (got[3]["cls"], got[3]["json"], got[5]["txt"]) == (b"3", b'{"index": 3}', b"h\xc3\xa9llo")
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
    for g, s in zip(got, samples, strict=True):
        assert _fields(g) == _as_bytes(s)
    assert (got[3]["cls"], got[3]["json"], got[3]["jpg"]) == (b"3", b'{"index": 3}', samples[3]["jpg"])
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
    assert len(ours) == len(theirs) == 5
    for a, b in zip(ours, theirs, strict=True):
        assert a["__key__"] == b["__key__"]
        assert a["jpg"].shape == b["jpg"].shape == (40, 48, 3) and (a["jpg"] == b["jpg"]).all()
