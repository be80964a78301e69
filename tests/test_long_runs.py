"""Persistent workers in long runs, as training-loop programs run in subprocesses: loops that leave
each epoch early, and workers that die between epochs."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from shardpipe.devtools.synth import make_image

from .helpers import run_in_group, write_manifest_dataset

ROOT = Path(__file__).resolve().parent.parent
COUNTS = [8, 4, 12, 1, 7, 9, 5]

PRELUDE = """
import json, os, signal, sys, threading, time
import torch
from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop

MANIFEST = {manifest!r}


def dataset():
    return ShardDataset(MANIFEST, shuffle=6, seed=11, batch_size=2, transform=RandomResizedCrop(16))


def pixels(epoch):
    \"\"\"Each sample's augmented pixels in ``epoch``, from a pass in this process.\"\"\"
    ds = dataset()
    ds.set_epoch(epoch)
    return {{k: img.clone() for b in ds for k, img in zip(b["__key__"], b["jpg"])}}


def same(batch, ref):
    return all(torch.equal(img, ref[k]) for k, img in zip(batch["__key__"], batch["jpg"]))


def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    samples = []
    for i in range(sum(COUNTS)):
        buf = io.BytesIO()
        make_image(i, size=(64, 48)).save(buf, "JPEG", quality=90)
        samples.append({"__key__": f"sample{i:05d}", "jpg": buf.getvalue(), "cls": i % 5})
    return write_manifest_dataset(tmp_path_factory.mktemp("long-runs"), samples, COUNTS)


def run_program(tmp_path: Path, manifest: str, body: str) -> tuple[dict, str]:
    """Run the prelude and ``body`` as a script; (its RESULT values, its stderr)."""
    script = tmp_path / "train.py"
    script.write_text(PRELUDE.format(manifest=manifest) + body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = run_in_group([sys.executable, str(script)], timeout=240, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = [json.loads(line[7:]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, run.stdout
    return results[0], run.stderr


LEAVES_EARLY = """
from shardpipe.stages.buffers import SLOTS, _segment_id

loader = ShardLoader(dataset(), num_workers=2, persistent_workers=True, prefetch_factor=2)
kept = []
for epoch in range(4):  # a loop of fewer steps than the epoch has batches leaves each pass early
    for step, batch in enumerate(loader):
        if step == 1:
            kept.append((epoch, batch))
            break
batch = None
segments, batches, keys, right = set(), 0, [], True
ref = pixels(4)
for batch in loader:  # a whole epoch
    segments.add(_segment_id(batch["jpg"].untyped_storage()))
    batches += 1
    keys += batch["__key__"]
    right = right and same(batch, ref)
report(segments=len(segments), batches=batches, slots=2 * SLOTS, right=right, keys=sorted(keys),
       kept=[same(b, pixels(e)) for e, b in kept])
"""


def test_a_loop_that_leaves_each_epoch_early_keeps_recycling_batch_buffers(tmp_path, manifest):
    """torch drops the batches persistent workers had in flight when the next pass starts; their
    buffers go back to the pool (they stayed busy for good: after two such epochs every batch took a
    fresh segment), and the batches the loop kept are never overwritten."""
    r, _ = run_program(tmp_path, manifest, LEAVES_EARLY)
    assert r["right"] and r["kept"] == [True] * 4
    assert r["keys"] == [f"sample{i:05d}" for i in range(sum(COUNTS))]
    assert r["segments"] <= r["slots"] < r["batches"], r  # recycled: at most SLOTS per worker
