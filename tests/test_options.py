"""ShardDataset's grouped options: objects and flat keywords agree, bad values fail early and by name."""

from __future__ import annotations

import dataclasses

import pytest

from shardpipe import BatchOptions, DecodeOptions, OpenOptions, ShardDataset, SplitOptions
from shardpipe.augment import RandomResizedCrop
from shardpipe.options import GROUPS, group_of

from .helpers import make_samples, write_shards


@pytest.fixture
def urls(tmp_path):
    return write_shards(tmp_path, make_samples(12), [5, 7])


def test_every_field_belongs_to_one_group():
    names = [f.name for g in GROUPS for f in dataclasses.fields(g)]
    assert len(names) == len(set(names)), "a flat keyword would be ambiguous"
    for g in GROUPS:
        for f in dataclasses.fields(g):
            assert group_of(f.name) is g


def test_groups_and_flat_keywords_build_the_same_dataset(urls):
    t = RandomResizedCrop(16)
    flat = ShardDataset(urls, shuffle=4, seed=3, transform=t, num_threads=2, batch_size=3, drop_last=True)
    grouped = ShardDataset(
        urls,
        SplitOptions(shuffle=4, seed=3),
        DecodeOptions(transform=t, num_threads=2),
        BatchOptions(3, drop_last=True),
    )
    for attr in ("open_options", "split_options", "decode_options", "batch_options"):
        assert getattr(flat, attr) == getattr(grouped, attr)
    a, b = list(flat), list(grouped)
    assert [x["__key__"] for x in a] == [x["__key__"] for x in b]
    assert all((x["jpg"] == y["jpg"]).all() for x, y in zip(a, b))
    assert [len(x["__key__"]) for x in a] == [3, 3, 3, 3]


def test_keywords_replace_fields_of_a_given_group(urls):
    ds = ShardDataset(urls, SplitOptions(shuffle=4, seed=3), seed=9, decode=None)
    assert ds.split_options == SplitOptions(shuffle=4, seed=9)
    assert ds.seed == 9 and ds.buffer_size == 4


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BatchOptions(4).batch_size = 8  # type: ignore[misc]


@pytest.mark.parametrize("old", ["handler", "threads", "partial"])
def test_keywords_renamed_in_0_x_are_unknown(urls, old):
    with pytest.raises(TypeError, match=f"ShardDataset got an unknown keyword {old!r}"):
        ShardDataset(urls, **{old: 1})


def test_unknown_keyword_suggests_the_near_name(urls):
    with pytest.raises(TypeError, match="unknown keyword 'bach_size'; did you mean 'batch_size'"):
        ShardDataset(urls, bach_size=4)


def test_positional_arguments_must_be_option_objects(urls):
    with pytest.raises(TypeError, match="then options objects .*not 4"):
        ShardDataset(urls, 4)
    with pytest.raises(TypeError, match="two BatchOptions objects"):
        ShardDataset(urls, BatchOptions(2), BatchOptions(3))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SplitOptions(shuffle=-1), "shuffle must be an integer >= 0, not -1"),
        (lambda: SplitOptions(split="rows"), "split must be 'auto', 'shards' or 'samples', not 'rows'"),
        (lambda: SplitOptions(epoch_policy="even"), "epoch_policy must be 'auto' or one of"),
        (lambda: SplitOptions(epoch_policy="resample"), "needs samples_per_epoch"),
        (lambda: SplitOptions(rank=2, world_size=2), "rank 2 is not below world_size 2"),
        (lambda: SplitOptions(world_size=0), "world_size must be an integer >= 1 or None, not 0"),
        (lambda: DecodeOptions(decode="rgb16"), "decode must be one of"),
        (lambda: DecodeOptions(num_threads=-2), "num_threads must be an integer >= 0, not -2"),
        (lambda: BatchOptions(0), "batch_size must be an integer >= 1 or None, not 0"),
        (lambda: OpenOptions(prefetch=-1), "prefetch must be an integer >= 0, not -1"),
        (lambda: OpenOptions(cache_size=1 << 20), "cache_size limits a cache: give cache_dir too"),
    ],
)
def test_bad_values_fail_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_shuffle_buffer_sizes():
    assert SplitOptions().buffer_size == 0
    assert SplitOptions(shuffle=True).buffer_size == 1000
    assert SplitOptions(shuffle=37).buffer_size == 37


def test_the_dataset_docstring_names_every_option_under_its_group():
    """ShardDataset's docstring lists each group's fields (their docs live in ``shardpipe.options``)."""
    import dataclasses

    from shardpipe import ShardDataset
    from shardpipe.options import GROUPS

    items = (ShardDataset.__doc__ or "").split("\n    * ")  # the bullet list, one item a group
    for group in GROUPS:
        (item,) = [i for i in items if i.startswith(f":class:`~shardpipe.options.{group.__name__}`:")]
        for field in dataclasses.fields(group):
            assert f"``{field.name}``" in item, (group.__name__, field.name)
