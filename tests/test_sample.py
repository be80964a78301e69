from __future__ import annotations

import pytest

from shardpipe.format.sample import check_key, split_name


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dir/n0144.cls", ("dir/n0144", "cls")),
        ("a/b.c.jpg", ("a/b", "c.jpg")),
        ("a.b/c.JPG", ("a.b/c", "jpg")),
        ("x.y.z/w.seg.PNG", ("x.y.z/w", "seg.png")),
        ("plain.txt", ("plain", "txt")),
    ],
)
def test_split_name_follows_webdataset_rules(name, expected):
    assert split_name(name) == expected


@pytest.mark.parametrize("name", ["__index__", "__meta__.json", "dir/__key__.txt", "noext", "dir/.hidden", "dir/"])
def test_split_name_skips_metadata_and_extensionless(name):
    assert split_name(name) is None


def test_check_key_rejects_dots_and_reserved_names():
    check_key("dir.v1/n0144")  # dots in directories are fine
    with pytest.raises(ValueError, match="dot in its basename"):
        check_key("dir/img.v1")
    with pytest.raises(ValueError, match="reserved for metadata"):
        check_key("__meta__")
    with pytest.raises(ValueError, match="must not be empty"):
        check_key("")
