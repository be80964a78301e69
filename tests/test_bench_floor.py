"""The benchmark's floor (``shardpipe.devtools.bench.floor``): the kernel fed by DataLoader workers, nothing else.

It is the reference the pipeline target is read against, so it must do the kernel's work on every
image exactly once: each row is compared byte for byte with the kernel run on the same JPEG.
The loader runs in a program of its own (its workers fork; pytest's process is not a user's).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from shardpipe.augment.base import SampleRngs
from shardpipe.dataset import ShardDataset
from shardpipe.devtools.bench.floor import POOL, jpeg_records
from shardpipe.devtools.bench.kernels import shardpipe_train_kernel
from shardpipe.devtools.bench.loaders import manifest_urls
from shardpipe.devtools.synth import make_dataset
from shardpipe.write.shard_writer import ShardWriter

PROGRAM = r"""
import hashlib, json, sys
from shardpipe.devtools.bench.floor import floor_loader
urls, batch, workers = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = []
loader, sent = floor_loader(urls, batch=batch, size=32, workers=workers, seed=5), []
raw = loader.loader
class Spy:  # which batches carried their buffer (the rest carried a slot number)
    def __iter__(self):
        for item in raw:
            sent.append(item["buffer"] is not None)
            yield item
loader.loader = Spy()
for b in loader:
    images = b["jpg"]
    assert images.dtype.is_floating_point is False and tuple(images.shape[1:]) == (3, 32, 32), images.shape
    assert images.permute(0, 2, 3, 1).is_contiguous()  # channels_last memory, NCHW shape
    rows = images.permute(0, 2, 3, 1).numpy()
    out.append([[key, hashlib.sha256(rows[i].tobytes()).hexdigest()] for i, key in enumerate(b["__key__"])])
print(json.dumps({"batches": out, "sent": sent}))
"""


def _shards(tmp_path: Path, n: int = 23) -> tuple[str, dict[str, bytes]]:
    with ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=6) as w:
        jpegs = {}
        for key, data, label in make_dataset(n, 3):
            w.write({"__key__": key, "jpg": data, "cls": label, "txt": key.encode()})
            jpegs[key] = data
    return str(tmp_path / "manifest.json"), jpegs


def test_records_point_at_each_jpeg_exactly(tmp_path: Path):
    manifest, jpegs = _shards(tmp_path)
    records = jpeg_records(manifest_urls(manifest))
    assert [r[3] for r in records] == [s["__key__"] for s in ShardDataset(manifest, decode=None)]
    for path, offset, size, key in records:
        with open(path, "rb") as f:
            f.seek(offset)
            assert f.read(size) == jpegs[key], key


def test_every_image_once_as_the_kernel_makes_it(tmp_path: Path):
    """2 workers, batches of 2 over 23 images in 4 shards (6 batches a worker: each of its POOL
    buffers is reused): each key once, each row the kernel's output, each buffer sent once."""
    manifest, jpegs = _shards(tmp_path)
    urls = manifest_urls(manifest)
    cmd = [sys.executable, "-c", PROGRAM, json.dumps(urls), "2", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    batches = out["batches"]
    got = [pair for b in batches for pair in b]
    assert sorted(k for k, _ in got) == sorted(jpegs)  # every image, once
    assert sorted(len(b) for b in batches) == [1] + [2] * 11  # the workers' 12 and 11 images in batches of 2
    assert sum(out["sent"]) == 2 * POOL and len(out["sent"]) == 12  # then slots, the main process keeps the buffers

    fn, rngs = shardpipe_train_kernel("auto", 32), SampleRngs()
    for key, digest in got:
        expected = np.ascontiguousarray(fn(jpegs[key], rngs(5, 0, key)))
        assert hashlib.sha256(expected.tobytes()).hexdigest() == digest, key
