"""One trainer rank of the decode-fleet gloo test: a RemoteLoader on its own servers."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def main(rank: int, world: int, store: str, servers: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    from shardpipe import RemoteLoader

    loader = RemoteLoader(servers.split(","), timeout=10)
    keys, steps = [], 0
    for batch in loader:
        t = torch.ones(1)
        dist.all_reduce(t)  # a rank with fewer batches would leave the others waiting here
        assert t.item() == world
        keys += batch["__key__"]
        steps += 1
    dist.barrier()
    with open(out, "w") as f:
        json.dump({"rank": rank, "steps": steps, "keys": keys, "parts": loader.parts}, f)
    loader.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
