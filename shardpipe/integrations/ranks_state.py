"""Every rank's loader state in one dict: frameworks save checkpoints from rank 0 only.

Accelerate's ``save_state`` and Lightning's checkpoints are written by the main process, but
each rank's ``ShardLoader`` stands at its own position. ``gather_json`` collects every rank's
state (JSON over the process group, no pickle) when a checkpoint is made (a collective call:
frameworks make it on every rank), and ``pick_own`` hands each rank its entry on load (any
number of ranks, for a state saved between epochs).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from shardpipe.errors import SetupError
from shardpipe.loader import ShardLoader
from shardpipe.stages.base import State

KEY = "shardpipe_ranks"


def collective_device() -> torch.device:
    """Where the default process group's collectives take their tensors: the CPU, or this process's GPU
    under NCCL (which has no CPU side: Accelerate and Lightning choose it on GPUs)."""
    if torch.distributed.get_backend() == torch.distributed.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_json(value: Any) -> list[Any]:
    """Every rank's ``value`` (JSON-serialisable), in rank order."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    world, device = torch.distributed.get_world_size(), collective_device()
    data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([data.numel()], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    parts = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return [json.loads(bytes(p[: int(s.item())].tolist())) for p, s in zip(parts, sizes)]


def gather_json(state: State) -> dict[str, Any]:
    """``{"shardpipe_ranks": [state of rank 0, rank 1, ...]}`` (collective under a process group)."""
    return {KEY: _all_json(state)}


def pick_own(state: dict[str, Any], loader: ShardLoader) -> State:
    """This rank's entry of a ``gather_json`` dict; a state saved between epochs fits any number of ranks, one
    saved mid-epoch is refused (``SetupError``) when the number of ranks differs."""
    ranks = state[KEY]
    rank, world = loader.source.rank_and_world()
    if len(ranks) == world:
        return ranks[rank]
    if all(s["workers"] is None for s in ranks) and len({s["epoch"] for s in ranks}) == 1:
        return ranks[0]  # saved between epochs: the next epoch's start, which fits any number of processes
    raise SetupError(
        f"the checkpoint holds loader states of {len(ranks)} processes saved mid-epoch but {world} run now: "
        f"each process's position only holds for {len(ranks)}; resume with {len(ranks)} processes "
        "(a checkpoint saved between epochs fits any number)"
    )
