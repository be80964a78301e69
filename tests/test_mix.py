"""MixedDataset: exact proportions, per-source epochs, resume, equal ranks, batching."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from shardpipe import MixedDataset, ShardDataset
from shardpipe.mix import quotas
from tests.helpers import make_samples, process_groups, write_manifest_dataset

SIZES = {"a": 30, "b": 60, "c": 200}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    out = {}
    for name, n in SIZES.items():
        root = tmp_path_factory.mktemp(f"src-{name}")
        counts = [n // 3, n // 3, n - 2 * (n // 3)]
        out[name] = write_manifest_dataset(root, make_samples(n, prefix=f"{name}-"), counts)
    return out


def make_mix(manifests, weights=(0.5, 0.3, 0.2), samples_per_epoch=400, decode=None, **kw):
    rank_kw = {k: kw.pop(k) for k in ("rank", "world_size") if k in kw}
    sources = [
        ShardDataset(manifests[name], shuffle=16, seed=7 + i, decode=decode, **rank_kw) for i, name in enumerate(SIZES)
    ]
    return MixedDataset(sources, list(weights), samples_per_epoch=samples_per_epoch, seed=11, **kw)


def keys_of(items):
    out = []
    for item in items:
        out.extend(item["__key__"] if isinstance(item["__key__"], list) else [item["__key__"]])
    return out


def test_quotas_are_exact_to_one_draw():
    assert quotas([0.5, 0.3, 0.2], 400) == [200, 120, 80]
    q = quotas([1, 1, 1], 10)
    assert sum(q) == 10 and max(q) - min(q) == 1
    assert quotas([0, 2], 5) == [0, 5]


def test_proportions_hold_each_epoch_and_orders_differ(manifests):
    mix = make_mix(manifests)
    per_epoch = []
    for epoch in range(3):
        mix.set_epoch(epoch)
        keys = keys_of(mix)
        assert len(keys) == 400
        counts = Counter(k.split("-")[0] for k in keys)
        assert counts == {"a": 200, "b": 120, "c": 80}
        per_epoch.append([k.split("-")[0] for k in keys])
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]


def test_small_sources_cycle_through_their_epochs_and_large_ones_continue(manifests):
    mix = make_mix(manifests)
    keys = []
    for epoch in range(2):
        mix.set_epoch(epoch)
        keys += keys_of(mix)
    a = [k for k in keys if k.startswith("a-")]
    # source a (30 samples) is drawn 400 times: every run of 30 holds each of its samples once
    for start in range(0, len(a) - len(a) % 30, 30):
        assert sorted(a[start : start + 30]) == sorted(f"a-{i:05d}" for i in range(30))
    # and its epochs come in different orders
    assert a[:30] != a[30:60]
    # source c (200 samples) gives 80 per mixed epoch: two epochs are 160 distinct samples (no restart)
    c = [k for k in keys if k.startswith("c-")]
    assert len(c) == 160 and len(set(c)) == 160


@pytest.mark.parametrize("cut", [0, 1, 57, 199, 400, 431])
def test_resume_mid_epoch_and_across_the_epoch_end_is_exact(manifests, cut):
    full = make_mix(manifests, decode="rgb8")
    reference = []
    for epoch in range(2):
        full.set_epoch(epoch)
        reference += [(s["__key__"], s["jpg"]) for s in full]

    first = make_mix(manifests, decode="rgb8")
    got, epoch = [], 0
    first.set_epoch(0)
    it = iter(first)
    while len(got) < cut:
        try:
            s = next(it)
        except StopIteration:
            epoch += 1
            first.set_epoch(epoch)
            it = iter(first)
            continue
        got.append((s["__key__"], s["jpg"]))
    state = json.loads(json.dumps(first.state_dict()))
    it.close()

    second = make_mix(manifests, decode="rgb8")
    second.load_state_dict(state)
    while len(got) < len(reference):
        before = len(got)
        got += [(s["__key__"], s["jpg"]) for s in second]
        second.set_epoch(second.epoch + 1)
        assert len(got) > before
    assert [k for k, _ in got] == [k for k, _ in reference]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(got, reference))


def test_batches_mix_sources_and_ranks_get_equal_batch_counts(manifests):
    per_rank = []
    for rank in range(2):
        mix = make_mix(manifests, batch_size=32, rank=rank, world_size=2, samples_per_epoch=401)
        batches = list(mix)
        per_rank.append(batches)
        # 401 // 2 = 200 samples per rank: 6 batches of 32 and one of 8
        assert [len(b["__key__"]) for b in batches] == [32] * 6 + [8]
        assert any(len({k.split("-")[0] for k in b["__key__"]}) == 3 for b in batches)
    assert len(per_rank[0]) == len(per_rank[1])
    # within one epoch of a source, the ranks read disjoint samples
    c0 = {k for b in per_rank[0] for k in b["__key__"] if k.startswith("c-")}
    c1 = {k for b in per_rank[1] for k in b["__key__"] if k.startswith("c-")}
    assert c0 and c1 and not c0 & c1
    dropped = list(make_mix(manifests, batch_size=32, drop_last=True, rank=0, world_size=2, samples_per_epoch=401))
    assert [len(b["__key__"]) for b in dropped] == [32] * 6


def test_bad_arguments_are_refused(manifests):
    ds = ShardDataset(manifests["a"], decode=None)
    with pytest.raises(ValueError, match="got 1 weights for 2 datasets"):
        MixedDataset([ds, ds], [1.0], samples_per_epoch=10)
    with pytest.raises(ValueError, match="weights must be finite, >= 0 and not all 0"):
        MixedDataset([ds, ds], [0, 0], samples_per_epoch=10)
    with pytest.raises(ValueError, match=r"source 0 batches \(batch_size=4\); give batch_size to MixedDataset"):
        MixedDataset([ShardDataset(manifests["a"], batch_size=4)], [1], samples_per_epoch=10)
    with pytest.raises(TypeError, match="source 0 is a list; MixedDataset mixes ShardDatasets"):
        MixedDataset([[1, 2]], [1], samples_per_epoch=10)
    mix = MixedDataset([ShardDataset(manifests["a"], world_size=4, rank=0)], [1], samples_per_epoch=3)
    with pytest.raises(ValueError, match="samples_per_epoch=3 is less than the 4 consumers"):
        list(mix)
    with pytest.raises(ValueError, match="mixed state has version 9"):
        mix.load_state_dict({"version": 9})


def loader_keys(loader, epochs):
    out = []
    for _ in range(epochs):
        out.append([k for b in loader for k in b["__key__"]])
    return out


@pytest.mark.parametrize("persistent", [False, True])
def test_shard_loader_workers_carry_sources_across_epochs(manifests, persistent):
    from shardpipe import ShardLoader

    mix = make_mix(manifests, batch_size=16, samples_per_epoch=320)
    loader = ShardLoader(mix, num_workers=2, persistent_workers=persistent)
    epochs = loader_keys(loader, 3)
    assert [len(e) for e in epochs] == [320, 320, 320]
    for keys in epochs:
        assert Counter(k.split("-")[0] for k in keys) == {"a": 160, "b": 96, "c": 64}
    # source c: 200 samples, each worker reads its own 100 of them, 32 per epoch: three epochs
    # are 192 distinct samples (it went on from where each epoch left it)
    c = [k for keys in epochs for k in keys if k.startswith("c-")]
    assert len(c) == 192 and len(set(c)) == 192
    if persistent:
        fresh = ShardLoader(make_mix(manifests, batch_size=16, samples_per_epoch=320), num_workers=2)
        assert loader_keys(fresh, 3) == epochs


@pytest.mark.parametrize("cut", [3, 10, 20])
def test_shard_loader_resume_mid_epoch_and_at_the_epoch_end(manifests, cut):
    from shardpipe import ShardLoader

    reference = [k for e in loader_keys(ShardLoader(make_mix(manifests, batch_size=16, samples_per_epoch=320),
                                                    num_workers=2), 2) for k in e]  # fmt: skip
    first = ShardLoader(make_mix(manifests, batch_size=16, samples_per_epoch=320), num_workers=2)
    got, batches = [], 0
    while batches < cut:
        for batch in first:
            got += batch["__key__"]
            batches += 1
            if batches == cut:
                break
    state = json.loads(json.dumps(first.state_dict()))
    second = ShardLoader(make_mix(manifests, batch_size=16, samples_per_epoch=320), num_workers=2)
    second.load_state_dict(state)
    while len(got) < len(reference):
        got += [k for b in second for k in b["__key__"]]
    assert got == reference


def test_real_gloo_ranks_get_equal_mixed_batch_counts(tmp_path):
    import os
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    manifest = write_manifest_dataset(tmp_path, make_samples(50), [20, 17, 13])
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "tests.dist_worker"]
    cmds = [
        [*cmd, str(r), "2", str(tmp_path / "store"), manifest, "mix", str(tmp_path / f"r{r}.json")] for r in range(2)
    ]
    with process_groups(*cmds, cwd=root, env=env) as procs:
        codes = [p.wait(timeout=180) for p in procs]
    assert codes == [0, 0], "a rank failed or hung (see its output above)"
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    # 61 // (2 ranks x 2 workers) = 15 samples per worker: 5 batches of 3 each, 10 per rank
    assert [r["steps"] for r in results] == [10, 10]
    assert [len(r["keys"]) for r in results] == [30, 30]


def test_yaml_config_builds_a_mixed_dataset(manifests, tmp_path):
    from shardpipe.config import load_config

    config = tmp_path / "mix.yaml"
    config.write_text(
        f"""
dataset: {{shuffle: 16, decode: null}}
mix:
  samples_per_epoch: 400
  seed: 11
  batch_size: 50
  sources:
    - {{urls: {manifests["a"]}, weight: 0.5, seed: 7}}
    - {{urls: {manifests["b"]}, weight: 0.3, seed: 8}}
    - {{urls: {manifests["c"]}, weight: 0.2, seed: 9}}
loader: {{num_workers: 0}}
"""
    )
    dataset, loader = load_config(config)
    assert isinstance(dataset, MixedDataset) and dataset.weights == [0.5, 0.3, 0.2]
    keys = [k for b in loader for k in b["__key__"]]
    # the same mix as built in Python (same sources, seeds, weights)
    assert keys == keys_of(make_mix(manifests))
    with pytest.raises(ValueError, match=r"config mix.sources\[0\] needs urls and weight"):
        load_config({"mix": {"samples_per_epoch": 4, "sources": [{"urls": manifests["a"]}]}})
