"""serve/coordination units, in this process: each request type's fields and bounds by exact message,
an ``assign`` turned into a ``Part`` (limits inclusive, rank and part below their counts, the state's
shape), the pipeline a part runs (the local worker's, at the assigned epoch, resumable) and the
fingerprint's recipe."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from shardpipe import ShardDataset
from shardpipe.errors import StateError
from shardpipe.serve.coordination import (
    MAX_CREDITS,
    MAX_PARTS,
    REQUEST_FIELDS,
    Part,
    check_request,
    fingerprint,
    part_pipeline,
)
from shardpipe.serve.wire import WireError
from shardpipe.stages.base import Context
from shardpipe.state import MAX_INT

from .helpers import make_samples, write_manifest_dataset

ASSIGN = {"assignment": 3, "epoch": 2, "rank": 1, "world_size": 4, "part": 5, "parts": 8, "state": None, "credits": 6}
COUNTS = [3, 4, 2, 5, 4]  # 18 samples in 5 uneven shards


def refused(header: dict, message: str) -> None:
    """``check_request(header)`` raises a WireError whose message is exactly ``message``."""
    with pytest.raises(WireError) as info:
        check_request(header)
    assert str(info.value) == message


# ---------------------------------------------------------------- check_request


def test_the_request_types_and_their_fields():
    assert REQUEST_FIELDS == {
        "hello": (),
        "assign": ("assignment", "epoch", "rank", "world_size", "part", "parts", "state", "credits"),
        "credit": ("assignment", "n"),
        "cancel": ("assignment",),
    }
    assert (MAX_PARTS, MAX_CREDITS) == (4096, 1024)


def test_well_formed_requests_pass():
    for header in [
        {"v": 1, "type": "hello"},
        {"type": "hello"},
        {"v": 1, "type": "assign", **ASSIGN},
        {"v": 1, "type": "credit", "assignment": 0, "n": 1},
        {"v": 1, "type": "credit", "assignment": MAX_INT, "n": MAX_CREDITS},
        {"v": 1, "type": "cancel", "assignment": 0},  # a cancel carries no n
        {"v": 1, "type": "cancel", "assignment": MAX_INT},
    ]:
        assert check_request(header) is None


def test_an_unknown_type_is_named_clipped_to_40_characters():
    refused({"v": 1, "type": "batch"}, "unknown request type 'batch'")
    refused({"v": 1, "type": "x" * 100}, f"unknown request type {'x' * 40!r}")


def test_unknown_fields_are_named_five_at_most_each_clipped():
    refused({"v": 1, "type": "hello", "n": 1}, "hello: unknown field(s) 'n'")
    refused({"v": 1, "type": "cancel", "assignment": 1, "n": 1}, "cancel: unknown field(s) 'n'")
    long = "k" * 60
    header = {"v": 1, "type": "credit", "assignment": 1, "n": 1, "a": 0, long: 0, "c": 0, "d": 0, "e": 0, "f": 0}
    clipped = repr(long)[:40]
    assert clipped == "'" + "k" * 39
    refused(header, f"credit: unknown field(s) 'a', {clipped}, 'c', 'd', 'e'")


@pytest.mark.parametrize("kind", ["credit", "cancel"])
@pytest.mark.parametrize("bad", [-1, MAX_INT + 1, True, False, 1.0, "1", None, [1]])
def test_a_credit_or_cancel_needs_an_assignment_id_in_range(kind, bad):
    header = {"v": 1, "type": kind, "assignment": bad, **({"n": 1} if kind == "credit" else {})}
    refused(header, f"{kind}: assignment must be an integer from 0 to {MAX_INT}, not {str(bad)!r}")


def test_a_missing_assignment_id_is_refused_as_none():
    refused({"v": 1, "type": "cancel"}, f"cancel: assignment must be an integer from 0 to {MAX_INT}, not 'None'")


@pytest.mark.parametrize("bad", [0, -3, MAX_CREDITS + 1, True, 2.0, None])
def test_a_credit_grants_one_to_max_credits_batches(bad):
    refused(
        {"v": 1, "type": "credit", "assignment": 9, "n": bad},
        f"credit: n must be an integer from 1 to {MAX_CREDITS}, not {str(bad)!r}",
    )


def test_a_refused_value_is_clipped_to_40_characters():
    refused(
        {"v": 1, "type": "credit", "assignment": 9, "n": "y" * 100},
        f"credit: n must be an integer from 1 to {MAX_CREDITS}, not {'y' * 40!r}",
    )


def test_an_assign_request_is_checked_as_a_part():
    refused({"v": 1, "type": "assign", **{**ASSIGN, "parts": 0}}, "assign: part 5 of 0 is out of range")
    refused({"v": 1, "type": "assign", **{**ASSIGN, "n": 1}}, "assign: unknown field(s) 'n'")


# ---------------------------------------------------------------- Part.from_header


def test_an_assign_header_becomes_a_part_and_back():
    state = {"version": 1, "epoch": 2, "stages": None}
    part = Part.from_header({"v": 1, "type": "assign", **ASSIGN, "state": state})
    assert type(part) is Part
    assert part == Part(assignment=3, epoch=2, rank=1, world_size=4, part=5, parts=8, state=state, credits=6)
    assert part.header() == {**ASSIGN, "state": state}  # exactly the fields a trainer sends
    assert Part.from_header(part.header()) == part
    assert part.describe() == "part 5/8 of rank 1/4, epoch 2"


@pytest.mark.parametrize("name", ["assignment", "epoch", "rank", "world_size", "part", "parts", "credits"])
@pytest.mark.parametrize("bad", [-1, True, False, 1.5, "2", None, [2]])
def test_each_number_of_a_part_must_be_a_non_negative_integer(name, bad):
    with pytest.raises(WireError) as info:
        Part.from_header({**ASSIGN, name: bad})
    assert str(info.value) == f"assign: {name} must be a non-negative integer, not {str(bad)!r}"


def test_a_missing_number_is_refused_as_none_and_a_long_one_clipped():
    header = dict(ASSIGN)
    del header["epoch"]
    with pytest.raises(WireError, match=r"^assign: epoch must be a non-negative integer, not 'None'$"):
        Part.from_header(header)
    with pytest.raises(WireError) as info:
        Part.from_header({**ASSIGN, "epoch": "9" * 60})
    assert str(info.value) == f"assign: epoch must be a non-negative integer, not {'9' * 40!r}"


@pytest.mark.parametrize("name", ["assignment", "epoch", "rank", "world_size", "part", "parts"])
def test_numbers_above_max_int_are_refused(name):
    with pytest.raises(WireError) as info:
        Part.from_header({**ASSIGN, name: MAX_INT + 1})
    assert str(info.value) == f"assign: {name} must be at most {MAX_INT}"


def test_max_int_itself_is_a_number_a_part_may_carry():
    big = {"assignment": MAX_INT, "epoch": MAX_INT, "rank": MAX_INT - 1, "world_size": MAX_INT}
    part = Part.from_header({**ASSIGN, **big})
    assert {k: getattr(part, k) for k in big} == big


def test_credits_run_from_zero_to_max_credits():
    assert Part.from_header({**ASSIGN, "credits": 0}).credits == 0
    assert Part.from_header({**ASSIGN, "credits": MAX_CREDITS}).credits == MAX_CREDITS
    with pytest.raises(WireError) as info:
        Part.from_header({**ASSIGN, "credits": MAX_CREDITS + 1})
    assert str(info.value) == f"assign: credits must be at most {MAX_CREDITS}"


@pytest.mark.parametrize(
    ("rank", "world_size", "ok"), [(0, 1, True), (3, 4, True), (0, 0, False), (4, 4, False), (5, 4, False)]
)
def test_the_rank_is_below_a_positive_world_size(rank, world_size, ok):
    header = {**ASSIGN, "rank": rank, "world_size": world_size}
    if ok:
        assert (Part.from_header(header).rank, Part.from_header(header).world_size) == (rank, world_size)
        return
    with pytest.raises(WireError) as info:
        Part.from_header(header)
    assert str(info.value) == f"assign: rank {rank} is not below world_size {world_size}"


@pytest.mark.parametrize(
    ("part", "parts", "ok"),
    [
        (0, 1, True),
        (7, 8, True),
        (MAX_PARTS - 1, MAX_PARTS, True),
        (0, 0, False),
        (8, 8, False),
        (9, 8, False),
        (0, MAX_PARTS + 1, False),
    ],
)
def test_the_part_is_below_parts_of_at_most_max_parts(part, parts, ok):
    header = {**ASSIGN, "part": part, "parts": parts}
    if ok:
        assert (Part.from_header(header).part, Part.from_header(header).parts) == (part, parts)
        return
    with pytest.raises(WireError) as info:
        Part.from_header(header)
    assert str(info.value) == f"assign: part {part} of {parts} is out of range"


@pytest.mark.parametrize("bad", [[1], "state", 0, True])
def test_a_state_is_an_object_or_null(bad):
    with pytest.raises(WireError) as info:
        Part.from_header({**ASSIGN, "state": bad})
    assert str(info.value) == "assign: state must be an object or null"


def test_a_state_of_the_wrong_shape_is_a_wire_error_naming_the_field():
    with pytest.raises(WireError) as info:
        Part.from_header({**ASSIGN, "state": {"version": 1, "epoch": -1, "stages": None}})
    assert type(info.value) is WireError
    assert str(info.value) == "assign: state['epoch']: must be >= 0, got -1"
    assert info.value.__cause__ is None and info.value.__suppress_context__  # raised "from None"
    with pytest.raises(WireError) as info:
        Part.from_header({**ASSIGN, "state": {"version": 1, "epoch": 0, "stages": 5}})
    assert str(info.value) == "assign: state['stages']: must be an object (dict) or null, got int 5"


def test_a_states_epoch_is_checked_when_the_part_starts_not_here():
    state = {"version": 1, "epoch": 0, "stages": None}
    assert Part.from_header({**ASSIGN, "state": state}).state == state  # ASSIGN's epoch is 2


# ---------------------------------------------------------------- part_pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> ShardDataset:
    root = tmp_path_factory.mktemp("coordination")
    return ShardDataset(write_manifest_dataset(root, make_samples(sum(COUNTS)), COUNTS), decode=None, shuffle=4, seed=3)


def keys(items) -> list[str]:
    return [s["__key__"] for s in items]


def local_worker_keys(dataset: ShardDataset, epoch: int, rank: int, world_size: int, worker: int, workers: int):
    """What local DataLoader worker ``worker`` of ``workers`` on that rank reads in ``epoch``."""
    ctx = Context(seed=dataset.seed, epoch=epoch, rank=rank, world_size=world_size, worker=worker, num_workers=workers)
    pipeline = dataset.build_pipeline(ctx)
    pipeline.reset(None)
    return keys(pipeline)


def test_a_part_runs_the_local_workers_pipeline_at_its_coordinates(dataset):
    seen = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            for k in (0, 1):
                part = Part(assignment=1, epoch=epoch, rank=rank, world_size=2, part=k, parts=2, state=None, credits=1)
                got = keys(part_pipeline(dataset, part))
                assert got == local_worker_keys(dataset, epoch, rank, 2, k, 2)
                seen[epoch, rank, k] = got
        # the four parts are the epoch, each sample once
        epoch_keys = [key for (e, _, _), got in seen.items() if e == epoch for key in got]
        assert sorted(epoch_keys) == [s["__key__"] for s in make_samples(sum(COUNTS))]
    # every coordinate matters: no two parts (nor one part in two epochs) read the same list
    assert len({tuple(v) for v in seen.values()}) == len(seen)
    assert dataset.pass_context().epoch == 0  # the dataset's own context is not moved


def test_a_part_keeps_the_datasets_seed(dataset):
    other = ShardDataset([s.url for s in dataset.shards], decode=None, shuffle=4, seed=4)
    part = Part(assignment=1, epoch=0, rank=0, world_size=1, part=0, parts=1, state=None, credits=1)
    assert keys(part_pipeline(dataset, part)) == local_worker_keys(dataset, 0, 0, 1, 0, 1)
    assert keys(part_pipeline(other, part)) == local_worker_keys(other, 0, 0, 1, 0, 1)
    assert keys(part_pipeline(dataset, part)) != keys(part_pipeline(other, part))


def test_a_part_resumes_from_its_state(dataset):
    part = Part(assignment=1, epoch=1, rank=0, world_size=1, part=1, parts=2, state=None, credits=1)
    pipeline = part_pipeline(dataset, part)
    whole = keys(pipeline)
    pipeline = part_pipeline(dataset, part)
    head = keys(next(pipeline) for _ in range(3))
    state = pipeline.get_state()
    pipeline.close()
    rest = keys(part_pipeline(dataset, dataclasses.replace(part, state=state)))
    assert head + rest == whole and len(rest) == len(whole) - 3 > 0


@pytest.mark.parametrize(("state_epoch", "shown"), [(0, "0"), (None, "None")])
def test_a_state_of_another_epoch_is_refused(dataset, state_epoch, shown):
    state = {"version": 1, "epoch": state_epoch, "stages": None}
    part = Part(assignment=1, epoch=1, rank=0, world_size=1, part=0, parts=1, state=state, credits=1)
    with pytest.raises(StateError) as info:
        part_pipeline(dataset, part)
    assert str(info.value) == f"resume state is for epoch {shown}, the assignment for 1"


# ---------------------------------------------------------------- fingerprint


def test_the_fingerprint_hashes_the_shards_then_the_options_then_the_transform(dataset):
    transform = [{"CenterCrop": {"size": 32}}, {"Flip": {"p": Path("x")}}]
    text = "".join(f"{s.url}\0{s.samples}\n" for s in dataset.shards)
    text += "3|4|auto|auto|None|None|None|False|False|()"
    text += '[{"CenterCrop": {"size": 32}}, {"Flip": {"p": "x"}}]'  # keys sorted, other values as str()
    assert fingerprint(dataset, transform) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert fingerprint(dataset, [{"Flip": {"p": "x"}}, {"CenterCrop": {"size": 32}}]) != fingerprint(dataset, transform)
    assert fingerprint(dataset, {"b": 1, "a": 2}) == fingerprint(dataset, {"a": 2, "b": 1})
