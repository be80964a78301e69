"""``write_shards``' settings: one frozen object that checks its own values when built.

``write_shards(source, pattern, WriteOptions(maxcount=1000, workers=4))`` and the flat
keyword front ``write_shards(source, pattern, maxcount=1000, workers=4)`` are the same;
a wrong value fails here, before the source is scanned.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shardpipe.write.engines import ENGINES
from shardpipe.write.prepare import PrepareOptions
from shardpipe.write.presize import CHECKS
from shardpipe.write.sources import ValueDecoder


@dataclass(frozen=True)
class WriteOptions:
    """How a write job reads its source, shapes its shards and where it runs."""

    #: ``"auto"`` (detected from the path) or a name in ``shardpipe.write.sources.SOURCE_TYPES``
    source_type: str = "auto"
    #: inputs per shard
    maxcount: int = 10_000
    #: also close shards at this many bytes (the rolling layout: local engine only, in sequence)
    maxsize: int | None = None
    #: ``None`` (plain tar) or ``"gz"``
    compress: str | None = None
    #: the local engine's parallelism (threads for copying and the restart-interval transcode,
    #: processes for presize/decode checks); ``None``: one per CPU, since the default transcode is CPU-bound
    workers: int | None = None
    #: write samples in a permutation seeded by ``seed``; ``None``: when the source has classes
    shuffle: bool | None = None
    seed: int = 0
    #: shrink images to this shorter side (pixels), re-encoded as JPEG at ``quality``
    presize: int | None = None
    quality: int = 90
    #: ``"header"`` (cheap), ``"decode"`` (full) or ``"none"``
    check: str = "header"
    #: re-encode baseline JPEGs losslessly with restart intervals, which the native crop decoder
    #: uses to decode only what a crop covers (same pixels, ~3% smaller; ``shardpipe.image.restart``
    #: says how the interval is chosen and which files are left as they are). ``False`` copies
    #: every image byte for byte
    restart_intervals: bool = True
    #: keep the shards an interrupted run finished and write only the rest
    resume: bool = False
    #: for list sources: a regex whose first group is the label in a file name
    label_pattern: str | None = None
    #: for LMDB sources: how a value becomes an image (callable or ``"module:function"``)
    lmdb_decoder: ValueDecoder | str | None = None
    #: show a progress bar
    progress: bool = False
    #: passed to fsspec for remote destinations
    storage_options: Mapping[str, Any] | None = None
    #: where shards are written: ``"local"`` or ``"ray"``
    engine: str = "local"
    #: the Ray cluster to join (default: ``RAY_ADDRESS`` or a new local one)
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.maxsize is not None and self.maxsize < 1:
            raise ValueError(f"maxsize must be a positive number of bytes, got {self.maxsize}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: choose one of {sorted(ENGINES)}")
        if self.maxsize is not None and self.engine != "local":
            raise ValueError(
                f"maxsize closes shards by bytes, which only the local engine can do (in sequence); the "
                f"{self.engine!r} engine plans shards by maxcount alone: drop maxsize and pick maxcount ~ shard "
                "size / image size"
            )
        if self.maxcount < 1:
            raise ValueError(f"maxcount must be positive, got {self.maxcount}")
        if self.check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, not {self.check!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1..100, got {self.quality}")
        if self.presize is not None and self.presize < 1:
            raise ValueError(f"presize must be a positive number of pixels, got {self.presize}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be a positive number (or None: one per CPU), got {self.workers}")

    @property
    def parallelism(self) -> int:
        """``workers``, with ``None`` resolved to this machine's CPU count."""
        return self.workers if self.workers is not None else max(1, os.cpu_count() or 1)

    @property
    def prepare(self) -> PrepareOptions:
        """What each worker does to an image."""
        return PrepareOptions(self.presize, self.quality, self.check, self.restart_intervals)

    @property
    def fsspec_options(self) -> dict[str, Any] | None:
        """``storage_options`` as the plain dict fsspec takes."""
        return dict(self.storage_options) if self.storage_options is not None else None


def build_write_options(options: WriteOptions | None, keywords: Mapping[str, Any]) -> WriteOptions:
    """``options`` (or the defaults) with the flat ``keywords`` replacing its fields."""
    known = {f.name for f in dataclasses.fields(WriteOptions)}
    unknown = sorted(set(keywords) - known)
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise TypeError(f"write_shards got an unknown keyword {unknown[0]!r}{hint}")
    if options is not None and not isinstance(options, WriteOptions):
        raise TypeError(f"write_shards takes source, pattern, then a WriteOptions, not {options!r}")
    base = options if options is not None else WriteOptions()
    return dataclasses.replace(base, **keywords) if keywords else base
