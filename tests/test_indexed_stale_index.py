"""A spawn or forkserver DataLoader worker loads the index again: it must be the index that the main
process checked against the manifest, not one rebuilt since. Run as a real program with real workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import sys
from pathlib import Path
from torch.utils.data import DataLoader
import shardpipe
from tests.helpers import make_samples, write_shards

def build(root, prefix, counts):
    urls = write_shards(root, make_samples(sum(counts), prefix), counts)
    shardpipe.index_shards(urls, str(root / "manifest.json"), workers=1)

if __name__ == "__main__":
    root, method, rebuild = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "rebuild"
    build(root, "old", [3, 3])
    ds = shardpipe.IndexedDataset(str(root / "manifest.json"), decode=None)
    if rebuild:  # the shards are written again and reindexed while the dataset is in use
        build(root, "new", [5, 1])
    loader = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context=method)
    try:
        print("read", [s["__key__"] for s in loader])
    except shardpipe.ShardpipeError as e:  # re-raised from the worker: its own line comes last
        print(f"error {str(e).splitlines()[-1]}")
"""


def run(tmp_path: Path, method: str, rebuild: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path), method, rebuild],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_worker_refuses_an_index_rebuilt_after_the_dataset_was_made(tmp_path: Path, method: str):
    """The worker read the new index without a check: 6 samples of the new shards ([5, 1] per shard)
    through a dataset whose main process had checked the old index ([3, 3]) and the old manifest."""
    assert run(tmp_path, method, "rebuild") == (
        f"error shardpipe.format.index.DamagedIndexError: index {tmp_path}/manifest.json"[: -len("json")]
        + "index changed after this "
        "dataset was made (rebuilt while a run read it?): a worker would read samples through an index that its "
        "manifest was not checked against; make the dataset again once the index is rebuilt"
    )


def test_a_worker_reads_through_the_index_its_main_process_checked(tmp_path: Path):
    assert run(tmp_path, "spawn", "keep") == "read " + str([f"old{i:05d}" for i in range(6)])
