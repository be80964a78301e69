"""A Lightning run over ShardDataModule (run by tests/test_integrations.py as a subprocess).

Usage: python -m tests.lightning_prog MANIFEST OUT.json CKPT_DIR MAX_STEPS|-1 EPOCHS DEVICES [RESUME.ckpt] [--epoch-end]
Records the keys of every batch the training step saw, in order (OUT.json, or OUT.rankR.json with DEVICES > 1).
Checkpoints after every step, or with ``--epoch-end`` at each epoch's end only (ModelCheckpoint's default).
"""

from __future__ import annotations

import json
import sys

import torch


def main(
    manifest: str,
    out: str,
    ckpt_dir: str,
    max_steps: int,
    epochs: int,
    devices: int,
    resume: str | None,
    epoch_end: bool,
) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from shardpipe import ShardDataset
    from shardpipe.integrations.lightning import ShardDataModule

    seen: list[list[str]] = []

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 5)

        def training_step(self, batch, batch_idx):
            seen.append(list(batch["__key__"]))
            x = batch["jpg"].float().mean(dim=(2, 3)) / 255
            return torch.nn.functional.cross_entropy(self.layer(x), batch["cls"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dataset = ShardDataset(manifest, shuffle=7, seed=3, batch_size=4)
    datamodule = ShardDataModule(train=dataset, num_workers=2)
    every = {} if epoch_end else {"every_n_train_steps": 1}
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, **every)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=epochs,
        max_steps=max_steps,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Tiny(), datamodule=datamodule, ckpt_path=resume)
    with open(out if devices == 1 else out.replace(".json", f".rank{trainer.global_rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if x != "--epoch-end"]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6] if len(a) > 6 else None, "--epoch-end" in sys.argv)
