"""Progressive resizing: size schedules, per-epoch shapes, and a smaller DCT scale for small sizes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import (
    CenterCrop,
    Compose,
    Ramp,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    at_epoch,
    ramp,
)
from shardpipe.config import build_transform
from shardpipe.image.decoders import get_decoder
from shardpipe.stages import Decode, GroupSamples, Pipeline, ShardList, Untar, expand_urls
from shardpipe.stages.base import Context
from tests.helpers import make_samples, small_jpeg, write_manifest_dataset, write_shards


def test_ramp_interpolates_rounds_down_to_the_multiple_and_clamps():
    r = ramp(160, 224, start_epoch=2, end_epoch=6, multiple=32)
    sizes = [r.at(e) for e in range(9)]
    # flat before start_epoch, linear (rounded down to /32) in between, flat after end_epoch
    assert sizes == [160, 160, 160, 160, 192, 192, 224, 224, 224]
    assert [ramp(160, 224, 0, 4, multiple=8).at(e) for e in range(5)] == [160, 176, 192, 208, 224]
    # shrinking schedules stay inside [end, start]
    assert [ramp(224, 128, 0, 3).at(e) for e in range(4)] == [224, 192, 160, 128]


@pytest.mark.parametrize(
    "args, message",
    [
        ((160, 224, 3, 3), "end_epoch > start_epoch"),
        ((0, 224, 0, 3), "sizes must be positive"),
        ((160, 224, 0, 3, 0), "multiple must be >= 1"),
    ],
)
def test_ramp_refuses_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        ramp(*args)


@pytest.mark.parametrize("make", [ramp, Ramp], ids=["ramp", "Ramp"])
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"start": 160, "end": 224.5, "end_epoch": 2}, "ramp end must be an integer, got 224.5"),
        ({"start": 160.7, "end": 224}, "ramp start must be an integer, got 160.7"),
        ({"start": 160.0, "end": 224}, "ramp start must be an integer, got 160.0"),  # as Resize(160.0) is refused
        ({"start": 160, "end": 224, "end_epoch": 2.5}, "ramp end_epoch must be an integer, got 2.5"),
        ({"start": True, "end": 224}, "ramp start must be an integer, got True"),
        ({"start": "160", "end": 224}, "ramp start must be an integer, got '160'"),
    ],
)
def test_a_schedule_with_a_non_integer_is_refused_where_it_is_made(make, kwargs, message):
    """Not when a later epoch reaches the bad size in the workers (``Ramp``), nor rounded quietly (``ramp``)."""
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        RandomResizedCrop(make(**kwargs))
    assert ramp(np.int64(160), np.int64(224), end_epoch=np.int64(3)) == Ramp(160, 224, 0, 3)  # numpy's integers


def test_config_refuses_a_ramp_that_is_not_a_mapping():
    with pytest.raises(
        ValueError,
        match=r"^config: transform RandomResizedCrop: a ramp is a mapping, as \{ramp: \{start: 160, .*got "
        r"\{'ramp': \[160, 224\]\}$",
    ):
        build_transform([{"RandomResizedCrop": {"size": {"ramp": [160, 224]}}}])


def test_at_epoch_fixes_sizes_and_leaves_plain_transforms_alone():
    plain = Compose([RandomResizedCrop(224), RandomHorizontalFlip()])
    assert at_epoch(plain, 5) is plain  # nothing scheduled: the same object, no copy
    scheduled = Compose([Resize(ramp(128, 256, 0, 4)), CenterCrop(ramp(96, 224, 0, 4)), RandomHorizontalFlip()])
    at3 = at_epoch(scheduled, 3)
    assert at3.transforms[0].size == 224 and at3.transforms[1].size == (192, 192)
    assert at3.transforms[2] is scheduled.transforms[2]
    # the original keeps its schedule and its epoch-0 size
    assert scheduled.transforms[0].size == 128 and scheduled.transforms[1].size == (96, 96)
    img = np.zeros((300, 400, 3), np.uint8)
    assert at3(img, np.random.default_rng(0)).shape == (192, 192, 3)


def test_config_reads_a_ramp():
    t = build_transform([{"RandomResizedCrop": {"size": {"ramp": {"start": 128, "end": 224, "end_epoch": 3}}}}])
    assert [at_epoch(t, e).transforms[0].size for e in range(4)] == [(128, 128), (160, 160), (192, 192), (224, 224)]


def test_batch_shapes_follow_the_schedule_per_epoch(tmp_path):
    samples = make_samples(24)
    manifest = write_manifest_dataset(tmp_path, samples, [10, 14])
    size = ramp(32, 64, start_epoch=0, end_epoch=2, multiple=16)
    ds = ShardDataset(
        manifest, shuffle=8, seed=3, transform=Compose([RandomResizedCrop(size), RandomHorizontalFlip()]), batch_size=8
    )
    loader = ShardLoader(ds, num_workers=2)
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = list(loader)
        side = size.at(epoch)
        assert {tuple(b["jpg"].shape[1:]) for b in batches} == {(3, side, side)}
        assert sorted(k for b in batches for k in b["__key__"]) == sorted(s["__key__"] for s in samples)


class ScaleRecorder:
    """A real decoder backend that remembers the DCT scale of every decode."""

    def __init__(self, inner):
        self.inner, self.name, self.scales = inner, "recorder", []
        self.scale_factors = inner.scale_factors

    def size(self, data):
        return self.inner.size(data)

    def decode(self, data):
        self.scales.append((1, 1))
        return self.inner.decode(data)

    def decode_scaled(self, data, scale):
        self.scales.append(tuple(scale))
        return self.inner.decode_scaled(data, scale)


def test_small_sizes_decode_at_a_smaller_dct_scale(tmp_path):
    inner = get_decoder("auto")
    if not hasattr(inner, "decode_scaled"):
        pytest.skip(f"decoder {inner.name} has no scaled decode")
    jpeg = small_jpeg(1, size=(512, 512))
    samples = [{"__key__": f"k{i}", "jpg": jpeg, "cls": i} for i in range(4)]
    urls = write_shards(tmp_path, samples, [4])
    recorder = ScaleRecorder(inner)
    decode = Decode("rgb8", recorder, Resize(ramp(160, 224, start_epoch=0, end_epoch=1)))
    shapes = {}
    for epoch in (0, 1):
        pipe = Pipeline([ShardList(expand_urls(urls)), Untar(), GroupSamples(), decode], Context(epoch=epoch))
        recorder.scales.clear()
        shapes[epoch] = {s["jpg"].shape for s in pipe}
        scales = set(recorder.scales)
        # 512 px at 1/2 is 256 px: enough for 160 with the 1.5x scale margin (240), not for 224 (336)
        assert scales == ({(1, 2)} if epoch == 0 else {(1, 1)})
    assert shapes == {0: {(160, 160, 3)}, 1: {(224, 224, 3)}}
