"""Block shuffle: every sample once per epoch for any ranks x workers, exact resume, true class mixing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import shardpipe
from shardpipe import ShardDataset, ShardLoader
from shardpipe.split.block import BlockOrder, consumer_range

from .helpers import make_samples, write_manifest_dataset

COUNTS = [9, 2, 14, 5, 1, 11, 7]  # 49 samples in 7 uneven shards


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("block")
    samples = make_samples(sum(COUNTS))
    with shardpipe.ShardWriter(str(root / "s-%03d.tar"), maxcount=10) as w:
        for s in samples:
            w.write(s)
    return str(root / "manifest.json")


@pytest.mark.parametrize("block_size", [None, 4, 13])
@pytest.mark.parametrize("policy", ["drop", "pad"])
def test_every_sample_once_for_ranks_by_workers(block_size, policy):
    total = sum(COUNTS)
    for world in (1, 2, 3):
        for workers in (1, 2, 3, 4):
            order = BlockOrder(COUNTS, seed=3, epoch=1, block_size=block_size)
            assert sorted(order.take(0, total).tolist()) == list(range(total))  # a permutation
            got, pads, per_rank = [], 0, []
            for rank in range(world):
                n_rank = 0
                for worker in range(workers):
                    lo, hi = consumer_range(
                        total, rank=rank, world_size=world, worker=worker, num_workers=workers, policy=policy
                    )
                    ids = order.take(lo, hi).tolist()
                    assert ids == [order[p % total] for p in range(lo, hi)]  # vector and scalar agree
                    got += [i for p, i in zip(range(lo, hi), ids) if p < total]
                    pads += sum(p >= total for p in range(lo, hi))
                    n_rank += hi - lo
                per_rank.append(n_rank)
            assert len(set(per_rank)) == 1  # equal per-rank epochs
            assert len(got) == len(set(got))  # nothing twice
            if policy == "drop":
                assert total - len(got) == total % world
            else:
                assert sorted(got) == list(range(total)) and pads == -total % world


def test_real_loaders_ranks_and_workers_cover_the_epoch(indexed):
    keys = {s["__key__"] for s in make_samples(sum(COUNTS))}
    for world, workers in ((1, 0), (2, 2), (3, 3)):
        seen, batches = [], []
        for rank in range(world):
            ds = ShardDataset(
                indexed, shuffle=True, shuffle_algo="block", decode=None, batch_size=4, rank=rank, world_size=world,
                epoch_policy="pad",
            )  # fmt: skip
            assert ds.indexed is not None
            n = 0
            for b in ShardLoader(ds, num_workers=workers):
                seen += [k for k, pad in zip(b["__key__"], b["__pad__"].tolist()) if not pad]
                n += 1
            batches.append(n)
        assert len(set(batches)) == 1, f"world {world}: unequal batch counts {batches}"
        assert sorted(seen) == sorted(keys)


def test_epochs_differ_and_repeat_with_the_seed(indexed):
    def epoch(e, seed=0):
        ds = ShardDataset(indexed, shuffle=True, shuffle_algo="block", seed=seed, decode=None)
        ds.set_epoch(e)
        return [s["__key__"] for s in ds]

    e0, e1 = epoch(0), epoch(1)
    assert e0 != e1 and sorted(e0) == sorted(e1)
    assert epoch(1) == e1 and epoch(1, seed=5) != e1


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_several_points_is_exact(indexed, workers):
    def make():
        ds = ShardDataset(indexed, shuffle=True, shuffle_algo="block", shuffle_block_size=16, seed=4, decode=None,
                          batch_size=3, world_size=2, rank=1)  # fmt: skip
        return ShardLoader(ds, num_workers=workers)

    def run(loader, limit=None):
        out = []
        for b in loader:
            out.append(tuple(b["__key__"]))
            if len(out) == limit:
                break
        return out

    full_loader = make()
    full, following = run(full_loader), run(full_loader)
    for stop in sorted({1, 2, len(full) // 2, len(full) - 1}):
        loader = make()
        head = run(loader, stop)
        state = json.loads(json.dumps(loader.state_dict()))
        assert len(json.dumps(state)) < 1000  # a few integers per worker
        resumed = make()
        resumed.load_state_dict(state)
        assert head + run(resumed) == full, f"resume after {stop} batches diverged"
        assert run(resumed) == following
    window = ShardLoader(ShardDataset(indexed, shuffle=True, shuffle_algo="window", seed=4, decode=None, batch_size=3,
                                      world_size=2, rank=1), num_workers=workers)  # fmt: skip
    with pytest.raises(ValueError, match="saved for other shards or options"):
        window.load_state_dict(state)


def test_block_needs_an_indexed_manifest_and_says_how(tmp_path: Path):
    manifest = write_manifest_dataset(tmp_path, make_samples(6), [3, 3])  # counts, no index
    with pytest.raises(ValueError, match="no index: create one with `shardpipe index"):
        ShardDataset(manifest, shuffle=True, shuffle_algo="block")
    with pytest.raises(ValueError, match="pass the shards' manifest.json with its index"):
        ShardDataset(str(tmp_path / "shard-{0000..0001}.tar"), shuffle=True, shuffle_algo="block")
    assert ShardDataset(manifest, shuffle=True).indexed is None  # auto: the window, silently
    with pytest.raises(ValueError, match="shuffle_algo must be one of"):
        ShardDataset(manifest, shuffle=True, shuffle_algo="global")


def test_ddp_error_points_to_shardpipe_index(tmp_path: Path):
    urls = str(tmp_path / "shard-{0000..0001}.tar")
    write_manifest_dataset(tmp_path, make_samples(6), [3, 3])
    ds = ShardDataset(urls, world_size=2, rank=0)
    with pytest.raises(ValueError, match="shardpipe index SHARDS -o manifest.json"):
        list(ds)


def distinct_classes_per_batch(labels: list[int], batch: int = 64) -> float:
    full = len(labels) // batch * batch
    return float(np.mean([len(set(labels[i : i + batch])) for i in range(0, full, batch)]))


def test_class_ordered_shards_mix_like_a_true_shuffle(tmp_path: Path):
    # 10 classes x 400 samples, written class by class in shards of 250 (the setup)
    with shardpipe.ShardWriter(str(tmp_path / "c-%03d.tar"), maxcount=250) as w:
        for i in range(4000):
            w.write({"__key__": f"k{i:05d}", "cls": i // 400})
    manifest = str(tmp_path / "manifest.json")
    rng = np.random.default_rng(0)
    labels = [i // 400 for i in range(4000)]
    true = np.mean([distinct_classes_per_batch(list(rng.permutation(labels))) for _ in range(5)])

    def labels_of(**kw):
        ds = ShardDataset(manifest, shuffle=kw.pop("shuffle", True), decode=None, seed=1, **kw)
        return [int(s["cls"]) for s in ds]

    block = labels_of(shuffle_algo="block")
    window = labels_of(shuffle=1000, shuffle_algo="window")
    assert sorted(block) == labels
    assert distinct_classes_per_batch(block) >= 0.9 * true
    assert distinct_classes_per_batch(window) < 0.9 * true  # why the block shuffle exists


def test_write_shuffles_class_folders_by_default_and_says_so(tmp_path: Path, capsys):
    from shardpipe.cli import main

    from .helpers import small_jpeg

    for c in ("ant", "bee", "cat"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(8):
            (tmp_path / "tree" / c / f"{c}{i}.jpg").write_bytes(small_jpeg(i))
    tree = str(tmp_path / "tree")

    def labels(out: str) -> list[int]:
        return [int(s["cls"]) for s in ShardDataset(str(tmp_path / out / "manifest.json"), decode=None)]

    assert main(["write", tree, str(tmp_path / "a" / "s-%03d.tar"), "--no-progress"]) == 0
    assert "order: shuffled (seeded; --no-shuffle keeps the input order)" in capsys.readouterr().out
    assert main(["write", tree, str(tmp_path / "b" / "s-%03d.tar"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["write", tree, str(tmp_path / "c" / "s-%03d.tar"), "--no-progress", "--no-shuffle"]) == 0
    assert "order: shuffled" not in capsys.readouterr().out
    assert labels("c") == sorted(labels("c")) == [0] * 8 + [1] * 8 + [2] * 8  # input (class) order kept
    assert labels("a") == labels("b") != labels("c") and sorted(labels("a")) == labels("c")  # seeded
    # a flat folder has no classes: its order is kept
    summary = shardpipe.write_shards(str(tmp_path / "tree" / "ant"), str(tmp_path / "d" / "s-%03d.tar"))
    assert not summary.shuffled


def test_shuffle_true_is_a_window_of_1000_like_the_number(indexed):
    """``shuffle=True`` and ``shuffle=1000`` pick the same algorithm (the window) under ``auto``,
    even on indexed local shards; the block shuffle is asked for by name."""
    on, thousand = ShardDataset(indexed, shuffle=True, decode=None), ShardDataset(indexed, shuffle=1000, decode=None)
    assert on.indexed is None and thousand.indexed is None
    assert on.buffer_size == thousand.buffer_size == 1000
    assert on.fingerprint() == thousand.fingerprint()
    assert [s["__key__"] for s in on] == [s["__key__"] for s in thousand]
    assert ShardDataset(indexed, shuffle=True, shuffle_algo="block", decode=None).indexed is not None


def test_the_block_shuffle_reads_the_manifest_once(indexed, monkeypatch):
    from shardpipe.format import manifest as manifest_module

    reads: list[str] = []
    real = manifest_module.read_manifest

    def counted(url, *args, **kwargs):
        reads.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(manifest_module, "read_manifest", counted)
    block = ShardDataset(indexed, shuffle=True, shuffle_algo="block", decode=None)
    assert reads == [indexed]
    window = ShardDataset(indexed, shuffle=True, decode=None)
    assert reads == [indexed, indexed]
    assert [(s.url, s.index, s.samples, s.size, s.sha256) for s in block.shards] == [
        (s.url, s.index, s.samples, s.size, s.sha256) for s in window.shards
    ]
    assert sorted(s["__key__"] for s in block) == sorted(s["__key__"] for s in window)
