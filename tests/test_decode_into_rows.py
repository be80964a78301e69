"""Images decoded straight into their row of a channels_last batch: same pixels, written once."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from shardpipe import ShardDataset, ShardLoader, worker_context
from shardpipe.augment import (
    CenterCrop,
    ColorJitter,
    Compose,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    Resize,
    Transform,
    hflip,
    ramp,
    resized_crop,
    sample_rng,
    vflip,
)
from shardpipe.devtools.synth import make_image
from shardpipe.image.fused import build_image_fn
from shardpipe.stages import Batch, Context, Map, Pipeline
from shardpipe.stages.base import Stage
from shardpipe.stages.batch import collate
from shardpipe.stages.buffers import SLOTS, BatchBuffers
from shardpipe.stages.decode import Decode

from .helpers import decoder_or_skip, make_samples, small_jpeg, write_shards


def photo(index: int, size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    make_image(index, size=size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- the kernels take an ``out`` ------------------------------------------------------------


@pytest.mark.parametrize(
    "box", [(10, 20, 100, 120), (10.5, 20.25, 100.5, 121.75), (0, 0, 240, 320)], ids=["whole", "fraction", "all"]
)
@pytest.mark.parametrize("size", [(64, 48), (224, 224), (300, 400)], ids=["down", "square", "up"])
def test_resized_crop_writes_into_a_fitting_array_the_pixels_of_a_new_one(box, size) -> None:
    img = np.asarray(make_image(3, size=(320, 240)))
    h, w = size
    want = resized_crop(img, box, h, w)
    out = np.full((h, w, 3), 7, np.uint8)
    got = resized_crop(img, box, h, w, out)
    assert np.shares_memory(got, out) and got.shape == (h, w, 3)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize(
    "make_out",
    [
        lambda: np.zeros((64, 49, 3), np.uint8),  # wrong size
        lambda: np.zeros((64, 48, 4), np.uint8),  # wrong channels
        lambda: np.zeros((64, 48, 3), np.int16),  # wrong dtype
        lambda: np.zeros((64, 96, 3), np.uint8)[:, ::2],  # not contiguous
    ],
    ids=["size", "channels", "dtype", "strided"],
)
def test_resized_crop_leaves_an_array_that_does_not_fit_alone(make_out) -> None:
    img = np.asarray(make_image(4, size=(320, 240)))
    out = make_out()
    before = out.copy()
    got = resized_crop(img, (5, 5, 200, 150), 64, 48, out)
    np.testing.assert_array_equal(got, resized_crop(img, (5, 5, 200, 150), 64, 48))
    assert not np.shares_memory(got, out)
    np.testing.assert_array_equal(out, before)


def test_resized_crop_leaves_a_read_only_array_alone() -> None:
    img = np.asarray(make_image(5, size=(320, 240)))
    out = np.zeros((64, 48, 3), np.uint8)
    out.flags.writeable = False
    got = resized_crop(img, (0, 0, 240, 320), 64, 48, out)
    assert not np.shares_memory(got, out) and not out.any()


@pytest.mark.parametrize("flip, axis", [(hflip, 1), (vflip, 0)])
@pytest.mark.parametrize("shape", [(224, 224, 3), (7, 5, 3), (3, 1, 4), (6, 9, 1)])
def test_flips_write_into_another_array_or_in_place(flip, axis, shape) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    want = np.flip(img, axis)
    out = np.zeros_like(img)
    got = flip(img, out)
    assert np.shares_memory(got, out)
    np.testing.assert_array_equal(out, want)
    same = img.copy()
    got = flip(same, same)  # in place
    assert np.shares_memory(got, same)
    np.testing.assert_array_equal(same, want)
    np.testing.assert_array_equal(flip(img), want)  # and without ``out`` a new array, as before


TRANSFORMS = {
    "crop": Compose([RandomResizedCrop(96)]),
    "crop+hflip": Compose([RandomResizedCrop(96), RandomHorizontalFlip()]),
    "crop+vflip": Compose([RandomResizedCrop(96), RandomVerticalFlip()]),
    "resize+centre": Compose([Resize(110), CenterCrop(96)]),
    "resize": Compose([Resize((96, 96))]),
    "centre": Compose([CenterCrop(96)]),
    "crop+jitter": Compose([RandomResizedCrop(96), RandomHorizontalFlip(), ColorJitter(0.4, 0.4, 0.4)]),
}
#: transforms whose last step cannot write into ``out`` (the result lies elsewhere)
NOT_INTO = {"crop+jitter"}


@pytest.mark.parametrize("name", ["native", "pil"])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_image_functions_give_the_same_pixels_and_draws_with_and_without_out(name, transform, fuse) -> None:
    fn = build_image_fn(decoder_or_skip(name), TRANSFORMS[transform], fuse=fuse)
    for seed in range(6):
        data = photo(seed, (320, 240) if seed % 2 else (200, 260))
        rng_a, rng_b = sample_rng(seed, 0, "k"), sample_rng(seed, 0, "k")
        want = fn(data, rng_a)
        out = np.full(want.shape, 3, np.uint8)
        got = fn(data, rng_b, out)
        np.testing.assert_array_equal(got, want)
        assert rng_a.random() == rng_b.random()  # the same draws, in the same order
        if fuse and transform not in NOT_INTO:
            assert np.shares_memory(got, out), (transform, seed)
            np.testing.assert_array_equal(out, want)


# -- the stages -----------------------------------------------------------------------------


def test_only_an_inline_decode_into_arrays_writes_into_rows() -> None:
    assert Decode("rgb8").writes_into and Decode("torchrgb8").writes_into
    assert not Decode("pil").writes_into
    assert not Decode("encoded").writes_into
    assert not Decode("rgb8", transform=RandomResizedCrop(8), fuse=False).writes_into  # augment runs after
    threaded = Decode("rgb8", num_threads=2)
    assert not threaded.writes_into
    with pytest.raises(RuntimeError, match="num_threads=0"):
        threaded.next_into(np.zeros((4, 4, 3), np.uint8))


def _spy(pipeline: Pipeline) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Record (key, row offered, image returned) for every ``next_into`` of the pipeline's Decode."""
    decode = next(s for s in pipeline.stages if isinstance(s, Decode))
    seen: list[tuple[str, np.ndarray, np.ndarray]] = []
    plain = decode.next_into

    def next_into(into):
        sample = plain(into)
        seen.append((sample["__key__"], into, sample["jpg"]))
        return sample

    decode.next_into = next_into  # type: ignore[method-assign]
    return seen


def per_key(urls: list[str], decode: str = "rgb8", epoch: int = 0, **kw) -> dict[str, np.ndarray]:
    """Each sample's pixels (HWC) from contiguous NCHW batches: the copying path."""
    ds = ShardDataset(urls, transform=kw.pop("transform", RandomResizedCrop(24)), batch_size=5, decode=decode, **kw)
    ds.set_epoch(epoch)
    return {k: img.permute(1, 2, 0).numpy().copy() for b in ds for k, img in zip(b["__key__"], b["jpg"])}


@pytest.mark.parametrize("decode", ["rgb8", "torchrgb8"])
def test_a_channels_last_batch_takes_each_image_where_the_decode_wrote_it(dataset_dir, decode) -> None:
    urls, samples = dataset_dir
    ref = per_key(urls, decode)
    ds = ShardDataset(urls, transform=RandomResizedCrop(24), batch_size=5, channels_last=True, decode=decode)
    pipeline = ds.build_pipeline()
    pipeline.reset()
    seen = _spy(pipeline)
    batches = list(pipeline)
    assert [len(b["__key__"]) for b in batches] == [5] * 11 + [4]  # 59 samples: a short last batch
    by_key = {k: (b, i) for b in batches for i, k in enumerate(b["__key__"])}
    assert sorted(by_key) == sorted(s["__key__"] for s in samples)
    for key, (batch, i) in by_key.items():
        np.testing.assert_array_equal(batch["jpg"][i].permute(1, 2, 0).numpy(), ref[key])
    # from the second batch on, every image was decoded into its row of the batch's tensor
    assert len(seen) == len(samples) - 5
    for key, row, img in seen:
        batch, i = by_key[key]
        image = img.permute(1, 2, 0).numpy() if decode == "torchrgb8" else img
        assert np.shares_memory(image, row)
        assert row.ctypes.data == batch["jpg"][i].data_ptr()


def test_a_bad_image_is_skipped_and_the_next_sample_takes_its_row(tmp_path) -> None:
    samples = make_samples(20)
    samples[7]["jpg"] = samples[7]["jpg"][:300]  # truncated: a DecodeError, skipped under "skip"
    urls = write_shards(tmp_path, samples, [20])
    good = [s for i, s in enumerate(samples) if i != 7]
    ref = per_key(urls, on_error="skip")
    assert len(ref) == len(good)
    ds = ShardDataset(urls, transform=RandomResizedCrop(24), batch_size=5, channels_last=True, on_error="skip")
    got = {k: img.permute(1, 2, 0).numpy() for b in ds for k, img in zip(b["__key__"], b["jpg"])}
    assert sorted(got) == sorted(s["__key__"] for s in good)
    for key, img in got.items():
        np.testing.assert_array_equal(img, ref[key])


def test_a_field_some_samples_lack_is_copied_out_of_the_rows(tmp_path) -> None:
    """The second batch's "jpg" cannot become a tensor (one sample has a "png" instead): the
    images already written into the rows are copied out of them, and the pool gets its buffer back."""
    samples = make_samples(18)
    png = io.BytesIO()
    Image.open(io.BytesIO(samples[8].pop("jpg"))).save(png, "PNG")
    samples[8]["png"] = png.getvalue()
    urls = write_shards(tmp_path, samples, [18])
    ref = {  # each sample alone (crops are seeded per key)
        s["__key__"]: s.get("jpg", s.get("png"))
        for s in ShardDataset(urls, transform=RandomResizedCrop(24), shuffle=False)
    }
    ds = ShardDataset(urls, transform=RandomResizedCrop(24), batch_size=6, channels_last=True, shuffle=False)
    kept = list(ShardLoader(ds, num_workers=1))  # all kept, so a buffer handed out twice would show
    assert [type(b["jpg"]) for b in kept] == [torch.Tensor, list, torch.Tensor]
    second = kept[1]
    assert second["jpg"][2] is None and [v is None for v in second["png"]] == [True] * 2 + [False] + [True] * 3
    for batch in kept:
        for i, key in enumerate(batch["__key__"]):
            img = batch["jpg"][i] if batch["jpg"][i] is not None else batch["png"][i]
            if isinstance(img, torch.Tensor) and img.ndim == 3 and img.shape[0] == 3 and img.shape[2] != 3:
                img = img.permute(1, 2, 0)  # a batch row (CHW); a listed image is HWC
            np.testing.assert_array_equal(np.asarray(img), ref[key])
    for img in second["jpg"]:
        assert img is None or all(not np.shares_memory(np.asarray(img), b["jpg"].numpy()) for b in (kept[0], kept[2]))


def test_sizes_that_change_between_epochs_fall_back_to_copying(dataset_dir) -> None:
    """Progressive resizing: the first batch of an epoch has a new size, so the rows of the old
    one are not used; then they are again."""
    urls, samples = dataset_dir
    transform = RandomResizedCrop(ramp(16, 48, 0, 1, multiple=16))
    ds = ShardDataset(urls, transform=transform, batch_size=5, channels_last=True)
    loader = ShardLoader(ds, num_workers=2, persistent_workers=True)
    for epoch, size in ((0, 16), (1, 48)):
        ref = per_key(urls, epoch=epoch, transform=transform)
        keys = []
        for batch in loader:
            assert batch["jpg"].shape[2:] == (size, size)
            for key, img in zip(batch["__key__"], batch["jpg"]):
                np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), ref[key])
            keys += batch["__key__"]
        assert sorted(keys) == sorted(s["__key__"] for s in samples)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("decode", ["rgb8", "torchrgb8"])
def test_loader_batches_written_in_place_have_every_pixel_and_survive_being_kept(
    dataset_dir, persistent, decode
) -> None:
    urls, samples = dataset_dir
    ds = ShardDataset(urls, transform=RandomResizedCrop(24), batch_size=5, channels_last=True, decode=decode)
    loader = ShardLoader(ds, num_workers=2, persistent_workers=persistent)
    for epoch in range(2):
        ref = per_key(urls, decode, epoch)
        kept = list(loader)  # every batch kept to the end: none may be written twice
        assert sum(len(b["__key__"]) for b in kept) == len(samples)
        for batch in kept:
            assert batch["jpg"].permute(0, 2, 3, 1).is_contiguous()
            for key, img in zip(batch["__key__"], batch["jpg"]):
                np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), ref[key])


# -- the buffer goes back to the pool when no batch takes it -------------------------------------


class BusySlots(torch.utils.data.IterableDataset):
    """A worker's batches from ``Batch(4, drop_last=True, channels_last=True)`` over 14 images
    (three batches and a dropped rest), then how many of its pool's slots are busy."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.pool = BatchBuffers()
        self.fail_at = fail_at

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        items = [{"__key__": f"k{i}", "jpg": small_jpeg(i)} for i in range(14)]

        def explode(sample):
            if sample["__key__"] == f"k{self.fail_at}":
                raise OSError("the disk went away")
            return sample

        pipeline = Pipeline(
            [
                Items(items),
                Map(explode),
                Decode("rgb8"),
                Batch(4, drop_last=True, channels_last=True, buffers=self.pool),
            ],
            Context(),
        )
        sent = 0
        try:
            for batch in pipeline:
                sent += 1
                yield {"n": len(batch["__key__"])}
        except OSError as e:
            yield {"error": str(e)}
        row = self.pool.table[info.id]
        yield {"sent": sent, "busy": int(row[:, 0].sum())}


class Items(Stage):
    """A first stage that yields prepared samples."""

    def __init__(self, items: list[dict]):
        super().__init__()
        self.items = items
        self._i = 0

    def reset(self, state=None) -> None:
        self._i = 0

    def next(self) -> dict:
        if self._i >= len(self.items):
            raise StopIteration
        self._i += 1
        return self.items[self._i - 1]


@pytest.mark.parametrize("fail_at, want", [(None, {"sent": 3, "busy": 3}), (9, {"sent": 2, "busy": 2})])
def test_a_batch_tensor_nobody_gets_goes_back_to_the_pool(fail_at, want) -> None:
    """A plain DataLoader frees nothing, so busy slots are the batches sent: the tensor taken for
    the dropped rest (or for the batch an error ended) is not among them."""
    ds = BusySlots(fail_at)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=1, multiprocessing_context=worker_context(ds), timeout=120
    )
    got = list(loader)
    assert got[-1] == want
    if fail_at is not None:
        assert got[-2] == {"error": "the disk went away"}
    assert want["busy"] < SLOTS


def test_collate_into_a_given_tensor_leaves_the_placed_rows_and_fills_the_others() -> None:
    target = torch.zeros((3, 4, 5, 3), dtype=torch.uint8)
    rows = target.numpy()
    rows[0], rows[2] = 9, 6  # "decoded in place"
    other = np.full((4, 5, 3), 4, np.uint8)
    samples = [{"jpg": np.full((4, 5, 3), 1, np.uint8), "cls": 1}, {"jpg": other, "cls": 2}, {"jpg": rows[2], "cls": 3}]
    into = {"jpg": target.permute(0, 3, 1, 2)}
    batch = collate(samples, channels_last=True, into=into, placed={0, 2})
    assert batch["jpg"].data_ptr() == target.data_ptr()
    assert [int(batch["jpg"][i].max()) for i in range(3)] == [9, 4, 6]  # row 0 was not copied over
    assert batch["cls"].tolist() == [1, 2, 3]
    fresh = collate(samples, channels_last=True, placed={0, 2})  # ``placed`` is about ``into`` alone
    assert [int(fresh["jpg"][i].max()) for i in range(3)] == [1, 4, 6]


# -- the same paths in this process (where mutation testing sees them) ----------------------------

TWO_FIELDS = Compose([RandomResizedCrop(12), RandomHorizontalFlip()])


def _raw(i: int, fields: tuple[str, ...]) -> dict:
    """A sample of raw bytes with the image fields in the order given (the decode writes the first)."""
    out: dict = {"__key__": f"k{i:02d}"}
    for n, field in enumerate(fields):
        if field == "png":
            buf = io.BytesIO()
            make_image(100 + i, size=(40, 30)).save(buf, "PNG")
            out[field] = buf.getvalue()
        else:
            out[field] = small_jpeg(i + n)
    out["cls"] = str(i).encode()
    return out


def _run(
    items: list[dict], decode: str = "rgb8", batch: int = 4, transform=TWO_FIELDS, **kw
) -> tuple[list[dict], list[torch.Tensor]]:
    """Batches of a Decode -> Batch(channels_last) pipeline in this process, and every tensor ``Batch`` took."""
    stage = Batch(batch, channels_last=True, **kw)
    taken: list[torch.Tensor] = []
    plain = stage._alloc

    def alloc(shape):
        taken.append(plain(shape))
        return taken[-1]

    stage._alloc = alloc  # type: ignore[method-assign]
    pipeline = Pipeline([Items(items), Decode(decode, transform=transform), stage], Context())
    return list(pipeline), taken


@pytest.fixture
def placed_log(monkeypatch) -> list[frozenset[int]]:
    """The ``placed`` indices of every ``collate`` call of the Batch stage (the rows it does not copy)."""
    import shardpipe.stages.batch as batch_module

    seen: list[frozenset[int]] = []
    plain = batch_module.collate

    def spy(samples, channels_last=False, alloc=batch_module.empty_uint8, into=None, placed=()):
        seen.append(frozenset(placed))
        return plain(samples, channels_last, alloc, into=into, placed=placed)

    monkeypatch.setattr(batch_module, "collate", spy)
    return seen


def _alone(items: list[dict]) -> dict[tuple[str, str], np.ndarray]:
    """Each image decoded on its own (crops are seeded per key): the reference."""
    dec = Decode("rgb8", transform=TWO_FIELDS)
    pipeline = Pipeline([Items(items), dec], Context())
    return {(s["__key__"], f): v for s in pipeline for f, v in s.items() if f in ("jpg", "png")}


def _hwc_of(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return (value.permute(1, 2, 0) if value.shape[0] == 3 and value.shape[-1] != 3 else value).numpy()
    return value


@pytest.mark.parametrize("decode", ["rgb8", "torchrgb8"])
def test_in_process_a_field_some_samples_lack_leaves_nothing_in_the_rows(decode) -> None:
    """Batch 2's "png" comes first in some samples, so the decode writes it into their rows; but
    not every sample has it, so it stays a list, and its images must not be views of a tensor
    the batch does not keep (here: jpg's values would then overwrite them)."""
    items = [_raw(i, ("jpg",)) for i in range(4)] + [
        _raw(i, ("png", "jpg") if i % 2 else ("jpg",)) for i in range(4, 8)
    ]
    items += [_raw(8, ("jpg",)), _raw(9, ()), _raw(10, ("jpg",)), _raw(11, ("jpg",))]  # one without an image
    ref = _alone(items)
    batches, taken = _run(items, decode)
    first, second, third = batches
    assert first["jpg"].data_ptr() == taken[0].data_ptr()  # batch 1: allocated as usual
    assert isinstance(third["jpg"], list) and third["jpg"][1] is None
    for img in third["jpg"]:
        assert img is None or not any(np.shares_memory(_hwc_of(img), t.numpy()) for t in taken)
    assert isinstance(second["png"], list) and [v is None for v in second["png"]] == [True, False, True, False]
    assert second["jpg"].permute(0, 2, 3, 1).is_contiguous()  # collated again, channels_last
    for batch in batches:
        for i, key in enumerate(batch["__key__"]):
            if batch["jpg"][i] is not None:
                np.testing.assert_array_equal(_hwc_of(batch["jpg"][i]), ref[(key, "jpg")])
            png = batch.get("png", [None] * 4)[i]
            if png is not None:
                np.testing.assert_array_equal(_hwc_of(png), ref[(key, "png")])
                assert not any(np.shares_memory(_hwc_of(png), t.numpy()) for t in taken)


def test_in_process_a_second_image_field_goes_beside_the_rows() -> None:
    """Every sample has "jpg" (written into the rows) and "png" (an array of its own): the batch
    keeps its tensor for "jpg" and collates "png" channels_last too."""
    items = [_raw(i, ("jpg", "png")) for i in range(8)]
    ref = _alone(items)
    batches, taken = _run(items)
    # batch 1: jpg's and png's tensors; batch 2: the rows' and png's; then the rows of a batch that never came
    assert len(taken) == 5
    second = batches[1]
    assert second["jpg"].data_ptr() == taken[2].data_ptr()  # the rows the decode wrote
    assert second["png"].permute(0, 2, 3, 1).is_contiguous() and second["png"].data_ptr() == taken[3].data_ptr()
    for batch in batches:
        for i, key in enumerate(batch["__key__"]):
            for field in ("jpg", "png"):
                np.testing.assert_array_equal(_hwc_of(batch[field][i]), ref[(key, field)])
        assert batch["cls"].tolist() == [int(k[1:]) for k in batch["__key__"]]


def test_in_process_the_rows_of_a_batch_nobody_gets_go_back_to_the_pool(monkeypatch) -> None:
    """``Batch`` gives the pool back a tensor it took but did not send: the dropped rest, and
    a batch an error ended. (The same in a real worker: test_a_batch_tensor_nobody_gets_...;
    here torch's worker info is set so that the stage takes from the pool in this process.)"""
    import shardpipe.stages.batch as batch_module

    class Info:
        id = 3

    monkeypatch.setattr(batch_module, "get_worker_info", lambda: Info)
    pool = BatchBuffers()
    busy = lambda: int(pool.table[3, :, 0].sum())  # noqa: E731
    items = [_raw(i, ("jpg",)) for i in range(10)]
    batches, _ = _run(items, batch=4, drop_last=True, buffers=pool)
    assert len(batches) == 2 and busy() == 2  # the rest's tensor (taken before its samples) went back
    del batches
    for slot in range(SLOTS):
        pool.table[3, slot, 0] = 0

    def explode(sample):
        if sample["__key__"] == "k06":
            raise OSError("the disk went away")
        return sample

    stage = Batch(4, channels_last=True, buffers=pool)
    pipeline = Pipeline([Items(items), Map(explode), Decode("rgb8", transform=TWO_FIELDS), stage], Context())
    got = []
    with pytest.raises(OSError, match="the disk went away"):
        for b in pipeline:
            got.append(b)
    assert len(got) == 1 and busy() == 1  # the second batch's tensor went back


def test_the_default_batch_layout_is_contiguous_nchw_and_floats_become_float32() -> None:
    samples = [{"jpg": np.full((4, 3, 3), i, np.uint8), "score": np.float64(i / 2)} for i in range(3)]
    batch = next(iter(Pipeline([Items(samples), Batch(3)], Context())))
    assert batch["jpg"].is_contiguous() and batch["jpg"].shape == (3, 3, 4, 3)
    assert batch["score"].dtype == torch.float32 and batch["score"].tolist() == [0.0, 0.5, 1.0]


def test_a_transform_that_returns_a_view_of_the_row_is_copied_as_it_looks() -> None:
    """A last step that returns a transposed view of the row it was given (same shape: a square
    crop) is in the rows' memory but not laid out as its row: the batch must hold what it shows."""
    transposed = Compose([RandomResizedCrop(12), lambda img: img.transpose(1, 0, 2)])
    items = [_raw(i, ("jpg",)) for i in range(8)]
    stage = Batch(4, channels_last=True)
    got = list(Pipeline([Items(items), Decode("rgb8", transform=transposed), stage], Context()))
    ref = {s["__key__"]: s["jpg"] for s in Pipeline([Items(items), Decode("rgb8", transform=transposed)], Context())}
    for batch in got:
        for i, key in enumerate(batch["__key__"]):
            np.testing.assert_array_equal(batch["jpg"][i].permute(1, 2, 0).numpy(), ref[key])


def test_images_in_their_rows_are_not_copied_again(placed_log) -> None:
    """From the second batch on, collate is told that every image is in its row already."""
    batches, _ = _run([_raw(i, ("jpg",)) for i in range(10)])
    assert [len(b["__key__"]) for b in batches] == [4, 4, 2]
    assert placed_log == [frozenset(), frozenset(range(4)), frozenset(range(2))]


class Invert(Transform):
    """A user's last step that writes into the row it is given (as the reference documents)."""

    def __call__(self, img, rng):
        return 255 - img

    def into(self, img, rng, out):
        np.subtract(255, img, out=out)
        return out


def test_a_users_transform_with_into_writes_its_result_into_the_row(placed_log) -> None:
    transform = Compose([RandomResizedCrop(12), Invert()])
    items = [_raw(i, ("jpg",)) for i in range(8)]
    got, _ = _run(items, transform=transform)
    ref = {s["__key__"]: s["jpg"] for s in Pipeline([Items(items), Decode("rgb8", transform=transform)], Context())}
    assert placed_log == [frozenset(), frozenset(range(4))]  # batch 2: every result was written into its row
    for batch in got:
        for i, key in enumerate(batch["__key__"]):
            np.testing.assert_array_equal(batch["jpg"][i].permute(1, 2, 0).numpy(), ref[key])


class InvertIntoView(Invert):
    """Writes into the row, but returns another array object over it (a full-slice view)."""

    def into(self, img, rng, out):
        return super().into(img, rng, out)[:]


@pytest.mark.parametrize("last", [Invert(), InvertIntoView()], ids=["the-row-itself", "a-view-of-it"])
def test_an_image_in_its_row_is_found_by_its_memory_whatever_the_array_object(placed_log, last) -> None:
    """The image is the row array the decode was given, or another array laid out exactly over
    that row (OpenCV and ``reshape`` return new array objects): either way it is not copied."""
    transform = Compose([RandomResizedCrop(12), last])
    items = [_raw(i, ("jpg",)) for i in range(8)]
    got, _ = _run(items, transform=transform)
    ref = {s["__key__"]: s["jpg"] for s in Pipeline([Items(items), Decode("rgb8", transform=transform)], Context())}
    assert placed_log == [frozenset(), frozenset(range(4))]
    for batch in got:
        for i, key in enumerate(batch["__key__"]):
            np.testing.assert_array_equal(batch["jpg"][i].permute(1, 2, 0).numpy(), ref[key])


@pytest.mark.parametrize(
    "extra",
    [lambda i: torch.full((2,), float(i), requires_grad=True), lambda i: torch.eye(2).mul(i).to_sparse()],
    ids=["requires-grad", "sparse"],
)
def test_tensors_numpy_cannot_view_beside_the_image_keep_the_rows(placed_log, extra) -> None:
    """A tensor of the user's beside the image (a weight that requires grad, a sparse one) cannot lie
    in the rows and has no numpy view: the placement check passes over it instead of failing on it."""
    items = [{**_raw(i, ("jpg",)), "__extra__": extra(i)} for i in range(8)]
    transform = Compose([RandomResizedCrop(12), Invert()])
    got, _ = _run(items, transform=transform)
    assert placed_log == [frozenset(), frozenset(range(4))]
    for batch in got:
        for i, value in enumerate(batch["__extra__"]):
            assert torch.equal(value.to_dense(), extra(int(batch["__key__"][i][1:])).detach().to_dense())


@pytest.mark.parametrize("decode", ["rgb8", "torchrgb8"])
def test_a_batch_of_another_size_than_the_last_is_collated_as_usual(decode) -> None:
    """The rows are taken in the last batch's size: a batch of other-sized images (whole images,
    no crop, sizes varying between batches) is collated into a tensor of its own size."""
    sizes = [(48, 40)] * 4 + [(32, 24)] * 4 + [(48, 40)] * 4
    items = [{"__key__": f"k{i:02d}", "jpg": small_jpeg(i, size=size)} for i, size in enumerate(sizes)]
    got = list(Pipeline([Items(items), Decode(decode), Batch(4, channels_last=True)], Context()))
    assert [tuple(b["jpg"].shape) for b in got] == [(4, 3, 40, 48), (4, 3, 24, 32), (4, 3, 40, 48)]
    alone = {s["__key__"]: s["jpg"] for s in Pipeline([Items(items), Decode("rgb8")], Context())}
    for batch in got:
        assert batch["jpg"].permute(0, 2, 3, 1).is_contiguous()
        for i, key in enumerate(batch["__key__"]):
            np.testing.assert_array_equal(batch["jpg"][i].permute(1, 2, 0).numpy(), alone[key])


def test_images_of_different_sizes_in_one_batch_are_still_refused_with_the_fix() -> None:
    sizes = [(48, 40)] * 4 + [(48, 40), (32, 24), (48, 40), (48, 40)]
    items = [{"__key__": f"k{i:02d}", "jpg": small_jpeg(i, size=size)} for i, size in enumerate(sizes)]
    pipeline = Pipeline([Items(items), Decode("rgb8"), Batch(4, channels_last=True)], Context())
    assert tuple(next(pipeline)["jpg"].shape) == (4, 3, 40, 48)
    with pytest.raises(
        ValueError, match=r"cannot batch images of different sizes \(40x48 and 24x32\).*batch_size=None"
    ):
        next(pipeline)


def test_images_the_decode_did_not_write_are_copied_into_the_rows() -> None:
    """Whole images (no transform: nothing writes into ``out``) of one size: from batch 2 on the
    batch takes the rows' tensor and copies every image into it."""
    items = [{"__key__": f"k{i:02d}", "jpg": small_jpeg(i, size=(48, 40))} for i in range(12)]
    batches, taken = _run(items, transform=None)
    assert [b["jpg"].data_ptr() for b in batches[1:]] == [taken[1].data_ptr(), taken[2].data_ptr()]
    alone = {s["__key__"]: s["jpg"] for s in Pipeline([Items(items), Decode("rgb8")], Context())}
    for batch in batches:
        for i, key in enumerate(batch["__key__"]):
            np.testing.assert_array_equal(batch["jpg"][i].permute(1, 2, 0).numpy(), alone[key])


def test_a_batch_that_cannot_keep_the_rows_still_takes_its_tensor_from_the_pool(monkeypatch) -> None:
    import shardpipe.stages.batch as batch_module

    class Info:
        id = 1

    monkeypatch.setattr(batch_module, "get_worker_info", lambda: Info)
    pool = BatchBuffers()
    sizes = [(48, 40)] * 4 + [(32, 24)] * 4
    items = [{"__key__": f"k{i:02d}", "jpg": small_jpeg(i, size=size)} for i, size in enumerate(sizes)]
    first, second = list(
        Pipeline([Items(items), Decode("rgb8"), Batch(4, channels_last=True, buffers=pool)], Context())
    )
    assert pool.slot_of(first["jpg"]) is not None and pool.slot_of(second["jpg"]) is not None
    assert pool.slot_of(first["jpg"]) != pool.slot_of(second["jpg"])
