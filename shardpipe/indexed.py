"""``IndexedDataset``: map-style access to indexed shards, one sample by number.

``dataset[i]`` is the ``i``-th sample in manifest order (the order streaming reads the
shards listed in the manifest). It reads just that sample's bytes, found through the
index sidecar (``shardpipe index`` or ``ShardWriter`` writes it): ``os.pread`` on
local shards, one ranged GET remotely, or a local copy through the shard cache. Works
with ``torch.utils.data.DataLoader`` and ``DistributedSampler`` like any ``Dataset``;
a DataLoader with a batch size asks for a whole batch at once (``__getitems__``): its
samples are read by parallel ranged GETs, one per group of nearby samples of a shard.
"""

from __future__ import annotations

import operator
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset, get_worker_info

from shardpipe.errors import ShardpipeError
from shardpipe.format.index import BLOCK, DamagedIndexError, SampleIndex, rebuild_hint, sample_from_bytes
from shardpipe.format.manifest import load_manifest
from shardpipe.io.ranged import RangeReader
from shardpipe.io.urls import check_url, single_manifest
from shardpipe.options import check_flag
from shardpipe.stages.untar import warn_skipped

#: links and sparse files stepped over inside the samples read: shard URL -> count by kind
SkippedMembers = dict[str, Counter[str]]


def _counter(skipped: SkippedMembers | None, url: str) -> Counter[str] | None:
    return None if skipped is None else skipped.setdefault(url, Counter())


class IndexedShards:
    """The manifest, its index and a reader: everything random access needs, picklable."""

    def __init__(
        self,
        manifest: str,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        cache_size: int | None = None,
        read_options: Any = None,
        manifest_paths: str = "inside",
        *,
        loaded: dict[str, Any] | None = None,
    ):
        meta = (
            loaded
            if loaded is not None
            else load_manifest(check_url(manifest), storage_options, manifest_paths, read_options)
        )
        if not meta.get("index_url"):
            how = rebuild_hint(manifest, make="create one")
            raise ValueError(
                f"{manifest} has no index: {how} (or write the shards with ShardWriter / `shardpipe write`)"
            )
        self.manifest = manifest
        self.urls = [e["url"] for e in meta["shards"]]
        self.sha256 = [e.get("sha256") for e in meta["shards"]]
        self.index_url = meta["index_url"]
        self.storage_options = storage_options
        self.read_options = read_options  # the manifest's and index's reads too: the dataset's deadline
        self.index = SampleIndex.load(self.index_url, storage_options, manifest, read_options)
        self.index.check_matches([e["samples"] for e in meta["shards"]])
        self.index_identity = self.index.identity  # the index checked: a worker must load this one
        self._unusable: ShardpipeError | None = None  # why a worker's index cannot be used
        gz = [u for s, u in enumerate(self.urls) if self.index.compressed(s)]
        self.sequential_only = gz
        self.reader = RangeReader(storage_options, cache_dir, cache_size, read_options)

    def __getstate__(self) -> dict[str, Any]:
        # a memory map travels as its path (and identity): each process maps the file itself
        return {**self.__dict__, "index": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Load the index again (a spawn or forkserver worker), and use it only if it is the file the
        process that made this object checked against its manifest; else every read raises why."""
        self.__dict__.update(state)
        try:
            self.index = SampleIndex.load(self.index_url, self.storage_options, self.manifest, self.read_options)
        except ShardpipeError as e:  # raised where a sample is asked for: the error reaches the trainer
            self._unusable = e
            return
        if self.index.identity != self.index_identity:
            self._unusable = DamagedIndexError(
                f"index {self.index_url} changed after this dataset was made (rebuilt while a run read it?): "
                "a worker would read samples through an index that its manifest was not checked against; "
                "make the dataset again once the index is rebuilt"
            )

    def _check_usable(self) -> None:
        if self._unusable is not None:
            raise self._unusable

    def __len__(self) -> int:
        self._check_usable()
        return len(self.index)

    def check_random_access(self) -> None:
        if self.sequential_only:
            raise ValueError(
                f"{len(self.sequential_only)} shards are gzip-compressed ({self.sequential_only[0]}, ...): "
                "they can only be read sequentially; write tar shards (or gunzip them and run `shardpipe index`) "
                "for random access"
            )

    def advise(self, i: int) -> None:
        """Hint that sample ``i`` will be read soon (starts a local read; see ``RangeReader.advise``)."""
        self._check_usable()
        shard, start, end, _ = self.index.locate(i)
        self.reader.advise(self.urls[shard], start, end, int(self.index.sizes[shard]), self.sha256[shard])

    def _read_end(self, shard: int, end: int) -> int:
        """Where to stop reading a sample that ends at ``end``: one tar block past it (within the
        shard), so that the next header shows the sample ends where the index says."""
        return min(end + BLOCK, max(int(self.index.sizes[shard]), end))

    def sample(self, i: int, skipped: SkippedMembers | None = None) -> dict[str, Any]:
        """The raw sample ``i`` (fields as bytes), with ``__key__``, ``__url__``, ``__shard__``, ``__index__``;
        ``skipped`` gets the links and sparse files stepped over among its members, by shard URL."""
        self._check_usable()
        shard, start, end, crc = self.index.locate(i)
        url = self.urls[shard]
        size = int(self.index.sizes[shard])
        data = self.reader.read(url, start, self._read_end(shard, end), size, self.sha256[shard])
        sample = sample_from_bytes(data, url, crc, end - start, _counter(skipped, url))
        sample["__url__"], sample["__shard__"], sample["__index__"] = url, shard, i
        return sample

    def samples(
        self, indices: Sequence[int], skipped: SkippedMembers | None = None
    ) -> list[dict[str, Any] | ShardpipeError]:
        """The raw samples ``indices``, read together (``RangeReader.read_many``); a sample
        that cannot be read is its ``ShardpipeError`` in the list instead. ``skipped``: as in ``sample``."""
        self._check_usable()
        where = [self.index.locate(int(i)) for i in indices]
        requests = [
            (self.urls[shard], start, self._read_end(shard, end), int(self.index.sizes[shard]), self.sha256[shard])
            for shard, start, end, _ in where
        ]
        out: list[dict[str, Any] | ShardpipeError] = []
        for i, (shard, start, end, crc), data in zip(indices, where, self.reader.read_many(requests)):
            url = self.urls[shard]
            try:
                if isinstance(data, Exception):
                    raise data
                sample = sample_from_bytes(data, url, crc, end - start, _counter(skipped, url))
            except ShardpipeError as e:
                out.append(e)
                continue
            sample["__url__"], sample["__shard__"], sample["__index__"] = url, shard, int(i)
            out.append(sample)
        return out


class IndexedDataset(Dataset):
    """A map-style dataset over indexed tar shards: ``len(ds)`` samples, ``ds[i]`` in manifest order.

    Args:
        manifest: ``manifest.json`` path or URL with an index sidecar.
        decode: ``"rgb8"``, ``"torchrgb8"``, ``"pil"``, ``"encoded"`` or ``None`` (bytes), as
            in ``ShardDataset``.
        decoder: image decoder backend (``"auto"``: fastest installed).
        transform: ``transform(img, rng) -> img``; ``rng`` is seeded by (seed, epoch, key).
        seed: seed of the transform's randomness; ``set_epoch`` changes it per epoch.
        storage_options, cache_dir, cache_size, read_options, manifest_paths: as in ``ShardDataset``.
    """

    def __init__(
        self,
        manifest: str,
        *,
        decode: str | None = "rgb8",
        decoder: str = "auto",
        transform: Callable[..., Any] | None = None,
        seed: int = 0,
        allow_pickle: bool = False,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        cache_size: int | None = None,
        read_options: Any = None,
        manifest_paths: str = "inside",
    ):
        check_flag("allow_pickle", allow_pickle)
        self.shards = IndexedShards(manifest, storage_options, cache_dir, cache_size, read_options, manifest_paths)
        self.shards.check_random_access()
        self.seed, self.epoch = seed, 0
        self.decode, self.decoder, self.transform, self.allow_pickle = decode, decoder, transform, allow_pickle
        self._decoder: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._pid = os.getpid()  # the process that last read (a worker sets up once: _in_process)
        if decode is not None:
            self._decoder = self._build_decoder()  # now: a bad mode or backend fails here, not in a worker

    def _build_decoder(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        from shardpipe.stages.decode import SampleDecoder

        # fused: crop-aware decode when the transform starts with a crop or resize, else decode then transform
        return SampleDecoder(
            self.decode, self.decoder, self.transform, self.allow_pickle, fuse=True, ctx_seed_epoch=self._seed_epoch
        )

    def _seed_epoch(self) -> tuple[int, int]:
        return self.seed, self.epoch

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_decoder": None}  # rebuilt in the worker (it may hold closures)

    def set_epoch(self, epoch: int) -> None:
        """Draw the transform's randomness for epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shards)

    def _position(self, i: int) -> int:
        """Sample number of index ``i`` (negative counts from the end); IndexError naming ``i``, and
        TypeError for what is not an integer (``int()`` read 2.5 as 2 and "3" as 3)."""
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"IndexedDataset indices must be integers, not {type(i).__name__} ({i!r})") from None
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range: the dataset holds {n} samples")
        return i + n if i < 0 else i

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._in_process()
        skipped: SkippedMembers = {}
        sample = self.shards.sample(self._position(i), skipped)
        self._warn(skipped)
        return self._decoded(sample)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The samples of a batch, read by parallel ranged requests (the DataLoader calls it)."""
        self._in_process()
        skipped: SkippedMembers = {}
        got = self.shards.samples([self._position(i) for i in indices], skipped)
        self._warn(skipped)
        for sample in got:
            if isinstance(sample, Exception):
                raise sample
        return [self._decoded(s) for s in got]  # type: ignore[arg-type]

    def _warn(self, skipped: SkippedMembers) -> None:
        """Log each shard whose samples held links or sparse files (stepped over), once an epoch."""
        for url, counts in skipped.items():
            if counts:
                warn_skipped(url, counts, self.epoch)

    def _in_process(self) -> None:
        """Once per process: in a DataLoader worker whose parent is a forkserver, watch the trainer
        (``workerstart.watch_trainer_from_worker``), so a killed trainer leaves no worker behind."""
        pid = os.getpid()
        if self._pid != pid:
            self._pid = pid
            if get_worker_info() is not None:
                from shardpipe.workerstart import watch_trainer_from_worker

                watch_trainer_from_worker()

    def _decoded(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.decode is None:
            return sample
        if self._decoder is None:
            self._decoder = self._build_decoder()
        return self._decoder(sample)


def block_shuffle_source(
    urls: Any,
    shuffle: bool | int,
    algo: str,
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | None = None,
    cache_size: int | None = None,
    read_options: Any = None,
    manifest_paths: str = "inside",
    loaded: dict[str, Any] | None = None,
) -> IndexedShards | None:
    """The indexed shards to block-shuffle, or None for the windowed shuffle (``ShardDataset``'s choice).

    The block shuffle is asked for by name (``algo="block"``): it needs a manifest with an
    index and tar (not gzip) shards, read by random access (local, or through a cache:
    random reads from an object store cost one request per sample), and says what is
    missing. ``loaded``: the manifest, when the caller has read it already (it is read
    once). ``auto`` and ``window`` take the window, whatever ``shuffle`` is (``True`` is a
    window of 1000, as a number is a window of that size).
    """
    from shardpipe.options import SHUFFLE_ALGOS

    if algo not in SHUFFLE_ALGOS:
        raise ValueError(f"shuffle_algo must be one of {SHUFFLE_ALGOS}, not {algo!r}")
    if algo != "block":
        return None
    if not shuffle:
        raise ValueError("shuffle_algo='block' needs shuffle=True")
    manifest = single_manifest(urls)
    if manifest is None:
        raise ValueError(
            "shuffle_algo='block' reads samples by random access: pass the shards' manifest.json with its index "
            "(create both for existing shards with `shardpipe index SHARDS -o manifest.json`)"
        )
    shards = IndexedShards(
        manifest, storage_options, cache_dir, cache_size, read_options, manifest_paths, loaded=loaded
    )
    if shards.sequential_only:
        shards.check_random_access()
    return shards
