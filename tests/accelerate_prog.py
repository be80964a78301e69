"""A training loop under ``accelerate launch`` (run by tests/test_integrations.py).

Usage: accelerate launch --cpu --num_processes N -m tests.accelerate_prog MANIFEST OUT_PREFIX [--stop S] [--epochs E]
[--ckpt DIR] [--resume] [--mode helper|dispatch|plain-prepare]
Each process records the keys of its batches, in order, in OUT_PREFIX.rankR.json; with STOP_STEP
it saves ``accelerator.save_state(CKPT)`` after that many steps and stops; with ``resume`` it loads it.
"""

from __future__ import annotations

import json

import torch


def main(manifest: str, out: str, stop: int, epochs: int, ckpt: str, resume: bool, mode: str) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from shardpipe import ShardDataset, ShardLoader
    from shardpipe.integrations import accelerate as sp_accelerate

    config = DataLoaderConfiguration(dispatch_batches=True) if mode == "dispatch" else None
    accelerator = Accelerator(cpu=True, dataloader_config=config)
    loader = ShardLoader(ShardDataset(manifest, shuffle=5, seed=2, batch_size=3), num_workers=2)
    model = torch.nn.Linear(3, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if mode == "plain-prepare":  # what users try first: refused with SetupError
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    else:
        model, optimizer, loader = sp_accelerate.prepare(accelerator, model, optimizer, loader)
    if resume:
        accelerator.load_state(ckpt)
    seen: list[list[str]] = []
    step = 0
    for _ in range(epochs):
        for batch in loader:
            x = batch["jpg"].float().mean(dim=(2, 3)) / 255
            loss = torch.nn.functional.cross_entropy(model(x), batch["cls"])
            accelerator.backward(loss)  # DDP all-reduces: a rank with fewer batches would hang here
            optimizer.step()
            optimizer.zero_grad()
            seen.append(list(batch["__key__"]))
            step += 1
            if step == stop:
                accelerator.save_state(ckpt)
                break
        if step == stop:
            break
    with open(f"{out}.rank{accelerator.process_index}.json", "w") as f:
        json.dump({"batches": seen, "world": accelerator.num_processes}, f)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("manifest")
    p.add_argument("out")
    p.add_argument("--stop", type=int, default=-1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--ckpt", default="")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--mode", default="helper", choices=["helper", "dispatch", "plain-prepare"])
    a = p.parse_args()
    main(a.manifest, a.out, a.stop, a.epochs, a.ckpt, a.resume, a.mode)
