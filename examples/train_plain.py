"""Train a small classifier from shards on one GPU (or the CPU), saving and resuming mid-epoch.

python examples/write_imagefolder.py --demo 200 images data
python examples/train_plain.py data/manifest.json --epochs 2
"""

import argparse
import os

import torch

from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop
from shardpipe.format.manifest import read_manifest
from shardpipe.image.normalize import normalize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--checkpoint", default="checkpoint.pt")
    parser.add_argument("--num-classes", type=int, help="outputs of the model (default: the manifest's class_names)")
    args = parser.parse_args()
    # the output layer fits the data: `shardpipe write` records the classes it found in the manifest
    num_classes = args.num_classes or len(read_manifest(args.manifest).get("class_names") or [])
    if not num_classes:
        parser.error("the manifest names no classes (integer labels): pass --num-classes")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = ShardDataset(
        args.manifest,
        shuffle=100,
        seed=0,
        transform=Compose([RandomResizedCrop(64), RandomHorizontalFlip()]),
        batch_size=32,
        require=["jpg", "cls"],
    )
    loader = ShardLoader(dataset, num_workers=2, pin_memory=device.type == "cuda")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, num_classes),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    if os.path.exists(args.checkpoint):  # resume: model, optimizer and the loader's position mid-epoch
        checkpoint = torch.load(args.checkpoint)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        loader.load_state_dict(checkpoint["data"])

    def save() -> None:  # the data position is a few integers per worker
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "data": loader.state_dict()}
        torch.save(state, args.checkpoint)

    while (epoch := loader.state_dict()["epoch"]) < args.epochs:  # the epoch the next pass runs
        images = 0
        for step, batch in enumerate(loader):  # each pass is the next epoch (or the rest of a resumed one)
            x = normalize(batch["jpg"].to(device, non_blocking=True))
            y = batch["cls"].to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += len(y)
            if step % 100 == 0:
                save()  # mid-epoch: a restart goes on from the next batch
        save()  # between epochs: a restart begins the next epoch
        print(f"epoch {epoch}: {images} images")


if __name__ == "__main__":
    main()
