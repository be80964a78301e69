"""One rank of the real torch.distributed test (run by tests/test_distributed.py with spawn)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def main(rank: int, world: int, store: str, manifest: str, policy: str, out: str, algo: str = "window") -> None:
    # a file store: no TCP port to pick (and lose to another process) before gloo binds it
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    from shardpipe import ShardDataset, ShardLoader

    if policy == "mix":  # two sources in a MixedDataset: 61 samples per epoch over all ranks and workers
        from shardpipe import MixedDataset

        sources = [ShardDataset(manifest, shuffle=5, seed=s, decode=None) for s in (1, 2)]
        ds = MixedDataset(sources, [0.7, 0.3], samples_per_epoch=61, batch_size=3)
    else:
        shuffle = True if algo == "block" else 5
        ds = ShardDataset(
            manifest, shuffle=shuffle, shuffle_algo=algo, seed=1, decode=None, batch_size=3, epoch_policy=policy
        )
    loader = ShardLoader(ds, num_workers=2)
    keys, pads, steps = [], [], 0
    for batch in loader:
        t = torch.ones(1)
        dist.all_reduce(t)  # a rank with fewer batches would leave the others waiting here
        assert t.item() == world
        keys += batch["__key__"]
        pads += batch["__pad__"].tolist() if "__pad__" in batch else [False] * len(batch["__key__"])
        steps += 1
    dist.barrier()
    with open(out, "w") as f:
        json.dump({"rank": rank, "steps": steps, "keys": keys, "pads": pads}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])  # type: ignore[arg-type]
