"""Epoch policies: a registry of plain functions, each building the stages up to grouped samples.

A policy decides which samples each consumer (rank x DataLoader worker) reads in one
epoch; the arithmetic is plain functions over integers in ``shardpipe.split``, read from here. Each takes an
:class:`EpochRequest` and returns the first stages of the pipeline; ``ShardDataset``
appends filtering, shuffling, decoding and batching. A new policy is one function and
one entry in ``EPOCH_POLICIES`` (and its name in ``shardpipe.options.EPOCH_POLICY_NAMES``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shardpipe.split.plan import ResampledShards, plan_ranges
from shardpipe.stages.base import Context, Map, Stage, Take
from shardpipe.stages.samples import GroupSamples, SplitSamples
from shardpipe.stages.shards import Shard, ShardList, SplitShards
from shardpipe.stages.untar import Untar

log = logging.getLogger("shardpipe")


@dataclass(frozen=True)
class EpochRequest:
    """What a policy needs: the shards, this consumer's context and the split options."""

    shards: Sequence[Shard]
    ctx: Context
    shuffle: bool  #: shuffle shard order per epoch
    split: str = "auto"  #: ``uneven`` only: ``auto``, ``shards`` or ``samples``
    samples_per_epoch: int | None = None  #: ``resample`` only: the epoch length over all ranks
    #: makes the policy's ``Untar`` (``give_up_after`` for endless plans); the caller binds the I/O
    untar: Callable[..., Stage[Any]] = Untar


def _ranges(request: EpochRequest, policy: str) -> list[Stage[Any]]:
    shards, shuffle = request.shards, request.shuffle

    def plan(c: Context) -> list[Shard]:
        return plan_ranges(
            shards,
            seed=c.seed,
            epoch=c.epoch,
            rank=c.rank,
            world_size=c.world_size,
            worker=c.worker,
            num_workers=c.num_workers,
            shuffle=shuffle,
            policy=policy,
        )

    return [ShardList(shards, plan=plan), request.untar(), GroupSamples()]


def drop(request: EpochRequest) -> list[Stage[Any]]:
    """Equal contiguous ranges per rank; fewer than ``world_size`` samples an epoch left out."""
    return _ranges(request, "drop")


def pad(request: EpochRequest) -> list[Stage[Any]]:
    """Equal ranges per rank; short ranks wrap around, repeats marked ``__pad__ = True``."""
    return [*_ranges(request, "pad"), Map(_mark_real)]


def resample(request: EpochRequest) -> list[Stage[Any]]:
    """Shards drawn with replacement; each consumer reads ``samples_per_epoch / consumers``."""
    shards, ctx = request.shards, request.ctx
    if not request.samples_per_epoch:
        raise ValueError("epoch_policy='resample' needs samples_per_epoch (the epoch length over all ranks)")
    budget = request.samples_per_epoch // ctx.split_count
    draws = ShardList(shards, plan=lambda c: ResampledShards(shards, c.seed, c.epoch, c.split_index))
    return [draws, request.untar(give_up_after=max(64, 2 * len(shards))), GroupSamples(), Take(budget)]


def uneven(request: EpochRequest) -> list[Stage[Any]]:
    """Whole shards dealt round-robin (or samples, with fewer shards than consumers); no equalising."""
    ctx = request.ctx
    mode = split_mode(request)
    stages: list[Stage[Any]] = [ShardList(request.shards, shuffle=request.shuffle)]
    if mode == "shards" and ctx.split_count > 1:
        stages.append(SplitShards("all"))
    stages += [request.untar(), GroupSamples()]
    if mode == "samples" and ctx.split_count > 1:
        stages.append(SplitSamples())
    return stages


EpochPolicy = Callable[[EpochRequest], list[Stage[Any]]]
EPOCH_POLICIES: dict[str, EpochPolicy] = {"drop": drop, "pad": pad, "resample": resample, "uneven": uneven}


def epoch_stages(policy: str, request: EpochRequest) -> list[Stage[Any]]:
    """The stages of ``policy`` (a name in ``EPOCH_POLICIES``) for ``request``."""
    if policy not in EPOCH_POLICIES:
        raise ValueError(f"epoch_policy must be one of {tuple(EPOCH_POLICIES)}, not {policy!r}")
    return EPOCH_POLICIES[policy](request)


def split_mode(request: EpochRequest) -> str:
    """``shards`` or ``samples`` for the uneven policy, resolving ``auto`` (and warning when
    consumers will idle or every consumer must read every shard)."""
    n, ctx = len(request.shards), request.ctx
    if request.split != "auto":
        if request.split == "shards" and n < ctx.split_count and ctx.split_index == 0:
            log.warning(
                "%d shards for %d consumers (ranks x workers): %d will get no data; "
                "use split='samples' or write more shards",
                n,
                ctx.split_count,
                ctx.split_count - n,
            )
        return request.split
    if n >= ctx.split_count:
        return "shards"
    if ctx.split_index == 0:
        log.warning(
            "%d shards for %d consumers (ranks x workers): splitting by sample instead, so "
            "every consumer reads all shards; write at least %d shards for best throughput",
            n,
            ctx.split_count,
            ctx.split_count,
        )
    return "samples"


def _mark_real(sample: dict[str, Any]) -> dict[str, Any]:
    """Under the pad policy every sample carries ``__pad__`` (True only on repeats)."""
    sample.setdefault("__pad__", False)
    return sample
