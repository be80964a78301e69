"""Images read straight from the mapped shard file: a shuffle window hands the native decoder
read-only views of its deferred image members instead of copies (``shardpipe.io.deferred``)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardpipe.dataset import ShardDataset
from shardpipe.errors import TruncatedShardError
from shardpipe.format.sample import is_image_field
from shardpipe.image.decoders.jpeg import has_end_marker, read_header
from shardpipe.io.deferred import DeferredBytes, SharedFile, materialize
from shardpipe.loader import ShardLoader
from shardpipe.stages.decode import Decode, SampleDecoder
from shardpipe.stages.shuffle import Shuffle

from .helpers import decoder_or_skip, make_samples, payload, small_jpeg, write_manifest_dataset


def _png(index: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), index * 11 % 256, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _samples(n: int) -> list[dict]:
    """JPEGs the fast path takes, JPEGs with bytes after their end marker, PNGs (the PIL fallback
    inside the native decoder), and a large non-image field (deferred, but read as bytes)."""
    out = make_samples(n)
    for i, s in enumerate(out):
        s["jpg"] = small_jpeg(i, (120, 90)) + (b"\0trailer" if i % 5 == 1 else b"")
        if i % 7 == 3:
            del s["jpg"]
            s["png"] = _png(i) + payload(1200, i)  # PNG readers stop at IEND: the tail is ignored
        s["bin"] = payload(2000 + i, i)
    return out


def _shuffle_of(ds: ShardDataset) -> Shuffle:
    return next(s for s in ds.build_pipeline().stages if isinstance(s, Shuffle))


def _file(tmp_path: Path, data: bytes) -> tuple[Path, SharedFile]:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, SharedFile(os.open(path, os.O_RDONLY), str(path))


def test_materialize_gives_image_fields_as_read_only_views_and_reads_the_rest(tmp_path: Path) -> None:
    data = payload(5000, 1)
    _, file = _file(tmp_path, data)
    sample = {
        "__key__": "k",
        "jpg": DeferredBytes(file, 100, 2000),
        "left.png": DeferredBytes(file, 3000, 1500),
        "bin": DeferredBytes(file, 7, 1024),
        "cls": b"3",
    }
    got = materialize(sample, is_image_field)
    assert type(got["jpg"]) is memoryview and type(got["left.png"]) is memoryview
    assert got["jpg"].readonly and got["jpg"] == data[100:2100] and got["left.png"] == data[3000:4500]
    assert type(got["bin"]) is bytes and got["bin"] == data[7:1031] and got["cls"] == b"3"
    assert materialize(sample) == {"__key__": "k", "jpg": data[100:2100], "left.png": data[3000:4500],
                                   "bin": data[7:1031], "cls": b"3"}  # fmt: skip
    assert all(type(v) is bytes for k, v in materialize(sample).items() if k != "__key__")


def test_a_view_past_the_end_of_a_shrunk_file_is_a_truncated_shard_error(tmp_path: Path) -> None:
    path, file = _file(tmp_path, payload(8192, 2))
    assert DeferredBytes(file, 0, 100).view() == path.read_bytes()[:100]  # maps the file
    os.truncate(path, 4096)
    with pytest.raises(TruncatedShardError, match=rf"shard {path} changed while it was read: 100 bytes at byte 4096 "):
        DeferredBytes(file, 4096, 100).view()  # within the mapping, but past the file's end now
    with pytest.raises(TruncatedShardError, match=r"lie past its end \(4096 bytes now"):
        DeferredBytes(file, 8000, 500).view()
    _, fresh = _file(tmp_path, payload(1000, 3))  # mapped at its first view: already too short
    with pytest.raises(TruncatedShardError, match="500 bytes at byte 800 lie past its end"):
        DeferredBytes(fresh, 800, 500).view()


@pytest.mark.parametrize(
    "data",
    [
        small_jpeg(1),
        small_jpeg(2) + b"\x00\x01trailing",  # bytes after the end marker (cameras add them)
        small_jpeg(3)[:-2],  # no end marker: truncated
        small_jpeg(4)[:2] + b"junk" + small_jpeg(4)[2:],  # bytes between segments
        b"\xff\xd8\xff",
    ],
)
def test_jpeg_header_checks_read_a_view_as_they_read_bytes(data: bytes) -> None:
    view = memoryview(bytearray(data)).toreadonly()
    assert has_end_marker(view) == has_end_marker(data) == (b"\xff\xd9" in data)
    assert has_end_marker(view, 4) == has_end_marker(data, 4)
    try:
        want = read_header(data)
    except ValueError as e:
        with pytest.raises(ValueError, match=str(e).split("(")[0]):
            read_header(view)
    else:
        assert read_header(view) == want


def test_only_a_decode_whose_backend_takes_buffers_gets_views(tmp_path: Path) -> None:
    decoder_or_skip("native")
    manifest = write_manifest_dataset(tmp_path, _samples(6), [6])
    assert _shuffle_of(ShardDataset(manifest, shuffle=4, decoder="native")).views
    assert _shuffle_of(ShardDataset(manifest, shuffle=4, decoder="native", decode="torchrgb8")).views
    assert not _shuffle_of(ShardDataset(manifest, shuffle=4, decoder="pil")).views
    assert not _shuffle_of(ShardDataset(manifest, shuffle=4, decoder="native", decode="encoded")).views
    assert not _shuffle_of(ShardDataset(manifest, shuffle=4, decode=None)).views
    encoded = list(ShardDataset(manifest, shuffle=4, decoder="native", decode="encoded"))
    assert all(type(s.get("jpg", s.get("png"))) is bytes for s in encoded)


def test_an_encoded_decode_gives_bytes_for_a_view() -> None:
    data = small_jpeg(5)
    got = SampleDecoder("encoded")({"__key__": "k", "jpg": memoryview(data), "cls": b"1"})
    assert type(got["jpg"]) is bytes and got["jpg"] == data and got["cls"] == 1


def _no_views(monkeypatch) -> None:
    monkeypatch.setattr(Decode, "takes_views", property(lambda self: False))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_decoded_from_views_equal_those_decoded_from_bytes(tmp_path: Path, monkeypatch, workers: int) -> None:
    from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop

    decoder_or_skip("native")
    samples = _samples(40)
    manifest = write_manifest_dataset(tmp_path, samples, [15, 25])
    transform = Compose([RandomResizedCrop(32), RandomHorizontalFlip()])

    def run() -> dict[str, tuple]:
        ds = ShardDataset(manifest, seed=5, shuffle=16, decoder="native", transform=transform)
        items = list(ShardLoader(ds, num_workers=workers)) if workers else list(ds)
        return {
            s["__key__"]: (np.asarray(s.get("jpg", s.get("png"))).tobytes(), s["bin"], int(s["cls"])) for s in items
        }

    assert _shuffle_of(ShardDataset(manifest, shuffle=16, decoder="native", transform=transform)).views
    mapped = run()
    _no_views(monkeypatch)
    copied = run()
    assert sorted(mapped) == sorted(s["__key__"] for s in samples)
    assert mapped == copied  # every pixel, label and payload
    by_key = {s["__key__"]: s for s in samples}
    assert all(v[1] == by_key[k]["bin"] for k, v in mapped.items())


def test_a_shard_cut_short_under_mapped_views_is_an_error_naming_it(tmp_path: Path) -> None:
    decoder_or_skip("native")
    manifest = write_manifest_dataset(tmp_path, _samples(12), [12])
    shard = next(tmp_path.glob("*.tar"))
    pipeline = ShardDataset(manifest, seed=0, shuffle=12, decoder="native").build_pipeline()
    pipeline.reset(None)
    pipeline.next()  # the window holds records of the whole shard; one image was viewed
    os.truncate(shard, 4096)
    with pytest.raises(TruncatedShardError, match=rf"shard {shard} changed while it was read: \d+ bytes at byte"):
        for _ in range(12):
            pipeline.next()
