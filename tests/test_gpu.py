"""Batch decoders behind one contract: the CPU one, the fallback logic, the batch-dict helper,
and a DataLoader whose workers hand batches of bytes to the main process."""

from __future__ import annotations

import importlib.util
import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import shardpipe
from shardpipe.augment import CenterCrop, Resize
from shardpipe.batchdecode import BatchDecodeLoader, decode_batch, registry, resolve_batch_decoder
from shardpipe.batchdecode.cpu import CpuBatchDecoder
from shardpipe.devtools.synth import make_jpeg
from shardpipe.errors import DecodeError
from shardpipe.image.decoders.pil import PilDecoder

HAS_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed (pip install shardpipe[gpu])")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def grey_jpeg(level: int, size: tuple[int, int]) -> bytes:
    """A flat JPEG whose decoded level, after any crop/resize/flip, tells its label."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), level, np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def level_of(label: int) -> int:
    return 15 + 25 * label


def label_of(images: torch.Tensor) -> list[int]:
    return ((images.float().mean(dim=(1, 2, 3)).cpu() - 15) / 25).round().long().tolist()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [make_jpeg(i, seed=5) for i in range(12)]


# -- the CPU batch decoder ------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
def test_cpu_decoder_shapes_and_dtypes(photos, train):
    dec = CpuBatchDecoder((40, 56), train=train, resize_short=64, num_threads=2)
    out = dec(photos)
    assert out.shape == (12, 3, 40, 56) and out.dtype == torch.uint8
    norm = CpuBatchDecoder(32, train=train, dtype="half", normalize=((0.5,) * 3, (0.25,) * 3), num_threads=2)
    out = norm(photos[:3])
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float16 and float(out.min()) < 0
    assert dec([]).shape == (0, 3, 40, 56)


def test_cpu_decoder_validation_equals_resize_and_center_crop(photos):
    # Resize + CenterCrop is fused: only the crop's box is resampled (no DCT downscaling at this
    # scale), so pixels differ from resize-whole-then-crop by rounding at most, where the filter
    # meets the box's edges
    out = CpuBatchDecoder(224, train=False, resize_short=256, decoder="pil", num_threads=2)(photos)
    for i, data in enumerate(photos):
        ref = CenterCrop(224)(Resize(256)(PilDecoder().decode(data), None), None)
        diff = np.abs(out[i].permute(1, 2, 0).numpy().astype(np.int16) - ref)
        assert diff.max() <= 1 and diff.mean() < 0.25, (i, diff.max(), diff.mean())


def test_cpu_decoder_randomness_follows_seed_key_and_epoch(photos):
    keys = [f"key-{i}" for i in range(12)]
    a = CpuBatchDecoder(32, seed=3, num_threads=2).decode(photos, keys)[0]
    b = CpuBatchDecoder(32, seed=3, num_threads=1).decode(photos, keys)[0]
    assert torch.equal(a, b)  # per-key generators: thread count does not matter
    reordered = CpuBatchDecoder(32, seed=3).decode(photos[::-1], keys[::-1])[0]
    assert torch.equal(reordered, a.flip(0))  # ...nor does the order within the batch
    later = CpuBatchDecoder(32, seed=3)
    later.set_epoch(1)
    assert not torch.equal(later.decode(photos, keys)[0], a)


# -- the batch-dict helper ------------------------------------------------------------------
def bad_batch() -> dict:
    labels = [3, 1, 4, 1, 5, 2, 6, 0]
    images = [grey_jpeg(level_of(lab), (64 + 9 * i, 48 + 5 * i)) for i, lab in enumerate(labels)]
    images[2] = images[2][:40]  # truncated inside the JPEG header
    images[5] = b"\x00" * 100
    return {
        "jpg": images,
        "cls": torch.tensor(labels),
        "__key__": [f"s{i}" for i in range(8)],
        "__url__": tuple(f"shard-{i // 4}.tar" for i in range(8)),
        "weight": np.arange(8, dtype=np.float32),
        "epoch": 7,  # not per-sample: left alone
    }


def test_decode_batch_drops_bad_images_with_their_labels_and_keys():
    dec = CpuBatchDecoder(24, on_error="skip", num_threads=2)
    out = decode_batch(dec, bad_batch())
    keep = [0, 1, 3, 4, 6, 7]
    assert out["__key__"] == [f"s{i}" for i in keep]
    assert out["__url__"] == tuple(f"shard-{i // 4}.tar" for i in keep)
    assert out["cls"].tolist() == [3, 1, 1, 5, 6, 0] == label_of(out["jpg"])
    assert out["weight"].tolist() == keep and out["epoch"] == 7
    assert dec.errors.counts == {"DecodeError": 2}


def test_decode_batch_raises_naming_the_key():
    with pytest.raises(DecodeError, match=r"sample 's2': image does not decode"):
        CpuBatchDecoder(24, on_error="raise").decode_batch(bad_batch())


def test_decode_batch_other_image_field_and_missing_field():
    batch = bad_batch()
    batch["png"] = batch.pop("jpg")
    out = CpuBatchDecoder(24, on_error="skip").decode_batch(batch, image_field="png")
    assert out["png"].shape == (6, 3, 24, 24)
    with pytest.raises(KeyError, match=r"batch has no field 'jpg'; fields: \[.*'png'"):
        decode_batch(CpuBatchDecoder(24), batch)


# -- choosing a decoder ---------------------------------------------------------------------
@no_cuda
def test_auto_falls_back_to_cpu_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(registry, "_announced", False)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        first = resolve_batch_decoder("auto", size=32, train=False)
        second = resolve_batch_decoder("auto", size=32, batch_size=64, device_id=0)
    assert isinstance(first, CpuBatchDecoder) and isinstance(second, CpuBatchDecoder)
    messages = [r.getMessage() for r in caplog.records if "GPU batch decode unavailable" in r.getMessage()]
    assert len(messages) == 1
    expected = "torch.cuda.is_available() is False" if HAS_DALI else "pip install shardpipe[gpu]"
    assert expected in messages[0] and "CPU threads" in messages[0]


@no_cuda
@needs_dali
def test_dali_on_gpu_without_gpu_raises():
    with pytest.raises(RuntimeError, match=r"DALI GPU decode \(device='gpu'\) needs a usable NVIDIA GPU"):
        resolve_batch_decoder("dali", size=32)


@needs_dali
def test_dali_in_cpu_mode_through_resolve(photos):
    from shardpipe.batchdecode.dali import DaliBatchDecoder

    dec = resolve_batch_decoder("dali", device="cpu", size=32, batch_size=4, num_threads=2, cpu_decoder="pil")
    assert isinstance(dec, DaliBatchDecoder) and dec.device == "cpu"
    assert dec(photos).shape == (12, 3, 32, 32)


def test_unknown_decoder_name():
    with pytest.raises(
        ValueError, match=r"unknown batch decoder 'nvjpeg': choose one of \['auto', 'cpu', 'dali', 'torchvision'\]$"
    ):
        resolve_batch_decoder("nvjpeg")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_torchvision_decoder_without_torchvision_says_how_to_install():
    with pytest.raises(ImportError, match=r"the torchvision GPU decoder needs torchvision: pip install torchvision"):
        resolve_batch_decoder("torchvision", size=32)


# -- with a DataLoader: workers read and shuffle bytes, the main process decodes --------------
@pytest.fixture(scope="module")
def label_shards(tmp_path_factory) -> tuple[str, dict[str, int]]:
    root = tmp_path_factory.mktemp("gpu-shards")
    labels = {}
    with shardpipe.ShardWriter(str(root / "train-%04d.tar"), maxcount=15) as writer:
        for i in range(60):
            key, label = f"img{i:04d}", (i * 7) % 9
            labels[key] = label
            data = grey_jpeg(level_of(label), (70 + i % 13 * 5, 50 + i % 7 * 9))
            if i == 33:
                data = data[: len(data) // 8]  # a corrupt image somewhere in the stream
            writer.write({"__key__": key, "jpg": data, "cls": label})
    return str(root / "train-{0000..0003}.tar"), labels


@pytest.mark.parametrize("kind", ["cpu", pytest.param("dali", marks=needs_dali)])
def test_dataloader_workers_hand_byte_batches_to_the_batch_decoder(label_shards, kind):
    urls, labels = label_shards
    dataset = shardpipe.ShardDataset(urls, decode="encoded", batch_size=8, shuffle=20, seed=1)
    loader = torch.utils.data.DataLoader(dataset, num_workers=2, batch_size=None)
    options = {"device": "cpu", "batch_size": 8} if kind == "dali" else {}
    decoder = resolve_batch_decoder(kind, size=16, on_error="skip", num_threads=2, **options)
    seen = []
    decoded = BatchDecodeLoader(loader, decoder)
    for batch in decoded:
        assert batch["jpg"].shape[1:] == (3, 16, 16) and len(batch["jpg"]) == len(batch["__key__"])
        assert batch["cls"].tolist() == [labels[k] for k in batch["__key__"]] == label_of(batch["jpg"])
        seen += batch["__key__"]
    assert sorted(seen) == sorted(k for k in labels if k != "img0033")
    assert decoder.skipped == 1
    assert decoded.images == 59 and decoded.decode_seconds > 0


def _crops(loader) -> dict[str, torch.Tensor]:
    return {k: img for batch in loader for k, img in zip(batch["__key__"], batch["jpg"])}


def test_batch_decode_loader_draws_new_crops_each_epoch_from_the_shard_loader(tmp_path):
    with shardpipe.ShardWriter(str(tmp_path / "p-%04d.tar"), maxcount=6) as writer:
        for i in range(12):
            writer.write({"__key__": f"p{i:02d}", "jpg": make_jpeg(i, seed=5, plain=True), "cls": i})
    urls = str(tmp_path / "p-{0000..0001}.tar")

    def loader() -> BatchDecodeLoader:
        dataset = shardpipe.ShardDataset(urls, decode="encoded", batch_size=4, seed=1)
        return BatchDecodeLoader(shardpipe.ShardLoader(dataset), CpuBatchDecoder(24, seed=3, num_threads=2))

    decoded = loader()
    first, second = _crops(decoded), _crops(decoded)  # the ShardLoader moves to epoch 1 on pass 2
    assert sorted(first) == sorted(second) == [f"p{i:02d}" for i in range(12)]
    assert decoded.batch_decoder.epoch == 1 == decoded.batches.dataset.epoch
    assert all(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(a, first[k]) for k, a in _crops(loader()).items())  # a new loader: epoch 0 again
    later = loader()
    later.set_epoch(1)  # passed on to the ShardLoader
    assert all(torch.equal(a, second[k]) for k, a in _crops(later).items())


def test_batch_decode_loader_counts_passes_over_a_plain_iterable(photos):
    keys = [f"k{i}" for i in range(12)]
    batches = [{"jpg": photos[i : i + 4], "__key__": keys[i : i + 4]} for i in (0, 4, 8)]

    def loader() -> BatchDecodeLoader:
        return BatchDecodeLoader(batches, CpuBatchDecoder(24, seed=3, num_threads=2))

    decoded = loader()
    passes = [_crops(decoded) for _ in range(3)]
    assert [sorted(p) for p in passes] == [sorted(keys)] * 3 and decoded.passes == 3
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert all(not torch.equal(passes[a][k], passes[b][k]) for k in keys)
    again = loader()
    assert all(torch.equal(x, passes[0][k]) for k, x in _crops(again).items())
    again.set_epoch(2)
    assert all(torch.equal(x, passes[2][k]) for k, x in _crops(again).items())


# -- on a GPU ------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
@needs_dali
def test_auto_uses_dali_on_the_gpu(photos):
    from shardpipe.batchdecode.dali import DaliBatchDecoder

    dec = resolve_batch_decoder("auto", size=32)
    assert isinstance(dec, DaliBatchDecoder) and dec.device == "gpu"
    out = dec.decode_batch({"jpg": photos, "cls": torch.arange(12), "__key__": [str(i) for i in range(12)]})
    assert out["jpg"].device.type == "cuda" and out["jpg"].shape == (12, 3, 32, 32)
