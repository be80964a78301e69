"""Plan coordinates: which part of an epoch a server produces, and how it resumes.

The trainer splits each rank's share of the epoch into ``parts`` consumers, exactly as a
``ShardLoader`` splits it among DataLoader workers (``shardpipe.split.plan``): part ``k``
of ``parts`` for rank ``r`` of ``world_size`` in epoch ``e`` is the pipeline a local
worker ``k`` of ``parts`` on that rank would run. A ``Part`` message names only those
integers plus the pipeline state to continue from, so a server runs nothing a client
chose: the dataset and transforms come from the server's own config file.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from shardpipe.dataset import ShardDataset
from shardpipe.protocol import ShardsFingerprint
from shardpipe.serve.wire import WireError
from shardpipe.stages.base import Pipeline, State
from shardpipe.state import MAX_INT, StateCheck, StateError, pipeline_shape

#: the most parts one rank may split its epoch into
MAX_PARTS = 4096
#: the most batches a trainer may have in flight per part (one grant, and all grants together)
MAX_CREDITS = 1024
#: the fields each request type may carry (besides ``v`` and ``type``)
REQUEST_FIELDS = {
    "hello": (),
    "assign": ("assignment", "epoch", "rank", "world_size", "part", "parts", "state", "credits"),
    "credit": ("assignment", "n"),
    "cancel": ("assignment",),
}


def check_request(header: dict[str, Any]) -> None:
    """Refuse a request whose type, fields or values are not what a trainer sends (``WireError``)."""
    kind = header["type"]
    if kind not in REQUEST_FIELDS:
        raise WireError(f"unknown request type {kind[:40]!r}")
    allowed = REQUEST_FIELDS[kind]
    unknown = [k for k in header if k not in ("v", "type", *allowed)]
    if unknown:
        raise WireError(f"{kind}: unknown field(s) {', '.join(repr(k)[:40] for k in unknown[:5])}")
    if kind == "assign":
        Part.from_header(header)
    elif kind in ("credit", "cancel"):
        _integer(header, kind, "assignment", 0, MAX_INT)
    if kind == "credit":
        _integer(header, kind, "n", 1, MAX_CREDITS)


def _integer(header: dict[str, Any], kind: str, name: str, lo: int, hi: int) -> int:
    v = header.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise WireError(f"{kind}: {name} must be an integer from {lo} to {hi}, not {str(v)[:40]!r}")
    return v


@dataclasses.dataclass(frozen=True)
class Part:
    """One consumer of the epoch plan, as assigned by a trainer."""

    assignment: int  # the trainer's id for this assignment (stale ones are ignored)
    epoch: int
    rank: int
    world_size: int
    part: int
    parts: int
    state: State | None  # the pipeline state after the last batch the trainer received
    credits: int  # batches the server may send before the trainer grants more

    def header(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> Part:
        """Validate an ``assign`` request: small non-negative integers and a state dict only."""
        values = {}
        for f in dataclasses.fields(cls):
            v = header.get(f.name)
            if f.name == "state":
                if v is not None and not isinstance(v, dict):
                    raise WireError("assign: state must be an object or null")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise WireError(f"assign: {f.name} must be a non-negative integer, not {str(v)[:40]!r}")
            elif v > (MAX_CREDITS if f.name == "credits" else MAX_INT):
                raise WireError(f"assign: {f.name} must be at most {MAX_CREDITS if f.name == 'credits' else MAX_INT}")
            values[f.name] = v
        if not 1 <= values["world_size"] or values["rank"] >= values["world_size"]:
            raise WireError(f"assign: rank {values['rank']} is not below world_size {values['world_size']}")
        if not 1 <= values["parts"] <= MAX_PARTS or values["part"] >= values["parts"]:
            raise WireError(f"assign: part {values['part']} of {values['parts']} is out of range")
        if values["state"] is not None:  # its shape here; its fields against the plan when the part starts
            try:
                pipeline_shape(values["state"], StateCheck("assign: state"))
            except StateError as e:
                raise WireError(str(e)) from None
        return cls(**values)

    def describe(self) -> str:
        return f"part {self.part}/{self.parts} of rank {self.rank}/{self.world_size}, epoch {self.epoch}"


def part_pipeline(dataset: ShardDataset, part: Part) -> Pipeline:
    """The pipeline a local worker ``part.part`` of ``part.parts`` on that rank would run, at ``part.state``."""
    # the dataset's own context (seed, on_error), moved to the assigned coordinates
    ctx = dataclasses.replace(
        dataset.pass_context(),
        epoch=part.epoch,
        rank=part.rank,
        world_size=part.world_size,
        worker=part.part,
        num_workers=part.parts,
    )
    pipeline = dataset.build_pipeline(ctx)
    if part.state is not None and part.state.get("epoch") != part.epoch:
        raise StateError(f"resume state is for epoch {part.state.get('epoch')!r}, the assignment for {part.epoch}")
    pipeline.reset(part.state)  # checked against this server's own plan first (shardpipe.state)
    return pipeline


def fingerprint(dataset: ShardDataset, transform: Any) -> str:
    """What must match across a trainer's servers for their parts to form one epoch."""
    split, decode, batch = dataset.split_options, dataset.decode_options, dataset.batch_options
    options = (
        f"{split.seed}|{split.shuffle}|{split.split}|{split.epoch_policy}|{split.samples_per_epoch}|"
        f"{decode.decode}|{batch.batch_size}|{batch.drop_last}|{batch.channels_last}|{dataset.require}"
    )
    return ShardsFingerprint(dataset.shards).of(options, json.dumps(transform, sort_keys=True, default=str))
