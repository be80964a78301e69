"""PyTorch Lightning with a ShardDataModule: checkpoints hold the loader position; resume mid-epoch.

    python examples/write_imagefolder.py --demo 200 images data
    python examples/train_lightning.py data/manifest.json --max-steps 5     # stops mid-epoch, saves ckpt/last.ckpt
    python examples/train_lightning.py data/manifest.json --resume ckpt/last.ckpt   # goes on from that batch

(pip install lightning)
"""

import argparse

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from shardpipe import ShardDataset
from shardpipe.augment import RandomResizedCrop
from shardpipe.format.manifest import read_manifest
from shardpipe.image.normalize import normalize
from shardpipe.integrations.lightning import ShardDataModule


class Classifier(pl.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, num_classes))

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.net(normalize(batch["jpg"])), batch["cls"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--resume", help="a checkpoint to resume from")
    parser.add_argument("--num-classes", type=int, help="outputs of the model (default: the manifest's class_names)")
    args = parser.parse_args()
    # the output layer fits the data: `shardpipe write` records the classes it found in the manifest
    num_classes = args.num_classes or len(read_manifest(args.manifest).get("class_names") or [])
    if not num_classes:
        parser.error("the manifest names no classes (integer labels): pass --num-classes")

    dataset = ShardDataset(args.manifest, shuffle=100, seed=0, transform=RandomResizedCrop(64), batch_size=16)
    datamodule = ShardDataModule(train=dataset, num_workers=2)
    trainer = pl.Trainer(
        accelerator="auto",  # a GPU when there is one, else the CPU
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        callbacks=[ModelCheckpoint(dirpath="ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)],
        logger=False,
        enable_progress_bar=False,
    )
    trainer.fit(Classifier(num_classes), datamodule=datamodule, ckpt_path=args.resume)
    print(f"trained {trainer.global_step} steps; epoch {trainer.current_epoch}")


if __name__ == "__main__":
    main()
