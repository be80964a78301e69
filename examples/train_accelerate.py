"""Hugging Face Accelerate: one call prepares model, optimizer and a ShardLoader; save_state resumes mid-epoch.

    python examples/write_imagefolder.py --demo 200 images data
    accelerate launch --num_processes 2 --multi_gpu examples/train_accelerate.py data/manifest.json   # 2 GPUs
    accelerate launch examples/train_accelerate.py data/manifest.json --stop-after 3    # saves state/, stops
    accelerate launch examples/train_accelerate.py data/manifest.json --resume          # goes on from there

(pip install accelerate.) Use shardpipe.integrations.accelerate.prepare, not accelerator.prepare, for the
loader: Accelerate would re-split data that ShardDataset already splits per rank (that is refused).
"""

import argparse

import torch
from accelerate import Accelerator

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop
from shardpipe.format.manifest import read_manifest
from shardpipe.image.normalize import normalize
from shardpipe.integrations import accelerate as sp_accelerate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stop-after", type=int, default=0, help="save the state after this many steps and stop")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--num-classes", type=int, help="outputs of the model (default: the manifest's class_names)")
    args = parser.parse_args()
    # the output layer fits the data: `shardpipe write` records the classes it found in the manifest
    num_classes = args.num_classes or len(read_manifest(args.manifest).get("class_names") or [])
    if not num_classes:
        parser.error("the manifest names no classes (integer labels): pass --num-classes")

    accelerator = Accelerator()
    dataset = ShardDataset(args.manifest, shuffle=100, seed=0, transform=RandomResizedCrop(64), batch_size=16)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # batches arrive on accelerator.device; the loader's position is saved by save_state
    model, optimizer, loader = sp_accelerate.prepare(accelerator, model, optimizer, ShardLoader(dataset, num_workers=2))
    if args.resume:
        accelerator.load_state("state")

    step = 0
    while (epoch := loader.local_state_dict()["epoch"]) < args.epochs:
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(normalize(batch["jpg"])), batch["cls"])
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == args.stop_after:
                accelerator.save_state("state")
                accelerator.print(f"saved the state after {step} steps (epoch {epoch})")
                return
        accelerator.print(f"epoch {epoch}: {step} steps so far")


if __name__ == "__main__":
    main()
