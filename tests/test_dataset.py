"""ShardDataset end to end: exactly once per epoch, ordering, batching, bad input."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shardpipe
from shardpipe import DecodeError, MissingFieldError, ShardDataset, ShardLoader, ShardNotFoundError
from shardpipe.augment import Compose, RandomHorizontalFlip, RandomResizedCrop

from .helpers import make_samples, small_jpeg, write_shards


def keys_of(loader) -> list[str]:
    out = []
    for item in loader:
        out.extend(item["__key__"] if isinstance(item["__key__"], list) else [item["__key__"]])
    return out


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, 16])
def test_every_sample_exactly_once(dataset_dir, num_workers, shuffle):
    urls, samples = dataset_dir
    ds = ShardDataset(urls, shuffle=shuffle, decode=None, batch_size=4)
    keys = keys_of(ShardLoader(ds, num_workers=num_workers))
    assert sorted(keys) == sorted(s["__key__"] for s in samples)
    assert len(keys) == len(samples)


def test_order_without_shuffle_is_shard_order(dataset_dir):
    urls, samples = dataset_dir
    assert keys_of(ShardDataset(urls, decode=None)) == [s["__key__"] for s in samples]


def test_decoded_fields_match_written_values(dataset_dir):
    urls, samples = dataset_dir
    got = list(ShardDataset(urls))
    by_key = {s["__key__"]: s for s in samples}
    for g in got:
        ref = by_key[g["__key__"]]
        assert g["cls"] == ref["cls"] and g["json"] == ref["json"]
        expected = np.asarray(Image.open(io.BytesIO(ref["jpg"])).convert("RGB"))
        assert g["jpg"].dtype == np.uint8 and g["jpg"].shape == expected.shape
        assert np.abs(g["jpg"].astype(int) - expected).max() <= 2  # decoders may differ by rounding


def test_epochs_and_seeds_change_order_deterministically(dataset_dir):
    urls, _ = dataset_dir

    def order(seed, epoch):
        ds = ShardDataset(urls, shuffle=20, seed=seed, decode=None)
        ds.set_epoch(epoch)
        return keys_of(ds)

    a0, a0_again, a1, b0 = order(1, 0), order(1, 0), order(1, 1), order(2, 0)
    assert a0 == a0_again
    assert a0 != a1 and a0 != b0
    assert sorted(a0) == sorted(a1) == sorted(b0)


def test_loader_advances_epoch_and_same_across_worker_counts(dataset_dir):
    urls, _ = dataset_dir
    ds = ShardDataset(urls, shuffle=8, seed=3, decode=None, batch_size=5)
    loader = ShardLoader(ds, num_workers=2)
    first, second = keys_of(loader), keys_of(loader)
    assert ds.epoch == 1 and first != second and sorted(first) == sorted(second)


def test_batches_are_uint8_nchw_with_label_tensor(dataset_dir):
    urls, samples = dataset_dir
    t = Compose([RandomResizedCrop(32), RandomHorizontalFlip()])
    ds = ShardDataset(urls, transform=t, batch_size=8, num_threads=2)
    batches = list(ShardLoader(ds, num_workers=2))
    assert sum(len(b["__key__"]) for b in batches) == len(samples)
    labels = {s["__key__"]: s["cls"] for s in samples}
    for b in batches:
        assert b["jpg"].dtype == torch.uint8 and b["jpg"].shape[1:] == (3, 32, 32)
        assert b["cls"].dtype == torch.int64
        assert b["cls"].tolist() == [labels[k] for k in b["__key__"]]
    table = ds.stats.stage_table()
    assert set(table) == {"read", "untar", "decode", "augment", "batch"}
    assert table["decode"] > 0 and table["batch"] > 0 and table["untar"] > 0


def test_partial_last_batch_can_be_dropped(dataset_dir):
    urls, samples = dataset_dir
    full = list(ShardDataset(urls, decode=None, batch_size=10, drop_last=True))
    assert [len(b["__key__"]) for b in full] == [10] * (len(samples) // 10)


def test_augmentation_is_a_function_of_seed_epoch_and_key(dataset_dir):
    urls, _ = dataset_dir
    t = RandomResizedCrop(24)
    a = {s["__key__"]: s["jpg"] for s in ShardDataset(urls, transform=t, seed=5)}
    b = {
        s["__key__"]: s["jpg"] for s in ShardLoader(ShardDataset(urls, transform=t, seed=5, shuffle=10), num_workers=2)
    }
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode, kind", [("torchrgb8", torch.Tensor), ("pil", Image.Image), ("rgb8", np.ndarray)])
def test_image_modes(dataset_dir, mode, kind):
    urls, _ = dataset_dir
    s = next(iter(ShardDataset(urls, decode=mode)))
    assert isinstance(s["jpg"], kind)
    if mode == "torchrgb8":
        assert s["jpg"].shape == (3, 40, 48) and s["jpg"].dtype == torch.uint8


def test_fewer_shards_than_workers_splits_samples(tmp_path, caplog):
    samples = make_samples(20)
    urls = write_shards(tmp_path, samples, [12, 8])
    ds = ShardDataset(urls, decode=None, batch_size=3)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        keys = keys_of(ShardLoader(ds, num_workers=3))
    assert sorted(keys) == sorted(s["__key__"] for s in samples)
    ds_strict = ShardDataset(urls, decode=None, split="shards")
    assert sorted(keys_of(ShardLoader(ds_strict, num_workers=3))) == sorted(s["__key__"] for s in samples)


def test_uneven_split_across_ranks_is_disjoint_and_complete(dataset_dir):
    urls, samples = dataset_dir
    seen = []
    for rank in range(3):
        ds = ShardDataset(urls, decode=None, shuffle=5, rank=rank, world_size=3, epoch_policy="uneven")
        seen += keys_of(ShardLoader(ds, num_workers=2))
    assert sorted(seen) == sorted(s["__key__"] for s in samples)


def test_several_ranks_without_counts_explain_what_to_do(dataset_dir):
    urls, _ = dataset_dir
    with pytest.raises(ValueError, match="need sample counts per shard: pass the shards' manifest.json"):
        list(ShardDataset(urls, rank=0, world_size=2))
    with pytest.raises(ValueError, match="epoch_policy='pad' needs sample counts"):
        ShardDataset(urls, epoch_policy="pad")


# --- bad input ---------------------------------------------------------------------------


def _bad_dataset(tmp_path: Path) -> tuple[list[str], list[dict]]:
    samples = make_samples(10)
    samples[3]["jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    samples[6] = {"__key__": samples[6]["__key__"], "cls": 1}  # no image
    return write_shards(tmp_path, samples, [5, 5]), samples


def test_invalid_image_raises_naming_shard_and_key(tmp_path):
    urls, samples = _bad_dataset(tmp_path)
    with pytest.raises(DecodeError, match=r"cannot decode 'jpg' of sample 'sample00003' in shard .*shard-0000.tar"):
        list(ShardDataset(urls))


def test_missing_field_raises_naming_shard_and_key(tmp_path):
    urls, samples = _bad_dataset(tmp_path)
    with pytest.raises(
        MissingFieldError, match=r"sample 'sample00006' in shard .*shard-0001.tar has no 'jpg' or 'png' field"
    ):
        list(ShardDataset(urls, decode=None, require=["jpg;png", "cls"]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_policy_counts_what_it_skipped(tmp_path, num_workers, caplog):
    urls, samples = _bad_dataset(tmp_path)
    urls.append(str(tmp_path / "missing.tar"))
    ds = ShardDataset(urls, require=["jpg", "cls"], on_error="warn", batch_size=2)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        keys = keys_of(ShardLoader(ds, num_workers=num_workers))
    assert sorted(keys) == sorted(s["__key__"] for i, s in enumerate(samples) if i not in (3, 6))
    assert ds.stats.errors() == {"DecodeError": 1, "MissingFieldError": 1, "ShardNotFoundError": 1}
    if num_workers == 0:  # worker processes log in their own process
        assert "skipped: DecodeError" in caplog.text


def test_missing_shard_raises_through_loader(dataset_dir, tmp_path):
    urls, _ = dataset_dir
    with pytest.raises(ShardNotFoundError, match="nope.tar"):
        keys_of(ShardLoader(ShardDataset(urls + [str(tmp_path / "nope.tar")], decode=None), num_workers=2))


def test_batch_of_mixed_sizes_explains_what_to_do(tmp_path):
    samples = [{"__key__": f"k{i}", "jpg": small_jpeg(i, size=(30 + i, 20))} for i in range(3)]
    urls = write_shards(tmp_path, samples, [3])
    with pytest.raises(ValueError, match="cannot batch images of different sizes.*add a transform"):
        list(ShardDataset(urls, batch_size=3))


def test_bad_arguments_are_rejected(dataset_dir):
    urls, _ = dataset_dir
    with pytest.raises(ValueError, match=r"on_error must be one of \('raise', 'warn', 'skip'\), not 'ignore'"):
        ShardDataset(urls, on_error="ignore")
    with pytest.raises(ValueError, match="split must be"):
        ShardDataset(urls, split="rows")
    with pytest.raises(ValueError, match=r"decode must be one of \('rgb8'.* or None, not 'rgb16'"):
        ShardDataset(urls, decode="rgb16")
    with pytest.raises(ValueError, match="no shards"):
        ShardDataset([])


def test_pickle_members_stay_bytes_unless_allowed(tmp_path):
    import pickle

    payload = pickle.dumps({"a": 1})
    urls = write_shards(tmp_path, [{"__key__": "k", "pyd": payload}], [1])
    assert next(iter(ShardDataset(urls)))["pyd"] == payload
    assert next(iter(ShardDataset(urls, allow_pickle=True)))["pyd"] == {"a": 1}


def test_manifest_as_source(tmp_path):
    samples = make_samples(13)
    with shardpipe.ShardWriter(str(tmp_path / "m-%03d.tar"), maxcount=5) as w:
        for s in samples:
            w.write(s)
    ds = ShardDataset(str(tmp_path / "manifest.json"), decode=None)
    assert [s.samples for s in ds.shards] == [5, 5, 3]
    assert keys_of(ds) == [s["__key__"] for s in samples]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_channels_last_batches_hold_the_same_pixels(dataset_dir, num_workers):
    urls, _ = dataset_dir
    t = RandomResizedCrop(16)
    plain = list(ShardLoader(ShardDataset(urls, transform=t, batch_size=8), num_workers=num_workers))
    cl = list(ShardLoader(ShardDataset(urls, transform=t, batch_size=8, channels_last=True), num_workers=num_workers))
    for a, b in zip(plain, cl, strict=True):
        assert a["jpg"].is_contiguous() and b["jpg"].is_contiguous(memory_format=torch.channels_last)
        assert b["jpg"].shape == a["jpg"].shape and torch.equal(a["jpg"], b["jpg"])


def test_dataset_pickles_after_an_in_process_epoch(dataset_dir):
    import pickle

    urls, samples = dataset_dir
    ds = ShardDataset(urls, decode=None, shuffle=5)
    first = keys_of(ds)
    clone = pickle.loads(pickle.dumps(ds))  # e.g. for spawn-started DataLoader workers
    assert sorted(keys_of(clone)) == sorted(first) and len(first) == len(samples)


def test_fields_missing_from_some_samples_are_kept_as_lists(tmp_path):
    samples = make_samples(4)
    del samples[1]["json"], samples[2]["json"]
    urls = write_shards(tmp_path, samples, [4])
    (batch,) = list(ShardDataset(urls, batch_size=4))
    assert batch["json"] == [{"index": 0}, None, None, {"index": 3}]
    assert batch["cls"].tolist() == [s["cls"] for s in samples]


def test_resampling_over_unreadable_shards_gives_up(tmp_path):
    urls = [str(tmp_path / f"missing-{i}.tar") for i in range(3)]
    ds = ShardDataset(urls, decode=None, epoch_policy="resample", samples_per_epoch=10, on_error="skip")
    with pytest.raises(shardpipe.ShardReadError, match="shards in a row could not be read .*giving up"):
        list(ds)


def test_a_rank_that_skipped_samples_says_its_batches_may_differ(tmp_path, caplog):
    """Ranks get equal shares; a skipped sample is not replaced, so a rank that skipped may end the epoch a
    batch short of the others (DDP then pairs different steps): that rank warns, naming what it skipped."""
    samples = make_samples(12)
    samples[10]["jpg"] = b"\xff\xd8 not a JPEG"  # in rank 1's half (contiguous ranges, no shuffle)
    with shardpipe.ShardWriter(str(tmp_path / "r-%03d.tar"), maxcount=6) as w:
        for s in samples:
            w.write(s)
    manifest = str(tmp_path / "manifest.json")
    warned = "rank 1 (worker 0) skipped 1 bad samples in epoch 0 (DecodeError: 1): the ranks got equal shares"
    for rank, world, expected in [(1, 2, True), (0, 2, False)]:
        caplog.clear()
        ds = ShardDataset(manifest, rank=rank, world_size=world, on_error="skip", batch_size=2)
        with caplog.at_level(logging.WARNING, logger="shardpipe"):
            got = keys_of(ds)
        assert len(got) == (5 if expected else 6)
        assert (warned in caplog.text) is expected, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        assert len(keys_of(ShardDataset(manifest, on_error="skip", batch_size=2))) == 11  # one rank: nothing to say
    assert "the ranks got equal shares" not in caplog.text
