"""The Decode and Augment stages' own bookkeeping: what passes through, what is timed, where progress is marked."""

from __future__ import annotations

import time

import numpy as np
import pytest

from shardpipe.stages import Augment, Context, Decode, Pipeline, ShardList, expand_urls
from shardpipe.stages.decode import SampleDecoder
from shardpipe.stages.samples import GroupSamples
from shardpipe.stages.untar import Untar

from .helpers import make_samples, small_jpeg, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return expand_urls(write_shards(tmp_path_factory.mktemp("decode-stage"), make_samples(6), [4, 2]))


def sample(i: int = 0) -> dict:
    # the image before the other fields, as a shard written in this order reads back
    return {"__key__": f"k{i}", "__url__": "mem.tar", "jpg": small_jpeg(i), "cls": b"3", "txt": b"hello"}


def test_encoded_keeps_the_image_bytes_and_decodes_every_field_after_it():
    out = SampleDecoder("encoded")(sample())
    assert out == {"__key__": "k0", "__url__": "mem.tar", "jpg": small_jpeg(0), "cls": 3, "txt": "hello"}


def test_rgb8_is_the_default_and_other_modes_are_refused_by_name():
    decoder = SampleDecoder()
    assert decoder.decode == "rgb8"
    img = decoder(sample())["jpg"]
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (40, 48, 3)
    with pytest.raises(
        ValueError, match=r"^decode must be one of \('rgb8', 'torchrgb8', 'pil', 'encoded'\), not 'RGB8'$"
    ):
        SampleDecoder("RGB8")


def test_the_decode_stage_marks_where_it_is_and_times_its_images(shards):
    marks: list[tuple[str, str | None]] = []
    ctx = Context(progress=lambda stage, url: marks.append((stage, url)))
    t0 = time.perf_counter()
    with Pipeline([ShardList(shards), Untar(), GroupSamples(), Decode()], ctx) as p:
        keys = [s["__key__"] for s in p]
    wall = time.perf_counter() - t0
    assert len(keys) == 6
    decode_marks = [m for m in marks if m[0] == "decode"]
    assert decode_marks == [("decode", shards[0].url)] * 4 + [("decode", shards[1].url)] * 2
    assert ctx.counts["decode"] == 6 and 0 < ctx.timers["decode"] <= wall


def test_unfused_augment_is_timed_apart_from_the_decode(shards):
    def brighten(img, rng=None):
        return np.minimum(img.astype(np.int16) + 1, 255).astype(np.uint8)

    ctx = Context()
    t0 = time.perf_counter()
    with Pipeline([ShardList(shards), Untar(), GroupSamples(), Decode(transform=brighten, fuse=False)], ctx) as p:
        assert len(list(p)) == 6
    wall = time.perf_counter() - t0
    assert ctx.counts["decode"] == 6 and ctx.counts["augment"] == 6
    assert 0 < ctx.timers["augment"] <= wall and 0 < ctx.timers["decode"] <= wall
    assert ctx.timers["decode"] + ctx.timers["augment"] <= wall


def test_the_augment_stage_touches_only_image_arrays_and_times_each_sample():
    seen: list[str] = []

    def negate(img, rng=None):
        seen.append(img.dtype.name)
        return 255 - img

    stage = Augment(negate)
    image = np.full((2, 2, 3), 10, np.uint8)
    depth = np.ones((2, 2), np.float32)  # an array, but not an image field
    t0 = time.perf_counter()
    out = stage._apply({"__key__": "k", "jpg": image, "depth.npy": depth, "png": b"\x89PNG not decoded"})
    wall = time.perf_counter() - t0
    assert seen == ["uint8"]
    assert (out["jpg"] == 245).all() and out["depth.npy"] is depth and out["png"] == b"\x89PNG not decoded"
    assert stage.ctx.counts["augment"] == 1 and 0 < stage.ctx.timers["augment"] <= wall
