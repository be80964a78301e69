"""``ShardDataset``'s options, grouped by the pipeline part they steer.

Four frozen dataclasses, each checking its own values when built, so a wrong option
fails at construction with a message naming it, not mid-epoch in a worker:

* :class:`OpenOptions`: how shards are opened (fsspec storage, local cache, remote reads);
* :class:`SplitOptions`: which samples each consumer reads per epoch, in what order;
* :class:`DecodeOptions`: what the fields become (decode mode, image decoder, transform);
* :class:`BatchOptions`: whether and how samples are collated into batches.

``ShardDataset(urls, SplitOptions(shuffle=5000), BatchOptions(256))`` and the flat
keyword front ``ShardDataset(urls, shuffle=5000, batch_size=256)`` are the same: every
flat keyword is the field of the same name in exactly one group (:func:`group_of`).

Words used once across the API: ``on_error`` for what happens to bad data,
``num_threads`` for threads (as ``num_workers`` for processes), ``drop_last`` for the
last short batch (torch's word), ``decode`` for what fields become and ``decoder`` for
the per-image backend that makes it happen.

Settings only describe: this module imports no runtime part (no opener, no stage, no
policy; ``tests/test_architecture.py`` holds it to that). The tables of valid names live
here, and the runtime reads them; ``ShardDataset`` assembles the pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardpipe.format.tar.reader import MAX_MEMBER_SIZE

if TYPE_CHECKING:
    from shardpipe.io.remote import ReadOptions

SPLITS = ("auto", "shards", "samples")
#: ``epoch_policy`` values besides ``auto``: the names of ``shardpipe.stages.epochs.EPOCH_POLICIES``
EPOCH_POLICY_NAMES = ("drop", "pad", "resample", "uneven")
#: what image fields become (``DecodeOptions.decode``; ``None`` leaves every field as bytes)
DECODE_MODES = ("rgb8", "torchrgb8", "pil", "encoded")
#: ``shuffle_algo`` values: see ``shardpipe.indexed.block_shuffle_source`` for what ``auto`` picks
SHUFFLE_ALGOS = ("auto", "window", "block")
#: the default shuffle buffer (samples) for ``shuffle=True``
DEFAULT_BUFFER = 1000


def _check_count(name: str, value: int | None, minimum: int, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, not {value!r}")


def check_flag(name: str, value: object) -> None:
    """A yes/no option must be a bool: ``"false"`` (a string from a config or a command line) is truthy,
    and ``allow_pickle="false"`` would unpickle untrusted shards."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")


@dataclass(frozen=True)
class OpenOptions:
    """How shards are opened: fsspec storage, a local cache, remote reads, read-ahead."""

    #: passed to fsspec for remote URLs (endpoint, key/secret, token, anon)
    storage_options: Mapping[str, Any] | None = None
    #: a local shard cache shared by the workers and ranks of one machine (checked against
    #: the manifest's sha256)
    cache_dir: str | None = None
    #: the cache's size limit in bytes (LRU eviction); None: unbounded
    cache_size: int | None = None
    #: ``shardpipe.io.remote.ReadOptions``: block size, read-ahead, retries, backoff, timeout
    read_options: ReadOptions | None = None
    #: remote shards opened ahead of the one being read; they keep filling while it is
    #: read. Two: at cloud latency one shard ahead is too few parallel requests to fill
    #: the link when shards are tens of MiB (see BENCHMARKS.md, "cloud latency")
    prefetch: int = 2
    #: bytes of remote data one process (each DataLoader worker) may have requested and not
    #: yet consumed, all its streams together; None: ``read_options.memory_limit`` (256 MiB,
    #: 4 GiB for 16 workers: see ``shardpipe.io.budget``)
    memory_limit: int | None = None
    #: allow ``pipe:`` URLs (they run a shell command)
    allow_pipe: bool = False
    #: a tar member declaring more bytes is a CorruptShardError (None: no limit)
    max_member_size: int | None = MAX_MEMBER_SIZE
    #: compare each shard's sha256 and size with the manifest as it streams (about one sha256 pass
    #: over the bytes; sample counts are always compared with the manifest)
    verify: bool = False
    #: what a manifest's shard names may point to: ``inside`` (relative names stay under its
    #: folder; absolute paths and URLs allowed), ``relative`` (only under its folder) or ``any``
    manifest_paths: str = "inside"

    def __post_init__(self) -> None:
        check_flag("allow_pipe", self.allow_pipe)
        check_flag("verify", self.verify)
        _check_count("cache_size", self.cache_size, 1)
        _check_count("max_member_size", self.max_member_size, 0)
        _check_count("prefetch", self.prefetch, 0, optional=False)
        if self.manifest_paths not in ("inside", "relative", "any"):
            raise ValueError(f"manifest_paths must be 'inside', 'relative' or 'any', not {self.manifest_paths!r}")
        _check_count("memory_limit", self.memory_limit, 1)
        if self.cache_size is not None and self.cache_dir is None:
            raise ValueError("cache_size limits a cache: give cache_dir too")


@dataclass(frozen=True)
class SplitOptions:
    """Which samples each consumer (rank x DataLoader worker) reads per epoch, in what order."""

    #: ``False``, ``True`` (a buffer of 1000 samples) or a buffer size; shard order is
    #: shuffled per epoch too when shuffling is on
    shuffle: bool | int = False
    #: ``"window"`` (a window of streamed samples; ``"auto"``, the default, is the window too)
    #: or ``"block"`` (a permutation of the epoch read by random access: a manifest with its
    #: index, tar shards, local or cached); ``shuffle=True`` and ``shuffle=1000`` are the same
    shuffle_algo: str = "auto"
    #: block shuffle: samples per block (None: the whole epoch, a true permutation)
    shuffle_block_size: int | None = None
    #: the seed of every random choice (shard order, buffer, augmentation)
    seed: int = 0
    #: for the ``uneven`` policy: ``"auto"`` (shards, or samples when there are fewer
    #: shards than consumers), ``"shards"`` or ``"samples"``
    split: str = "auto"
    #: how ranks get equal epochs (see ``shardpipe.split.plan``): ``"auto"`` (``drop`` when the
    #: manifest gives sample counts; ``uneven`` on one rank without counts; an error on several
    #: ranks without counts), ``"drop"`` (fewer than ``world_size`` samples an epoch left out),
    #: ``"pad"`` (short ranks repeat a few, marked ``__pad__``), ``"resample"`` (shards drawn with
    #: replacement, ``samples_per_epoch`` long) or ``"uneven"`` (every sample once, no equalising)
    epoch_policy: str = "auto"
    #: the epoch length over all ranks, for ``resample``
    samples_per_epoch: int | None = None
    #: override the distributed rank and world size (default: torch.distributed/env)
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.shuffle, bool):
            _check_count("shuffle", self.shuffle, 0, optional=False)
        if self.shuffle_algo not in SHUFFLE_ALGOS:
            raise ValueError(f"shuffle_algo must be one of {SHUFFLE_ALGOS}, not {self.shuffle_algo!r}")
        _check_count("shuffle_block_size", self.shuffle_block_size, 1)
        if self.shuffle_algo == "block" and not self.shuffle:
            raise ValueError("shuffle_algo='block' needs shuffle=True")
        if self.shuffle_algo == "block" and self.epoch_policy not in ("auto", "drop", "pad"):
            raise ValueError(f"the block shuffle splits epochs by policy 'drop' or 'pad', not {self.epoch_policy!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be 'auto', 'shards' or 'samples', not {self.split!r}")
        if self.epoch_policy not in ("auto", *EPOCH_POLICY_NAMES):
            raise ValueError(f"epoch_policy must be 'auto' or one of {EPOCH_POLICY_NAMES}, not {self.epoch_policy!r}")
        _check_count("samples_per_epoch", self.samples_per_epoch, 1)
        _check_count("seed", self.seed, 0, optional=False)  # numpy's seed sequences take none below 0
        if self.epoch_policy == "resample" and not self.samples_per_epoch:
            raise ValueError("epoch_policy='resample' needs samples_per_epoch (the epoch length over all ranks)")
        _check_count("rank", self.rank, 0)
        _check_count("world_size", self.world_size, 1)
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is not below world_size {self.world_size}")

    @property
    def buffer_size(self) -> int:
        """Samples in the shuffle buffer (0: no shuffling)."""
        if self.shuffle is True:
            return DEFAULT_BUFFER
        return int(self.shuffle) if self.shuffle else 0


@dataclass(frozen=True)
class DecodeOptions:
    """What sample fields become, and what makes them."""

    #: ``"rgb8"`` (numpy HWC), ``"torchrgb8"`` (torch CHW), ``"pil"``, ``"encoded"``
    #: (images stay bytes, e.g. for batch decode; labels and JSON are decoded), or
    #: ``None`` (every field stays bytes, as stored)
    decode: str | None = "rgb8"
    #: per-image decoder backend (``"auto"`` = fastest installed, ``"pil"``, ...)
    decoder: str = "auto"
    #: ``transform(img, rng) -> img`` on RGB uint8 arrays (a ``Transform``, or any callable taking
    #: the sample's ``rng`` second or as keyword ``rng``), or a one-argument ``transform(img) -> img``;
    #: another signature is a ``TypeError`` when the dataset is made
    transform: Callable[..., Any] | None = None
    #: decode threads inside each consumer process (0 = inline)
    num_threads: int = 0
    #: unpickle ``.pyd``/``.pickle``/``.pth`` members (runs code from the shard: trusted data only)
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if self.decode is not None and self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES} or None, not {self.decode!r}")
        if not isinstance(self.decoder, str):
            raise ValueError(f"decoder must be a decoder name (see shardpipe.image.decoders), not {self.decoder!r}")
        _check_count("num_threads", self.num_threads, 0, optional=False)
        check_flag("allow_pickle", self.allow_pickle)


@dataclass(frozen=True)
class BatchOptions:
    """Whether and how samples are collated into batches."""

    #: samples per batch (``None`` yields samples)
    batch_size: int | None = None
    #: drop the last batch when it is short (torch's ``drop_last``)
    drop_last: bool = False
    #: batches keep the NCHW shape with NHWC memory (torch.channels_last): a cheaper
    #: collate, and the layout GPU convolutions prefer
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check_count("batch_size", self.batch_size, 1)
        check_flag("drop_last", self.drop_last)
        check_flag("channels_last", self.channels_last)


GROUPS: tuple[type, ...] = (OpenOptions, SplitOptions, DecodeOptions, BatchOptions)
_GROUP_OF: dict[str, type] = {f.name: g for g in GROUPS for f in dataclasses.fields(g)}
#: keywords renamed when the options were grouped (CHANGELOG, issue 24): still unknown keywords,
#: but the error names what to write instead (a fuzzy match finds none of these for two of them)
RENAMED: dict[str, str] = {
    "handler": "on_error=",
    "threads": "num_threads=",
    "partial": "drop_last= (the opposite: partial=True is drop_last=False)",
}


def group_of(keyword: str) -> type:
    """The options class that holds the flat keyword ``keyword`` (a TypeError if none does)."""
    if keyword in _GROUP_OF:
        return _GROUP_OF[keyword]
    if keyword in RENAMED:
        raise TypeError(f"ShardDataset got an unknown keyword {keyword!r}: it was renamed, use {RENAMED[keyword]}")
    import difflib

    near = difflib.get_close_matches(keyword, [*_GROUP_OF, "require", "on_error"], n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise TypeError(f"ShardDataset got an unknown keyword {keyword!r}{hint}")


def build_groups(groups: tuple[Any, ...], keywords: Mapping[str, Any]) -> dict[type, Any]:
    """One instance per options class: the groups given (at most one of each), with the
    flat ``keywords`` replacing their fields; defaults for the rest."""
    out: dict[type, Any] = {}
    for group in groups:
        if type(group) not in GROUPS:
            names = ", ".join(g.__name__ for g in GROUPS)
            raise TypeError(f"ShardDataset takes urls, then options objects ({names}), not {group!r}")
        if type(group) in out:
            raise TypeError(f"ShardDataset got two {type(group).__name__} objects")
        out[type(group)] = group
    flat: dict[type, dict[str, Any]] = {}
    for keyword, value in keywords.items():
        flat.setdefault(group_of(keyword), {})[keyword] = value
    for cls in GROUPS:
        base = out.get(cls)
        given = flat.get(cls, {})
        out[cls] = dataclasses.replace(base, **given) if base is not None else cls(**given)
    return out
