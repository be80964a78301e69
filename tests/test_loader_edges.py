"""``ShardLoader`` edges: its state between ``load_state_dict`` and the first batch, epochs chosen
with ``set_epoch`` on the source (even the epoch just run), and its collate step in a DataLoader
rebuilt from its attributes. Real loaders, with and without workers, persistent ones too."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from torch.utils.data import DataLoader

from shardpipe import MixedDataset, ShardDataset, ShardLoader
from shardpipe.collate import REBUILT_LOADER
from shardpipe.errors import SetupError

from .helpers import make_samples, write_manifest_dataset

COUNTS = [9, 5, 12, 6, 8]  # 40 samples
STOP = 3  # batches taken before a mid-epoch save


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest_dataset(tmp_path_factory.mktemp("loader-edges"), make_samples(sum(COUNTS)), COUNTS)


def dataset(manifest: str) -> ShardDataset:
    return ShardDataset(manifest, shuffle=6, seed=3, batch_size=4, decode=None)


def loader(manifest: str, workers: int = 0, persistent: bool = False) -> ShardLoader:
    return ShardLoader(dataset(manifest), num_workers=workers, persistent_workers=persistent)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


def epoch_keys(manifest: str, workers: int, epoch: int) -> list[str]:
    """The keys of a fresh loader's pass over ``epoch``: the reference order."""
    ld = loader(manifest, workers)
    ld.set_epoch(epoch)
    return keys_of(ld)


def saved_mid_epoch(manifest: str, workers: int) -> tuple[list[str], dict]:
    """(keys of the first STOP batches, the state saved right after them, through JSON)."""
    ld = loader(manifest, workers)
    head = []
    for batch in ld:
        head += batch["__key__"]
        if len(head) == 4 * STOP:
            break
    return head, json.loads(json.dumps(ld.state_dict()))


# -- state_dict() between load_state_dict() and the first batch ------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_state_saved_right_after_loading_one_is_the_loaded_one_and_resumes_exactly(manifest, workers):
    full = epoch_keys(manifest, workers, 0)
    head, saved = saved_mid_epoch(manifest, workers)
    assert saved["workers"] is not None
    restarted = loader(manifest, workers)
    restarted.load_state_dict(copy.deepcopy(saved))
    resaved = json.loads(json.dumps(restarted.state_dict()))  # e.g. a checkpoint at the top of the loop
    assert resaved == saved
    again = loader(manifest, workers)
    again.load_state_dict(resaved)
    rest = keys_of(again)
    assert head + rest == full and len(rest) == len(full) - 4 * STOP


def test_the_returned_state_is_a_copy(manifest):
    _, saved = saved_mid_epoch(manifest, 0)
    ld = loader(manifest)
    ld.load_state_dict(copy.deepcopy(saved))
    ld.state_dict()["workers"][0]["epoch"] = 7  # editing what was returned changes nothing
    assert ld.state_dict() == saved


def test_persistent_workers_report_a_state_loaded_mid_run_and_continue_from_it(manifest):
    full = epoch_keys(manifest, 2, 0)
    head, saved = saved_mid_epoch(manifest, 2)
    ld = loader(manifest, 2, persistent=True)
    first = keys_of(ld)  # a whole pass: the workers stay up
    assert first == full
    ld.load_state_dict(copy.deepcopy(saved))
    assert ld.state_dict() == saved
    assert head + keys_of(ld) == full
    assert ld.state_dict()["epoch"] == 1 and ld.state_dict()["workers"] is None


@pytest.mark.parametrize("workers", [0, 2])
def test_a_boundary_state_loaded_after_a_finished_pass_reports_its_own_epoch(manifest, workers):
    ld = loader(manifest, workers)
    keys_of(ld)  # epoch 0, finished
    assert ld.state_dict()["epoch"] == 1
    boundary = {**ld.state_dict(), "epoch": 5}
    ld.load_state_dict(boundary)
    assert ld.state_dict() == boundary
    assert keys_of(ld) == epoch_keys(manifest, workers, 5)
    assert ld.state_dict()["epoch"] == 6


def test_a_boundary_state_loaded_into_a_finished_mixed_loader_starts_its_sources_afresh(manifest):
    """With workers: the loader hands each worker's end state to its next pass, unless a state was loaded."""

    def mixed() -> ShardLoader:
        sources = [ShardDataset(manifest, shuffle=4, seed=s, decode=None) for s in (1, 2)]
        return ShardLoader(MixedDataset(sources, [1, 1], samples_per_epoch=10, seed=5, batch_size=2), num_workers=2)

    fresh_epoch_1 = mixed()
    fresh_epoch_1.set_epoch(1)
    want = keys_of(fresh_epoch_1)  # epoch 1 with every source at its start
    ld = mixed()
    boundary = ld.state_dict()  # before any pass: no source positions
    keys_of(ld)
    assert ld.state_dict()["workers"] is not None  # the sources' positions would carry on
    ld.load_state_dict({**boundary, "epoch": 1})
    assert ld.state_dict() == {**boundary, "epoch": 1}
    assert keys_of(ld) == want


# -- set_epoch on the source: the call counts, whatever the value ----------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_the_sources_set_epoch_to_the_epoch_just_run_repeats_it(manifest, workers):
    ds = dataset(manifest)
    ld = ShardLoader(ds, num_workers=workers)
    orders = [epoch_keys(manifest, workers, e) for e in range(3)]
    assert orders[0] != orders[1] != orders[2]
    ds.set_epoch(0)
    assert keys_of(ld) == orders[0]
    ds.set_epoch(0)  # the epoch just run, again
    assert ld.state_dict()["epoch"] == 0  # what the next pass runs
    assert keys_of(ld) == orders[0] and ds.epoch == 0
    ds.set_epoch(1)
    assert keys_of(ld) == orders[1] and ds.epoch == 1
    assert keys_of(ld) == orders[2] and ds.epoch == 2  # no call: the next epoch
    ld.set_epoch(2)
    assert keys_of(ld) == orders[2]


def test_the_sources_set_epoch_is_seen_by_persistent_workers(manifest):
    ds = dataset(manifest)
    ld = ShardLoader(ds, num_workers=2, persistent_workers=True)
    first = keys_of(ld)
    ds.set_epoch(0)
    assert keys_of(ld) == first
    assert keys_of(ld) == epoch_keys(manifest, 2, 1)


def test_a_mixed_sources_set_epoch_to_the_epoch_just_run_repeats_it(manifest):
    sources = [ShardDataset(manifest, shuffle=4, seed=s, decode=None) for s in (1, 2)]
    mix = MixedDataset(sources, [1, 1], samples_per_epoch=10, seed=5, batch_size=2)
    ld = ShardLoader(mix)
    first = keys_of(ld)
    mix.set_epoch(0)
    assert keys_of(ld) == first and mix.epoch == 0


def test_every_set_epoch_call_is_counted(manifest):
    ds = dataset(manifest)
    start = ds.epoch_generation
    ds.set_epoch(0)
    ds.epoch = 0
    ds.load_state_dict(ds.state_dict())
    assert ds.epoch_generation == start + 3


@pytest.mark.parametrize("workers, persistent", [(0, False), (2, False), (2, True)])
def test_a_validation_loader_without_set_epoch_repeats_its_pass_when_shuffle_is_off(manifest, workers, persistent):
    """A validation loader iterated once per training epoch, never given set_epoch, moves to the next
    epoch each pass; with shuffle off that changes nothing: the same samples in the same order each
    time. With shuffle on, set_epoch(0) before each pass repeats the same pass (see the reference)."""
    plain = ShardLoader(ShardDataset(manifest, shuffle=False, batch_size=4, decode=None), num_workers=workers,
                        persistent_workers=persistent)  # fmt: skip
    passes = [keys_of(plain) for _ in range(3)]
    assert passes[0] == passes[1] == passes[2] and sorted(passes[0]) == [f"sample{i:05d}" for i in range(40)]
    assert plain.source.epoch == 2
    shuffled = ShardLoader(dataset(manifest), num_workers=workers, persistent_workers=persistent)
    runs = []
    for _ in range(3):
        shuffled.set_epoch(0)
        runs.append(keys_of(shuffled))
    assert runs[0] == runs[1] == runs[2] == epoch_keys(manifest, workers, 0) != epoch_keys(manifest, workers, 1)


# -- a DataLoader rebuilt from a ShardLoader's attributes ------------------------------------------


def test_without_workers_a_rebuilt_loader_fails_at_its_first_item_naming_the_helper(manifest):
    ld = loader(manifest)
    rebuilt = DataLoader(ld.dataset, batch_size=None, collate_fn=ld.collate_fn)  # what accelerator.prepare does
    with pytest.raises(SetupError) as err:
        next(iter(rebuilt))
    assert str(err.value) == REBUILT_LOADER
    assert "shardpipe.integrations.accelerate.prepare(accelerator, model, optimizer, loader)" in REBUILT_LOADER
    assert len(keys_of(ld)) == sum(COUNTS)  # the loader itself runs as before


def test_without_workers_the_collate_step_refuses_again_once_the_pass_ended(manifest):
    ld = loader(manifest)
    it = iter(ld)
    next(it)
    it.close()  # a pass stopped early
    with pytest.raises(SetupError):
        next(iter(DataLoader(ld.dataset, batch_size=None, collate_fn=ld.collate_fn)))


# -- set_epoch() between load_state_dict() and the first batch -------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_choosing_the_loaded_epoch_again_keeps_the_resume(manifest, workers):
    head, state = saved_mid_epoch(manifest, workers)
    ld = loader(manifest, workers)
    ld.load_state_dict(state)
    ld.set_epoch(int(state["epoch"]))  # a training loop's `loader.set_epoch(epoch)` before each pass
    assert ld.state_dict() == state
    assert head + keys_of(ld) == epoch_keys(manifest, workers, 0)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("on", ["loader", "source"])
def test_choosing_another_epoch_after_loading_a_state_starts_that_epoch_afresh(manifest, workers, on, caplog):
    _, state = saved_mid_epoch(manifest, workers)
    ld = loader(manifest, workers)
    ld.load_state_dict(state)
    (ld if on == "loader" else ld.source).set_epoch(2)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        saved = ld.state_dict()
        assert (saved["epoch"], saved["workers"], saved["next_worker"]) == (2, None, 0)
        assert keys_of(ld) == epoch_keys(manifest, workers, 2)  # all of epoch 2, none of epoch 0's rest
    said = [r.getMessage() for r in caplog.records if r.name == "shardpipe" and "set_epoch chose" in r.getMessage()]
    assert said == [  # said once, when it was dropped
        "the loaded state resumes epoch 0 mid-way, but set_epoch chose epoch 2: that state is dropped and epoch 2 "
        "starts from its beginning (call set_epoch(0) to finish the loaded epoch first)"
    ]
