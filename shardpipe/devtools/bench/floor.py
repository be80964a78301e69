"""The floor under the pipeline target: the kernel, fed from the shards by DataLoader workers, and nothing else.

Issue 23 asks the pipeline to cost at most 1/0.95 of its kernel (decode + crop + resize + flip
on JPEGs already in memory). A loader must also read each JPEG from its shard, write the result
where the training process can take it, and start its workers. ``floor_loader`` does exactly
that and no more: each worker takes every ``workers``-th JPEG (found from the tar headers before
the clock), reads it with one ``pread`` at its offset, in a seeded random order, and runs the
kernel into its row of one of the few (``POOL``) shared-memory batches it made at start; a plain
``DataLoader`` carries each batch to the main process: the first time a buffer goes, as torch
sends a tensor (its shared-memory file's descriptor, over a connection to the worker), and after
that as its slot number, the main process keeping its mapping (what ShardLoader's recycled
buffers do, without their bookkeeping). No stages, no per-sample Python beyond that loop, no
labels. What it costs over the kernel is what reading the shards in workers costs; what shardpipe
costs over it is what its stages (and its start-up, against a plain DataLoader's) cost.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shardpipe.augment.base import SampleRngs
from shardpipe.devtools.bench.kernels import shardpipe_train_kernel
from shardpipe.format.sample import split_name
from shardpipe.format.tar.reader import TarStream

#: batches a worker may have queued for the main process (DataLoader's ``prefetch_factor``)
PREFETCH = 2
#: the batches each worker writes in turn: those queued, the one the loop holds and the one being written
#: (ShardLoader reuses a buffer as soon as the loop lets go of it, ~3 a worker here: one more fresh buffer
#: a worker, ~2.7 ms, is the floor's only extra)
POOL = PREFETCH + 2


def jpeg_records(urls: Sequence[str], ext: str = "jpg") -> list[tuple[str, int, int, str]]:
    """(shard path, offset, size, sample key) of every ``ext`` member of the shards, in order."""
    records = []
    for url in urls:
        with open(url, "rb") as f:
            tar = TarStream(f, url)
            while (header := tar.next_header()) is not None:
                parts = split_name(header[0])
                if parts is not None and parts[1] == ext:
                    records.append((url, tar.offset, header[1], parts[0]))
                tar.skip_data()
    return records


class FloorDataset(IterableDataset):
    """Batches of the kernel's output, as ``{"slot", "buffer", "rows", "__key__"}``: ``rows`` images in
    the NHWC uint8 buffer of ``slot`` (``(worker, k)``), which comes along on its first trip only
    (``FloorLoader`` makes them batches)."""

    def __init__(self, records: list[tuple[str, int, int, str]], batch: int = 64, size: int = 224, seed: int = 0):
        self.records, self.batch, self.size, self.seed = records, batch, size, seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        mine = self.records[info.id :: info.num_workers] if info is not None else self.records
        fn = shardpipe_train_kernel("auto", self.size)
        rngs = SampleRngs()
        shape = (self.batch, self.size, self.size, 3)
        pool = [torch.empty(shape, dtype=torch.uint8) for _ in range(POOL)]
        if info is not None:
            pool = [t.share_memory_() for t in pool]
        rows = [t.numpy() for t in pool]
        fds = {path: os.open(path, os.O_RDONLY) for path in {r[0] for r in mine}}
        worker = info.id if info is not None else 0
        try:
            order = np.random.default_rng(self.seed).permutation(len(mine)).tolist()
            for n, start in enumerate(range(0, len(order), self.batch)):
                part = [mine[j] for j in order[start : start + self.batch]]
                into = rows[n % POOL]
                for i, (path, offset, size, key) in enumerate(part):
                    fn(os.pread(fds[path], size, offset), rngs(self.seed, 0, key), into[i])
                # the buffer itself only on its first trip; then its slot (the main process holds it)
                buffer = pool[n % POOL] if n < POOL else None
                yield {"slot": (worker, n % POOL), "buffer": buffer, "rows": len(part), "__key__": [r[3] for r in part]}
        finally:
            for fd in fds.values():
                os.close(fd)


def floor_loader(
    urls: Sequence[str],
    batch: int = 64,
    size: int = 224,
    workers: int = 2,
    seed: int = 0,
    records: list[tuple[str, int, int, str]] | None = None,
) -> FloorLoader:
    """A plain ``DataLoader`` over ``FloorDataset``; ``records``: ``jpeg_records(urls)``, read here if not given
    (a benchmark reads them before its clock: finding the offsets is not part of the floor)."""
    dataset = FloorDataset(jpeg_records(urls) if records is None else records, batch, size, seed)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=PREFETCH if workers else None)
    return FloorLoader(loader)


class FloorLoader:
    """The floor's batches as ``{"jpg": uint8 NCHW (channels_last memory), "__key__": [...]}``, each
    image tensor a view of a buffer its worker sent once (``FloorDataset`` sends slots after that)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        held: dict[tuple[int, int], torch.Tensor] = {}
        for item in self.loader:
            slot = tuple(item["slot"])
            if item["buffer"] is not None:
                held[slot] = item["buffer"]
            yield {"jpg": held[slot][: item["rows"]].permute(0, 3, 1, 2), "__key__": item["__key__"]}
