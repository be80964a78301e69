"""Equal per-rank epochs: real torch.distributed (gloo) processes, and a 64 x 8 simulated split."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from shardpipe.split.plan import plan_ranges, rank_share
from shardpipe.stages import Shard

from .helpers import make_samples, process_groups, write_manifest_dataset

COUNTS = [9, 2, 14, 5, 1, 11, 7]  # 49 samples in 7 uneven shards
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("policy", ["drop", "pad"])
def test_real_gloo_ranks_get_equal_disjoint_epochs(tmp_path: Path, world: int, policy: str):
    manifest = write_manifest_dataset(tmp_path, make_samples(sum(COUNTS)), COUNTS)
    store = tmp_path / "gloo-store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmds = [
        [sys.executable, "-m", "tests.dist_worker", str(r), str(world), str(store), manifest, policy,
         str(tmp_path / f"r{r}.json")]
        for r in range(world)
    ]  # fmt: skip
    # each rank leads its own process group: its DataLoader workers die with it, also on a timeout
    with process_groups(*cmds, cwd=ROOT, env=env) as procs:
        codes = [p.wait(timeout=180) for p in procs]
    assert codes == [0] * world, "a rank failed or hung (see its output above)"
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(world)]
    steps = {r["steps"] for r in results}
    assert len(steps) == 1, f"ranks ran different numbers of batches: {steps}"
    real = [k for r in results for k, pad in zip(r["keys"], r["pads"]) if not pad]
    total = sum(COUNTS)
    assert len(real) == len(set(real)), "a sample was seen twice"
    everything = {s["__key__"] for s in make_samples(total)}
    if policy == "drop":
        assert set(real) <= everything and total - len(real) == total % world
    else:
        assert set(real) == everything
        padded = [k for r in results for k, pad in zip(r["keys"], r["pads"]) if pad]
        assert len(padded) == -total % world and set(padded) <= everything
    assert len({len(r["keys"]) for r in results}) == 1


@pytest.mark.parametrize("policy", ["drop", "pad"])
@pytest.mark.parametrize(
    "counts, world, workers",
    [
        (np.random.default_rng(0).integers(1, 400, size=517).tolist(), 64, 8),  # far from dividing evenly
        ([1, 2], 8, 3),  # more ranks than samples: pad wraps around the order several times
        ([1], 4, 2),
    ],
)
def test_simulated_ranks_by_workers(policy, counts, world, workers):
    shards = [Shard(f"s{i}.tar", i, samples=c) for i, c in enumerate(counts)]
    total = sum(counts)
    seen: list[tuple[int, int, bool]] = []
    per_rank, per_worker = [], []
    for rank in range(world):
        rank_n = 0
        for worker in range(workers):
            segs = plan_ranges(
                shards,
                seed=3,
                epoch=5,
                rank=rank,
                world_size=world,
                worker=worker,
                num_workers=workers,
                shuffle=True,
                policy=policy,
            )
            n = 0
            for seg in segs:
                assert 0 <= seg.start < seg.stop <= seg.samples
                seen += [(seg.index, i, seg.pad) for i in range(seg.start, seg.stop)]
                n += seg.stop - seg.start
            per_worker.append((worker, n))
            rank_n += n
        per_rank.append(rank_n)
    share = rank_share(total, world, policy)
    assert per_rank == [share] * world  # every rank the same number of samples
    for w in range(workers):  # and every rank's worker w the same, so the same batch counts
        assert len({n for ww, n in per_worker if ww == w}) == 1
    real = [(i, j) for i, j, pad in seen if not pad]
    assert len(real) == len(set(real))  # disjoint
    assert share > 0 or policy == "drop"
    if policy == "drop":
        assert total - len(real) == total % world
    else:
        assert len(real) == total and len(seen) - total == -total % world


@pytest.mark.parametrize("with_manifest", [True, False])
def test_resampled_epochs_have_a_fixed_length_per_consumer(tmp_path: Path, with_manifest: bool):
    from shardpipe import ShardDataset, ShardLoader

    manifest = write_manifest_dataset(tmp_path, make_samples(sum(COUNTS)), COUNTS)
    urls = manifest if with_manifest else sorted(str(p) for p in tmp_path.glob("*.tar"))
    per_rank = []
    for rank in range(2):
        ds = ShardDataset(
            urls, decode=None, batch_size=4, epoch_policy="resample", samples_per_epoch=60, rank=rank, world_size=2
        )
        keys = [k for b in ShardLoader(ds, num_workers=2) for k in b["__key__"]]
        per_rank.append(keys)
    assert [len(k) for k in per_rank] == [30, 30]  # 60 // (2 ranks x 2 workers) = 15 per worker
    assert per_rank[0] != per_rank[1]  # each consumer draws its own shards
    assert set(per_rank[0]) | set(per_rank[1]) <= {s["__key__"] for s in make_samples(sum(COUNTS))}
    with pytest.raises(ValueError, match="needs samples_per_epoch"):
        ShardDataset(urls, epoch_policy="resample")
