"""The keywords renamed when ShardDataset's options were grouped fail naming what to write instead."""

from __future__ import annotations

import dataclasses
import re

import pytest

from shardpipe import ShardDataset
from shardpipe.options import GROUPS, RENAMED, group_of

MESSAGES = {
    "handler": "ShardDataset got an unknown keyword 'handler': it was renamed, use on_error=",
    "threads": "ShardDataset got an unknown keyword 'threads': it was renamed, use num_threads=",
    "partial": (
        "ShardDataset got an unknown keyword 'partial': it was renamed, use drop_last= "
        "(the opposite: partial=True is drop_last=False)"
    ),
}


@pytest.mark.parametrize("old", sorted(MESSAGES))
def test_an_old_keyword_names_the_new_one(old):
    with pytest.raises(TypeError) as caught:
        group_of(old)
    assert str(caught.value) == MESSAGES[old]


@pytest.mark.parametrize("old", sorted(MESSAGES))
def test_shard_dataset_refuses_an_old_keyword_before_opening_anything(old):
    """The urls are never looked at: the keyword fails first, with the same message."""
    with pytest.raises(TypeError, match=f"^{re.escape(MESSAGES[old])}$"):
        ShardDataset("no/such/manifest.json", **{old: 1})


def test_the_table_names_only_keywords_that_exist_now():
    fields = {f.name for g in GROUPS for f in dataclasses.fields(g)}
    assert set(RENAMED) == set(MESSAGES)
    assert not set(RENAMED) & fields
    for new in RENAMED.values():
        name = new.split("=")[0]
        assert name in fields or name == "on_error", new


def test_other_unknown_keywords_keep_the_near_name_hint():
    with pytest.raises(TypeError) as caught:
        group_of("bach_size")
    assert str(caught.value) == "ShardDataset got an unknown keyword 'bach_size'; did you mean 'batch_size'?"
    with pytest.raises(TypeError) as caught:
        group_of("zzz")
    assert str(caught.value) == "ShardDataset got an unknown keyword 'zzz'"
