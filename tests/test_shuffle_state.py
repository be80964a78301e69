"""The shuffle stage's resume state: its window number is checked against the windows this consumer's
part of the epoch fills (a hand-edited one would repeat or skip samples), and every state a real
pass saves, up to the end of the epoch, still loads."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from shardpipe import ShardDataset, ShardLoader, StateError
from shardpipe.stages import Context, Pipeline, Shard, ShardList, Shuffle

from .helpers import make_samples, write_manifest_dataset

COUNTS = [9, 5, 12, 6, 8]  # 40 samples
WINDOW = "state['stages']['source']['window']"  # Batch's source is the shuffle (decode=None)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest_dataset(tmp_path_factory.mktemp("shuffle-state"), make_samples(sum(COUNTS)), COUNTS)


def dataset(manifest: str, shuffle: int = 16) -> ShardDataset:
    return ShardDataset(manifest, shuffle=shuffle, seed=0, batch_size=4, decode=None)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


def state_after(manifest: str, batches: int, shuffle: int = 16) -> dict:
    ds = dataset(manifest, shuffle)
    it = iter(ds)
    for _ in range(batches):
        next(it)
    return json.loads(json.dumps(ds.state_dict()))


def resumed(manifest: str, state: dict, shuffle: int = 16) -> list[str]:
    ds = dataset(manifest, shuffle)
    ds.load_state_dict(state)
    return keys_of(ds)


def edited(state: dict, window: int, emitted: int) -> dict:
    out = copy.deepcopy(state)
    out["stages"]["source"].update(window=window, emitted=emitted)
    return out


@pytest.mark.parametrize(
    "window, emitted, field, message",
    [
        (10**6, 0, "window", "must be <= 3 (this consumer's 40 items fill 3 windows of 16), got 1000000"),
        (4, 0, "window", "must be <= 3 (this consumer's 40 items fill 3 windows of 16), got 4"),
        (3, 1, "emitted", "must be <= 0 (the items of window 3), got 1"),
        (2, 9, "emitted", "must be <= 8 (the items of window 2), got 9"),
    ],
)
def test_a_window_past_the_epochs_windows_is_refused_naming_the_field(manifest, window, emitted, field, message):
    state = state_after(manifest, 1)
    assert state["stages"]["source"]["window"] == 0 and state["stages"]["source"]["emitted"] == 4
    path = WINDOW.replace("window", field)
    with pytest.raises(StateError, match=re.escape(f"{path}: {message}")):
        resumed(manifest, edited(state, window, emitted))


@pytest.mark.parametrize("shuffle", [8, 16])  # 40 items: 5 full windows, or 2 full and one of 8
def test_every_state_of_a_pass_loads_up_to_its_end(manifest, shuffle):
    full = keys_of(dataset(manifest, shuffle))
    for batches in range(len(full) // 4 + 1):
        state = state_after(manifest, batches, shuffle)
        assert keys_of(dataset(manifest, shuffle))[: 4 * batches] + resumed(manifest, state, shuffle) == full
    ds = dataset(manifest, shuffle)
    assert keys_of(ds) == full
    end = json.loads(json.dumps(ds.state_dict()))  # after the pass: the empty window past the last
    assert end["stages"]["source"]["window"] == -(-40 // shuffle) and end["stages"]["source"]["emitted"] == 0
    assert resumed(manifest, end, shuffle) == []


def test_with_workers_each_workers_window_is_checked_against_its_own_part(manifest):
    ld = ShardLoader(dataset(manifest), num_workers=2)
    for _ in zip(range(2), ld):  # one batch from each worker
        pass
    state = json.loads(json.dumps(ld.state_dict()))
    state["workers"][1] = edited(state["workers"][1], 3, 0)  # each worker reads 20 items: windows 0 and 1
    bad = ShardLoader(dataset(manifest), num_workers=2)
    bad.load_state_dict(state)
    message = f"{WINDOW}: must be <= 2 (this consumer's 20 items fill 2 windows of 16), got 3"
    with pytest.raises(StateError, match=re.escape(message)):
        keys_of(bad)


def test_planned_samples_is_each_consumers_share(manifest):
    ds = dataset(manifest)
    parts = [ds.planned_samples(Context(worker=w, num_workers=3)) for w in range(3)]
    assert parts == [13, 13, 14]
    pad = ShardDataset(manifest, shuffle=4, epoch_policy="pad", rank=0, world_size=3)
    assert pad.planned_samples(Context(rank=0, world_size=3)) == 14  # 40 / 3, rounded up by repeats
    resample = ShardDataset(manifest, shuffle=4, epoch_policy="resample", samples_per_epoch=50)
    assert resample.planned_samples(Context(worker=1, num_workers=2)) == 25
    urls = [str(p) for p in sorted(Path(manifest).parent.glob("shard-*.tar"))]
    assert ShardDataset(urls, shuffle=4).planned_samples(Context()) is None  # no counts: no bound


def test_without_a_plan_only_the_emitted_count_is_bounded():
    shards = [Shard(f"s{i}", i) for i in range(6)]
    pipe = Pipeline([ShardList(shards), Shuffle(4)], Context(seed=2))
    state = {"version": 1, "epoch": 0, "stages": {"source": {"pos": 0}, "window": 99, "emitted": 0}}
    pipe.reset(state)  # nothing to compare the window with: accepted as before
    with pytest.raises(StateError, match=re.escape("state['stages']['emitted']: must be <= 4")):
        pipe.reset({**state, "stages": {**state["stages"], "emitted": 5}})
