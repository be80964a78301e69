"""Data-parallel training with torchrun: each rank reads its own equal share of every epoch.

    python examples/write_imagefolder.py --demo 200 images data
    torchrun --standalone --nproc_per_node 2 examples/train_ddp.py data/manifest.json

Rank and world size come from the process group (torchrun also sets RANK/WORLD_SIZE, and
srun's SLURM_PROCID/SLURM_NTASKS are read too): ShardDataset needs no rank arguments.
With the manifest every rank gets the same number of batches, so no rank waits on another.
"""

import argparse
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop
from shardpipe.format.manifest import read_manifest
from shardpipe.image.normalize import normalize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-classes", type=int, help="outputs of the model (default: the manifest's class_names)")
    args = parser.parse_args()
    # the output layer fits the data: `shardpipe write` records the classes it found in the manifest
    num_classes = args.num_classes or len(read_manifest(args.manifest).get("class_names") or [])
    if not num_classes:
        parser.error("the manifest names no classes (integer labels): pass --num-classes")

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu")
    dataset = ShardDataset(args.manifest, shuffle=100, seed=0, transform=RandomResizedCrop(64), batch_size=16)
    loader = ShardLoader(dataset, num_workers=2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, num_classes)).to(device)
    model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    for epoch in range(args.epochs):
        batches = 0
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(normalize(batch["jpg"].to(device))), batch["cls"].to(device))
            optimizer.zero_grad()
            loss.backward()  # all-reduce: every rank must run the same number of steps
            optimizer.step()
            batches += 1
        sys.stdout.write(f"rank {rank}: epoch {epoch}: {batches} batches\n")  # one write: the ranks share stdout
        sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
