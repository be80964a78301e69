"""Small unit tests of shardpipe/write/sources/base.py: the helpers a folder scan and a load rely on
(exact skip reasons, label parsing, file suffixes, message text), on real files under tmp_path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shardpipe.write.sources.base import (
    Record,
    RecordsSource,
    Skip,
    Source,
    _list_folder,
    _special_kind,
    labels_to_indices,
    printable,
    read_regular,
    strip_suffix,
    suffix_of,
    walk,
)


def test_list_folder_unreadable_subfolder_is_a_skip_with_reason(tmp_path: Path) -> None:
    skipped: list[Skip] = []
    assert _list_folder(str(tmp_path), "gone/", skipped) == []
    assert skipped == [Skip("gone", "cannot list folder: No such file or directory")]


def test_list_folder_unreadable_root_raises(tmp_path: Path) -> None:
    skipped: list[Skip] = []
    with pytest.raises(FileNotFoundError):
        _list_folder(str(tmp_path / "gone"), "", skipped)
    assert skipped == []


def test_walk_link_loop_names_the_first_folder_exactly(tmp_path: Path) -> None:
    # the folder's name ends in X: the reason must keep it whole ("dirX", not "dir")
    (tmp_path / "dirX").mkdir()
    (tmp_path / "dirX" / "a.jpg").write_bytes(b"a")
    os.symlink(tmp_path / "dirX", tmp_path / "dirX" / "loop")
    found = walk(str(tmp_path))
    assert found.files == ["dirX/a.jpg"]
    assert found.skipped == [
        Skip("dirX/loop", "folder listed twice: already read as dirX (a link loop, or a second link)")
    ]


def test_walk_real_subfolder_of_a_linked_folder_already_listed_through_another_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "S").mkdir(parents=True)
    (outside / "S" / "img.jpg").write_bytes(b"i")
    (outside / "top.jpg").write_bytes(b"t")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "S", root / "a")  # followed first: S is listed as "a/"
    os.symlink(outside, root / "b")  # then outside, whose real subfolder S was read already
    found = walk(str(root))
    assert found.files == ["a/img.jpg", "b/top.jpg"]
    assert found.skipped == [Skip("b/S", "folder listed twice: already read as a (a link loop, or a second link)")]


def test_special_kind_of_a_mode_no_test_matches() -> None:
    assert _special_kind(stat.S_IFDIR | 0o755) == "a special file"
    assert _special_kind(stat.S_IFIFO | 0o644) == "a named pipe"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_read_regular_refuses_a_fifo_with_its_kind(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as e:
        read_regular(str(fifo))
    assert str(e.value) == f"{fifo} is not a regular file (a named pipe)"


def test_read_regular_reads_bytes(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"\x00\r\n\xff")
    assert read_regular(str(p)) == b"\x00\r\n\xff"


def test_labels_to_indices_integer_labels_with_empty_cells() -> None:
    assert labels_to_indices(["3", "", None, 7, "-1"]) == ([3, None, None, 7, -1], None)


def test_labels_to_indices_names_with_empty_cells() -> None:
    assert labels_to_indices(["dog", "", None, "cat"]) == ([1, None, None, 0], ["cat", "dog"])


def test_printable_lone_surrogate_becomes_backslash_escape() -> None:
    # \ud800 is outside surrogateescape's range (\udc80-\udcff): the last fallback escapes it
    assert printable("a\ud800b") == "a\\ud800b"
    assert printable("caf\udce9") == "caf\\xe9"
    assert printable("plain") == "plain"


def test_suffix_of_takes_the_last_path_part_only() -> None:
    assert suffix_of("x/a.b/c") == ""
    assert suffix_of("x/a.b/c.JPG") == "jpg"
    assert suffix_of("x/y/.hidden") == ""
    assert suffix_of("photo.tar.PNG") == "png"


def test_records_source_turns_path_refs_into_str(tmp_path: Path) -> None:
    p = tmp_path / "img.jpg"
    p.write_bytes(b"jpeg")
    records = RecordsSource([("a", p, 2), ("b", b"raw")]).scan().records
    assert [(r.key, r.ref, type(r.ref), r.label, r.name) for r in records] == [
        ("a", str(p), str, 2, "a"),
        ("b", b"raw", bytes, None, "b"),
    ]


def test_load_bad_label_file_message_shows_40_characters(tmp_path: Path) -> None:
    img = tmp_path / "x.jpg"
    img.write_bytes(b"img")
    cls = tmp_path / "x.cls"
    text = "abcdefghij" * 5  # 50 characters, not an integer
    cls.write_text(text + "\n")
    record = Record("x", str(img), sidecars=(str(cls),))
    with pytest.raises(ValueError) as e:
        Source().load(record)
    assert str(e.value) == f"label file {cls} does not hold an integer: {text[:40]!r}"


def test_read_regular_refuses_a_folder_naming_it_and_keeps_no_descriptor(tmp_path):
    folder = tmp_path / "a-folder.jpg"  # a list row may name a folder
    folder.mkdir()
    for _ in range(20):
        with pytest.raises(OSError) as e:
            read_regular(str(folder))
        assert str(e.value) == f"{folder} is not a regular file (a folder)"
    # the descriptors open on the folder (not a count of all: a collection of earlier tests' garbage closes some)
    assert _descriptors_on(folder) == []


def _descriptors_on(path) -> list[str]:
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                held.append(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return held


@pytest.mark.parametrize(
    "name, stripped",
    [("a/b.c.jpg", "a/b.c"), ("noext", "noext"), ("a/.hidden", "a/.hidden"), ("d.v1/noext", "d.v1/noext")],
)
def test_strip_suffix_takes_only_a_last_extension_of_the_file_name(name, stripped):
    assert strip_suffix(name) == stripped


@pytest.mark.parametrize("name, suffix", [("X.jpg", "jpg"), ("XX.PNG", "png"), (".jpg", ""), ("..jpg", "")])
def test_suffix_of_ignores_only_leading_dots(name, suffix):
    assert suffix_of(name) == suffix


def test_labels_to_indices_whole_floats_are_integers() -> None:
    assert labels_to_indices(["3.0", "", 10.0, "-2.", True]) == ([3, None, 10, -2, 1], None)
    assert labels_to_indices(["2.5", "1"]) == ([1, 0], ["1", "2.5"])  # one that is not whole: all are names
