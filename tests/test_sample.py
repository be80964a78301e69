from __future__ import annotations

import pytest

from shardpipe.format.sample import check_key, is_image_field, split_name


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


@pytest.mark.parametrize("name", ["____", "____.jpg", "dir/____.cls"])
def test_split_name_reads_the_shortest_double_underscore_name_as_metadata(name):
    assert split_name(name) is None  # "__" + "" + "__": the empty reserved name is still reserved


@pytest.mark.parametrize("name, expected", [("___.jpg", ("___", "jpg")), ("_a_.jpg", ("_a_", "jpg"))])
def test_split_name_keeps_short_underscore_names_as_samples(name, expected):
    assert split_name(name) == expected


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\x7f", "\x80", "\x85", "\x9f"])
def test_check_key_rejects_each_control_character_range_by_its_bounds(char):
    with pytest.raises(ValueError) as e:
        check_key(f"a{char}b")
    assert str(e.value) == f"sample key {'a' + char + 'b'!r} contains the control character {char!r}"


@pytest.mark.parametrize("char", [" ", "~", "\xa0", "é", "ß"])
def test_check_key_accepts_printable_characters_beside_the_control_ranges(char):
    assert check_key(f"dir/a{char}b") is None  # the characters just outside C0, DEL and C1, and other text


@pytest.mark.parametrize(
    "key, message",
    [
        ("a\\b", "sample key 'a\\\\b' contains a backslash: Windows tools read it as a path separator"),
        ("/abs/x", "sample key '/abs/x' is an absolute path: tar would extract it outside its folder"),
        ("a/../b", "sample key 'a/../b' contains a '..' component: tar would extract it outside its folder"),
        ("..", "sample key '..' contains a '..' component: tar would extract it outside its folder"),
        ("a//b", "sample key 'a//b' has an empty or '.' path component"),
        ("a/b/", "sample key 'a/b/' has an empty or '.' path component"),
        ("a/./b", "sample key 'a/./b' has an empty or '.' path component"),
        ("./b", "sample key './b' has an empty or '.' path component"),
        (
            "dir/img.v1",
            "sample key 'dir/img.v1' has a dot in its basename: readers split at the first dot, so it would "
            "read back as another key; replace the dot (e.g. with '_')",
        ),
        ("d/__x__", "sample key 'd/__x__' is reserved for metadata (__*__)"),
    ],
)
def test_check_key_says_why_a_key_is_refused(key, message):
    with pytest.raises(ValueError) as e:
        check_key(key)
    assert str(e.value) == message


def test_check_key_reads_only_the_last_path_component_as_the_basename():
    check_key("a/b.c/d")  # a dot in a middle folder is kept by readers: fine
    check_key("x.y/z.w/v")
    with pytest.raises(ValueError, match="reserved for metadata"):
        check_key("d/e/__m__")  # reserved however deep it sits


@pytest.mark.parametrize(
    "ext, image",
    [("jpg", True), ("left.png", True), ("seg.webp", True), ("cls", False), ("json", False), ("jpg.txt", False)],
)
def test_is_image_field_looks_at_the_last_extension(ext, image):
    assert is_image_field(ext) is image
