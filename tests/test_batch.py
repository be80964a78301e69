"""Batch and collate on their own: field types, layouts, short batches, allocation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shardpipe.stages import Batch, Context, Map, Pipeline, Shard, ShardList
from shardpipe.stages.batch import collate, collate_images, empty_uint8


def image(i: int, h: int = 4, w: int = 3, c: int = 3) -> np.ndarray:
    return (np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c) + i).astype(np.uint8)


def test_collate_by_field_type():
    samples = [
        {"__key__": "a", "__shard__": 0, "jpg": image(0), "cls": 1, "w": 0.5, "ok": True, "t": torch.ones(2), "m": "x"},
        {"__key__": "b", "__shard__": 3, "jpg": image(1), "cls": np.int64(4), "w": 1.5, "ok": False, "t": torch.zeros(2), "m": "y"},
    ]  # fmt: skip
    out = collate(samples)
    assert out["__key__"] == ["a", "b"] and out["__shard__"] == [0, 3]  # "__" ints stay a list
    assert out["cls"].dtype == torch.int64 and out["cls"].tolist() == [1, 4]
    assert out["w"].dtype == torch.float32 and out["w"].tolist() == [0.5, 1.5]
    assert out["ok"].dtype == torch.bool and out["ok"].tolist() == [True, False]
    assert torch.equal(out["t"], torch.stack([torch.ones(2), torch.zeros(2)]))
    assert out["m"] == ["x", "y"]
    jpg = out["jpg"]
    assert jpg.dtype == torch.uint8 and jpg.shape == (2, 3, 4, 3) and jpg.is_contiguous()
    assert np.array_equal(jpg[1].permute(1, 2, 0).numpy(), image(1))


def test_a_field_only_some_samples_have_becomes_a_list_with_none():
    out = collate([{"a": 1, "b": 2}, {"a": 3}])
    assert out["a"].tolist() == [1, 3] and out["b"] == [2, None]
    assert list(out) == ["a", "b"]
    later = collate([{"b": 2, "a": 1}, {"a": 3}])  # a field after the partial one is collated too
    assert list(later) == ["b", "a"] and later["b"] == [2, None] and later["a"].tolist() == [1, 3]


def test_channels_last_keeps_the_pixels_in_nhwc_memory():
    images = [image(0), image(7)]
    nchw = collate_images(images)
    cl = collate_images(images, channels_last=True)
    assert cl.shape == nchw.shape == (2, 3, 4, 3)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(cl, nchw)


def test_grey_images_get_one_channel_and_tensors_are_stacked():
    grey = [np.full((2, 5), 9, np.uint8), np.full((2, 5), 7, np.uint8)]
    out = collate_images(grey)
    assert out.shape == (2, 1, 2, 5) and out[:, 0, 0, 0].tolist() == [9, 7]
    chw = [torch.full((3, 2, 2), 1, dtype=torch.uint8), torch.full((3, 2, 2), 2, dtype=torch.uint8)]
    assert torch.equal(collate_images(chw), torch.stack(chw))
    into = torch.empty((2, 3, 2, 2), dtype=torch.uint8)
    assert collate_images(chw, out=into).data_ptr() == into.data_ptr()


def test_images_of_different_sizes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"^cannot batch images of different sizes \(4x3 and 5x3\): add a transform"):
        collate_images([image(0), image(1, h=5)])
    with pytest.raises(ValueError, match=r"^cannot batch images of different sizes \(4x3 and 4x5\): add a transform"):
        collate_images([image(0), image(1, w=5, c=3)])
    with pytest.raises(ValueError, match=r"^cannot batch images of different sizes \(4x3 and 4x7\): "):
        collate([{"jpg": image(0, c=1)[:, :, 0]}, {"jpg": image(1, w=7, c=1)[:, :, 0]}])


def test_grey_and_colour_arrays_become_image_tensors_in_collate():
    grey = [np.full((2, 5), 9, np.uint8), np.full((2, 5), 7, np.uint8)]
    out = collate([{"g": grey[0], "c": image(0)}, {"g": grey[1], "c": image(1)}])
    assert isinstance(out["g"], torch.Tensor) and out["g"].shape == (2, 1, 2, 5)
    assert out["g"][:, 0, 0, 0].tolist() == [9, 7]
    assert isinstance(out["c"], torch.Tensor) and out["c"].shape == (2, 3, 4, 3)
    flat = [np.arange(4, dtype=np.uint8), np.arange(4, dtype=np.uint8)]  # 1-D: not an image
    other = [np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32)]  # not uint8: not an image
    out = collate([{"f": flat[0], "o": other[0]}, {"f": flat[1], "o": other[1]}])
    assert isinstance(out["f"], list) and isinstance(out["o"], list)


def test_the_allocator_is_used_and_outside_workers_memory_is_private():
    shapes = []

    def alloc(shape):
        shapes.append(shape)
        return torch.empty(shape, dtype=torch.uint8)

    collate_images([image(0)], alloc=alloc)
    collate_images([image(0)], channels_last=True, alloc=alloc)
    assert shapes == [(1, 3, 4, 3), (1, 4, 3, 3)]
    t = empty_uint8((2, 3))
    assert t.shape == (2, 3) and t.dtype == torch.uint8 and not t.is_shared()


def numbered(n: int) -> list:
    return [ShardList([Shard(f"s{i}", i) for i in range(n)]), Map(lambda s: {"i": s.index})]


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batches_and_the_short_last_one(drop_last: bool, sizes: list[int]):
    ctx = Context()
    batches = list(Pipeline([*numbered(10), Batch(4, drop_last=drop_last)], ctx))
    assert [len(b["i"]) for b in batches] == sizes
    assert [i for b in batches for i in b["i"].tolist()] == list(range(sum(sizes)))
    assert ctx.counts["batch"] == sum(sizes) and ctx.timers["batch"] > 0


def test_the_short_last_batch_is_kept_by_default_and_a_batch_of_one_is_fine():
    assert [len(b["i"]) for b in Pipeline([*numbered(10), Batch(4)], Context())] == [4, 4, 2]
    assert [b["i"].tolist() for b in Pipeline([*numbered(3), Batch(1)], Context())] == [[0], [1], [2]]


def _image_sample(shard: Shard) -> dict:
    return {"jpg": image(shard.index), "i": shard.index}


class BatchesOfImages(torch.utils.data.IterableDataset):
    """Batches of images from a Batch stage; each says whether its tensor (and a bare
    ``empty_uint8``) was allocated in shared memory where it was made."""

    def __init__(self, buffers=None):
        super().__init__()
        self.buffers = buffers

    def __iter__(self):
        stages = [ShardList([Shard(f"s{i}", i) for i in range(5)]), Map(_image_sample)]
        for batch in Pipeline([*stages, Batch(2, buffers=self.buffers)], Context()):
            bare = empty_uint8((2, 3, 4))
            yield {**batch, "shared": batch["jpg"].is_shared(), "bare": f"{tuple(bare.shape)} {bare.is_shared()}"}


def test_inside_a_worker_batches_are_made_in_shared_memory():
    from shardpipe import worker_context

    ds = BatchesOfImages()
    here = list(ds)  # in this process: private memory
    assert [b["i"].tolist() for b in here] == [[0, 1], [2, 3], [4]]
    assert [(b["shared"], b["bare"]) for b in here] == [(False, "(2, 3, 4) False")] * 3
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=1, multiprocessing_context=worker_context(ds), timeout=120
    )
    got = list(loader)
    assert [b["i"].tolist() for b in got] == [[0, 1], [2, 3], [4]]
    assert [(b["shared"], b["bare"]) for b in got] == [(True, "(2, 3, 4) True")] * 3
    for b, ref in zip(got, here):
        assert torch.equal(b["jpg"], ref["jpg"])


def test_an_exact_multiple_has_no_empty_batch():
    assert [len(b["i"]) for b in Pipeline([*numbered(8), Batch(4)], Context())] == [4, 4]


@pytest.mark.parametrize("size", [0, -2])
def test_batch_size_must_be_positive(size: int):
    with pytest.raises(ValueError, match=rf"^batch_size must be >= 1, not {size}$"):
        Batch(size)


@pytest.mark.parametrize("opencv", [True, False])
def test_nchw_collate_equals_a_transposed_stack_with_and_without_opencv(opencv, monkeypatch):
    """Contiguous NCHW batches are written with cv2.split into each image's planes (numpy's strided
    copy without OpenCV): the same bytes either way, for any mix of inputs collate accepts."""
    import shardpipe.stages.batch as batch_module

    if not opencv:
        monkeypatch.setattr(batch_module, "cv2", None)
    rng = np.random.default_rng(3)
    rgb = [rng.integers(0, 256, (7, 5, 3), dtype=np.uint8) for _ in range(3)]
    flipped = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)[:, ::-1]  # not C-contiguous
    grey = rng.integers(0, 256, (7, 5), dtype=np.uint8)  # broadcast to every channel
    images = [*rgb, flipped, grey]
    want = np.stack(
        [np.transpose(np.broadcast_to(i if i.ndim == 3 else i[:, :, None], (7, 5, 3)), (2, 0, 1)) for i in images]
    )
    got = collate_images(images)
    assert got.is_contiguous() and got.shape == (5, 3, 7, 5)
    assert np.array_equal(got.numpy(), want)
    rgba = [rng.integers(0, 256, (4, 6, 4), dtype=np.uint8) for _ in range(2)]
    assert np.array_equal(collate_images(rgba).numpy(), np.stack([np.transpose(i, (2, 0, 1)) for i in rgba]))
    if opencv:  # the split really wrote into the planes it was given (no silent fallback)
        planes = np.zeros((3, 7, 5), np.uint8)
        assert batch_module._split_into(rgb[0], planes) and np.array_equal(planes, np.transpose(rgb[0], (2, 0, 1)))
        assert not batch_module._split_into(flipped, planes)


@pytest.mark.parametrize("channels_last", [False, True])
def test_chw_uint8_tensors_are_collated_like_arrays_into_the_batch_allocation(channels_last):
    """decode="torchrgb8" samples (CHW views of HWC memory, or contiguous CHW tensors) take the array
    path: the batch comes from ``alloc`` (the worker's recycled shared memory), equal to torch.stack."""
    rng = np.random.default_rng(5)
    views = [torch.from_numpy(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)).permute(2, 0, 1) for _ in range(2)]
    contiguous = [torch.from_numpy(rng.integers(0, 256, (3, 6, 4), dtype=np.uint8)) for _ in range(2)]
    made = []

    def alloc(shape):
        made.append(shape)
        return torch.empty(shape, dtype=torch.uint8)

    samples = [{"jpg": t, "cls": i} for i, t in enumerate(views + contiguous)]
    got = collate(samples, channels_last=channels_last, alloc=alloc)["jpg"]
    assert torch.equal(got, torch.stack(views + contiguous))
    assert made == [(4, 6, 4, 3) if channels_last else (4, 3, 6, 4)]
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    floats = [torch.rand(3, 2, 2) for _ in range(2)]  # not images: stacked by torch, as before
    assert torch.equal(collate([{"x": f} for f in floats], alloc=alloc)["x"], torch.stack(floats))
    assert len(made) == 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_batch_stage_lays_images_out_as_asked_and_times_itself(channels_last):
    import time

    ctx = Context()
    stages = [ShardList([Shard(f"s{i}", i) for i in range(6)]), Map(_image_sample)]
    t0 = time.perf_counter()
    batches = list(Pipeline([*stages, Batch(3, channels_last=channels_last)], ctx))
    wall = time.perf_counter() - t0
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(b["jpg"].is_contiguous(memory_format=layout) for b in batches)
    assert all(b["jpg"].is_contiguous() != channels_last for b in batches)
    assert torch.equal(batches[1]["jpg"][0], torch.from_numpy(image(3)).permute(2, 0, 1))
    assert 0 < ctx.timers["batch"] < wall and ctx.counts["batch"] == 6
    samples = [{"jpg": image(i)} for i in range(2)]
    assert collate(samples, channels_last=True)["jpg"].is_contiguous(memory_format=torch.channels_last)


def test_other_tensors_are_stacked_into_the_given_tensor():
    floats = [torch.full((2, 3), float(i)) for i in range(3)]
    into = torch.empty((3, 2, 3))
    got = collate_images(floats, out=into)
    assert got.data_ptr() == into.data_ptr() and torch.equal(into, torch.stack(floats))


@pytest.mark.parametrize("channels", [2, 3, 4, 5])
def test_contiguous_nchw_batches_are_written_by_opencvs_split(channels, monkeypatch):
    """The fast path is taken for every image of 2-4 channels (more: numpy's copy), and the result
    is the transposed stack either way."""
    import shardpipe.stages.batch as batch_module

    if batch_module.cv2 is None:
        pytest.skip("OpenCV is an optional dependency")  # installed by make test
    calls = []
    real = batch_module._split_into

    def counting(img, planes):
        calls.append((img.shape, real(img, planes)))
        return calls[-1][1]

    monkeypatch.setattr(batch_module, "_split_into", counting)
    images = [image(i, c=channels) for i in range(3)]
    got = collate_images(images)
    assert calls == [((4, 3, channels), channels <= 4)] * 3
    assert np.array_equal(got.numpy(), np.stack([np.transpose(i, (2, 0, 1)) for i in images]))
    collate_images(images, channels_last=True)  # channels_last: one plain copy each, no split
    assert len(calls) == 3
