"""This process's (rank, world_size), from whatever launched it.

Checked in order, the first that applies wins:

1. an initialised ``torch.distributed`` process group (DDP, Accelerate, Lightning set one up);
2. ``RANK`` and ``WORLD_SIZE`` (``torchrun``, ``accelerate launch``, ``torch.distributed.launch``);
3. ``SLURM_PROCID`` and ``SLURM_STEP_NUM_TASKS`` / ``SLURM_NTASKS`` (each task of ``srun``);
4. otherwise one process: (0, 1).

Half a pair (``RANK`` without ``WORLD_SIZE``, ``SLURM_PROCID`` without a task count), values
that are not integers, or a rank outside ``[0, world_size)`` raise ``SetupError`` naming the
variables: guessing would make every rank read the same samples, or skip some.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from shardpipe.errors import SetupError

#: (rank variable, world-size variables (first set wins), launcher it comes from)
_ENV_PAIRS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("RANK", ("WORLD_SIZE",), "torchrun / accelerate launch"),
    ("SLURM_PROCID", ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), "SLURM srun"),
)


def _integer(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise SetupError(f"environment variable {name}={value!r} is not an integer") from None


def rank_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(rank, world_size) from a launcher's environment variables, or None when no launcher set any."""
    env = os.environ if env is None else env
    for rank_var, world_vars, launcher in _ENV_PAIRS:
        world_var = next((w for w in world_vars if w in env), None)
        if rank_var not in env and world_var is None:
            continue
        if rank_var not in env or world_var is None:
            have, missing = (rank_var, " or ".join(world_vars)) if world_var is None else (world_var, rank_var)
            raise SetupError(
                f"{have} is set but {missing} is not ({launcher} sets both): shardpipe cannot tell which share "
                f"of the data this process reads; set both, or pass rank= and world_size= to ShardDataset"
            )
        rank, world = _integer(env, rank_var), _integer(env, world_var)
        if world < 1 or not 0 <= rank < world:
            raise SetupError(
                f"{rank_var}={rank} and {world_var}={world} do not describe a process of a job: "
                f"the rank must be in [0, {world_var})"
            )
        return rank, world
    return None


def distributed_rank(strict: bool = True) -> tuple[int, int]:
    """(rank, world_size) of this process: torch.distributed, else a launcher's variables, else (0, 1).

    ``strict=False`` (a dataset being built, before the process group may exist: Lightning sets
    ``WORLD_SIZE`` first and ``RANK`` only with the group) gives (0, 1) for a half-set environment;
    the pass that reads data asks again, strictly.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        return rank_from_env() or (0, 1)
    except SetupError:
        if strict:
            raise
        return 0, 1
