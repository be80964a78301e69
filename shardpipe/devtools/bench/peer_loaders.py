"""The loaders users would pick instead of shardpipe, each used the way its documentation shows
for the fastest CPU path, on the same JPEG bytes and the same work: RandomResizedCrop(224) +
horizontal flip, uint8 batches (NCHW shape, channels_last memory, as shardpipe's fastest
configuration), 2 worker processes or 2 threads.

Where a loader leaves decoding to the user (webdataset, LitData, MosaicML streaming, SPDL), the
decode is the fastest common pick: simplejpeg (libjpeg-turbo) for the whole image, then the crop
box, OpenCV's ``INTER_AREA`` resize (antialiased when shrinking) and ``cv2.flip``. DALI decodes
only the crop's region itself (``decoders.image_random_crop``). Every loader yields
``(images, labels)``; the data each one reads is written once by ``prepare_peer_data``.
"""

from __future__ import annotations

import os
import random
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from shardpipe.augment import random_resized_crop_box


def shard_samples(path: str) -> Iterator[tuple[str, bytes, int]]:
    """(key, JPEG bytes, label) of each sample of one benchmark shard, in order."""
    with tarfile.open(path) as tar:
        current: dict[str, Any] = {}
        for member in tar:
            key, _, ext = os.path.basename(member.name).partition(".")
            if current and current["key"] != key:
                yield current["key"], current["jpg"], int(current["cls"])
                current = {}
            current["key"] = key
            current[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        if current:
            yield current["key"], current["jpg"], int(current["cls"])


def litdata_sample(path: str) -> Iterator[dict[str, Any]]:
    """``litdata.optimize``'s function: one shard in, its samples out (JPEG bytes kept as is)."""
    for _, data, label in shard_samples(path):
        yield {"jpg": data, "cls": label}


def prepare_peer_data(data: dict[str, Any], urls: list[str], kind: str) -> str:
    """The directory of ``kind``'s own format (``litdata`` or ``mds``) holding the benchmark's
    samples, written once next to the shards."""
    out = os.path.join(os.path.dirname(os.path.dirname(data["full"])), kind)
    done = out + ".ready"
    if os.path.exists(done):
        return out
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    if kind == "litdata":
        import litdata

        litdata.optimize(fn=litdata_sample, inputs=urls, output_dir=out, chunk_bytes="64MB", num_workers=1)
    elif kind == "mds":
        writer_cls = import_streaming().MDSWriter
        with writer_cls(out=out, columns={"jpg": "bytes", "cls": "int"}, size_limit="64mb") as writer:
            for url in urls:
                for _, jpg, label in shard_samples(url):
                    writer.write({"jpg": jpg, "cls": label})
    else:
        raise ValueError(f"unknown peer data format {kind!r}")
    open(done, "w").close()
    return out


def import_streaming() -> Any:
    """MosaicML streaming's ``streaming.base``.

    The package's ``__init__`` also imports its torchvision-based dataset classes, and no CPU
    torchvision works beside this torch; the loader itself never needs them.
    """
    try:
        import streaming.base as base
    except (ImportError, RuntimeError):
        import importlib.util
        import sys
        import types

        spec = importlib.util.find_spec("streaming")
        if spec is None or not spec.submodule_search_locations:
            raise
        for name in [m for m in sys.modules if m == "streaming" or m.startswith("streaming.")]:
            del sys.modules[name]
        package = types.ModuleType("streaming")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["streaming"] = package
        import streaming.base as base
    return base


class CropFlip:
    """decode (simplejpeg) -> RandomResizedCrop box -> OpenCV resize -> flip, as a user writes it."""

    def __init__(self, size: int = 224):
        self.size = size
        self._rng: np.random.Generator | None = None

    def __call__(self, data: bytes) -> np.ndarray:
        import cv2
        import simplejpeg

        if self._rng is None:  # one generator per worker (made after the fork)
            cv2.setNumThreads(1)  # the usual advice for DataLoader workers
            self._rng = np.random.default_rng()
        img = simplejpeg.decode_jpeg(bytes(data), colorspace="RGB")
        top, left, h, w = random_resized_crop_box(img.shape[0], img.shape[1], self._rng)
        out = cv2.resize(img[top : top + h, left : left + w], (self.size, self.size), interpolation=cv2.INTER_AREA)
        return cv2.flip(out, 1) if self._rng.random() < 0.5 else out


def stack(samples: list[tuple[np.ndarray, int]]) -> tuple[Any, Any]:
    """Images (HWC) and labels into one uint8 batch, NCHW shape in channels_last memory."""
    import torch

    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2)
    return images, torch.tensor([s[1] for s in samples])


def channels_first(batch: tuple[Any, Any]) -> tuple[Any, Any]:
    """A DataLoader-collated NHWC batch viewed as NCHW (no copy)."""
    images, labels = batch
    return images.permute(0, 3, 1, 2), labels


class _Mapped:
    """An iterable whose items go through ``fn``."""

    def __init__(self, source: Any, fn: Any):
        self.source, self.fn = source, fn

    def __iter__(self) -> Iterator[Any]:
        return map(self.fn, self.source)


def webdataset_loader(urls: list[str], cfg: dict[str, Any]) -> Any:
    """webdataset: raw bytes through a shuffle buffer, simplejpeg + OpenCV per sample, batched in
    the workers (webdataset's documented pattern), WebLoader with ``batch_size=None``."""
    import webdataset as wds

    crop = CropFlip(cfg["size"])
    pipe = (
        wds.WebDataset(urls, shardshuffle=True, seed=cfg["round"], empty_check=False)
        .shuffle(cfg["buffer"])
        .to_tuple("jpg", "cls")
        .map_tuple(crop, int)
        .batched(cfg["batch"], collation_fn=stack)
    )
    return wds.WebLoader(pipe, batch_size=None, num_workers=cfg["workers"])


class _DecodingDataset:
    """Mixed into a loader's dataset class: ``__getitem__`` decodes and crops the JPEG."""

    crop: CropFlip

    def __getitem__(self, index: Any) -> tuple[np.ndarray, int]:
        sample = super().__getitem__(index)  # type: ignore[misc]
        return self.crop(sample["jpg"]), sample["cls"]


def __getattr__(name: str) -> Any:
    """``LitDataset`` and ``MosaicDataset``, made on first use (their packages are optional);
    reachable by name so that spawned workers can unpickle them."""
    if name == "LitDataset":
        import litdata

        cls = type(name, (_DecodingDataset, litdata.StreamingDataset), {"__module__": __name__})
    elif name == "MosaicDataset":
        cls = type(name, (_DecodingDataset, import_streaming().StreamingDataset), {"__module__": __name__})
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls
    return cls


def litdata_loader(data: dict[str, Any], urls: list[str], cfg: dict[str, Any]) -> Any:
    """LitData: ``optimize`` once, then a ``StreamingDataset`` whose ``__getitem__`` decodes, in a
    ``StreamingDataLoader``."""
    import litdata

    ds = __getattr__("LitDataset")(prepare_peer_data(data, urls, "litdata"), shuffle=True, seed=cfg["round"])
    ds.crop = CropFlip(cfg["size"])
    loader = litdata.StreamingDataLoader(ds, batch_size=cfg["batch"], num_workers=cfg["workers"])
    return _Mapped(loader, channels_first)


def mosaic_loader(data: dict[str, Any], urls: list[str], cfg: dict[str, Any]) -> Any:
    """MosaicML streaming: ``MDSWriter`` once, then a ``StreamingDataset`` subclass that decodes in
    ``__getitem__``, in a torch DataLoader."""
    from torch.utils.data import DataLoader

    local = prepare_peer_data(data, urls, "mds")
    ds = __getattr__("MosaicDataset")(local=local, shuffle=True, shuffle_seed=cfg["round"], batch_size=cfg["batch"])
    ds.crop = CropFlip(cfg["size"])
    loader = DataLoader(ds, batch_size=cfg["batch"], num_workers=cfg["workers"])
    return _Mapped(loader, channels_first)


def spdl_loader(urls: list[str], cfg: dict[str, Any]) -> Any:
    """SPDL: a ``PipelineBuilder`` on threads: SPDL's tar parser and a shuffle buffer as the
    source, decode + crop on ``workers`` concurrent threads, ``aggregate`` into batches."""
    from spdl.io import iter_tarfile
    from spdl.pipeline import PipelineBuilder

    rng = random.Random(cfg["round"])
    order = list(urls)
    rng.shuffle(order)

    def samples() -> Iterator[tuple[bytes, int]]:
        buffer: list[tuple[bytes, int]] = []
        for url in order:
            with open(url, "rb") as f:
                pending: dict[str, bytes] = {}
                for name, content in iter_tarfile(f):
                    ext = os.path.basename(name).partition(".")[2]
                    pending[ext] = content
                    if "jpg" in pending and "cls" in pending:
                        buffer.append((pending.pop("jpg"), int(pending.pop("cls"))))
                        if len(buffer) >= cfg["buffer"]:
                            yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    crop = CropFlip(cfg["size"])
    pipeline = (
        PipelineBuilder()
        .add_source(samples())
        .pipe(lambda s: (crop(s[0]), s[1]), concurrency=cfg["workers"])
        .aggregate(cfg["batch"])
        .pipe(stack)
        .add_sink(4)
        .build(num_threads=cfg["workers"])
    )
    return _SpdlIterable(pipeline)


class _SpdlIterable:
    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    def __iter__(self) -> Iterator[Any]:
        with self.pipeline.auto_stop():
            yield from self.pipeline


def dali_loader(urls: list[str], cfg: dict[str, Any]) -> Any:
    """DALI on CPU: ``readers.webdataset`` -> ``decoders.image_random_crop`` (decodes the crop's
    region only) -> ``resize`` -> ``flip``, ``num_threads=workers``, no GPU
    (``device_id=None``), through DALI's PyTorch iterator."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    size = cfg["size"]

    @pipeline_def(batch_size=cfg["batch"], num_threads=cfg["workers"], device_id=None, seed=cfg["round"] + 1)
    def pipeline() -> Any:
        jpg, cls = fn.readers.webdataset(
            paths=urls, ext=["jpg", "cls"], random_shuffle=True, initial_fill=cfg["buffer"], name="reader"
        )
        images = fn.decoders.image_random_crop(jpg, device="cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
        images = fn.flip(images, horizontal=fn.random.coin_flip())
        return images, fn.pad(cls, fill_value=0)  # the label's ASCII digits, padded to one length

    pipe = pipeline()
    pipe.build()
    it = DALIGenericIterator(
        pipe, ["images", "cls"], reader_name="reader", last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True
    )
    return _Mapped(it, lambda out: (out[0]["images"].permute(0, 3, 1, 2), out[0]["cls"]))


def peer_loader(cfg: dict[str, Any], data: dict[str, Any], urls: list[str]) -> Any:
    """The iterable of ``(images, labels)`` batches of the peer ``cfg["kind"]``."""
    kind = cfg["kind"]
    if kind == "webdataset-simplejpeg":
        return webdataset_loader(urls, cfg)
    if kind == "litdata":
        return litdata_loader(data, urls, cfg)
    if kind == "mosaic":
        return mosaic_loader(data, urls, cfg)
    if kind == "spdl":
        return spdl_loader(urls, cfg)
    if kind == "dali-cpu":
        return dali_loader(urls, cfg)
    raise ValueError(f"unknown peer kind {kind!r}")
