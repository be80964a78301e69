"""How ``shardpipe write`` reads awkward sources: linked folders, link loops, FIFOs and sockets,
file names that cannot be sample keys, CSV cells with spaces, paths named like LMDB stores.

Writes pass ``restart_intervals=False`` (a byte-for-byte copy) so bytes can be compared.
"""

from __future__ import annotations

import json
import os
import socket
import tarfile
from pathlib import Path

import pytest

from shardpipe.devtools.synth import make_jpeg, write_image_folder
from shardpipe.write import outfiles
from shardpipe.write.job import PROGRESS, write_shards
from shardpipe.write.sources import Record, Skip, checked_records, detect_type, open_source, printable
from shardpipe.write.sources.base import walk
from shardpipe.write.sources.lists import CsvSource
from shardpipe.write.sources.lmdb import LmdbSource
from shardpipe.write.sources.registry import is_lmdb, stray_images_warning

NO_FIFO = not hasattr(os, "mkfifo")


def read_shards(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of the shards the manifest in ``out`` lists: key -> {extension: bytes}."""
    samples: dict[str, dict[str, bytes]] = {}
    for entry in json.loads((out / "manifest.json").read_text())["shards"]:
        with tarfile.open(out / entry["name"]) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def jpegs(folder: Path, names: list[str]) -> dict[str, bytes]:
    """Write a distinct plain JPEG per name under ``folder``; return name -> bytes."""
    out = {}
    for i, name in enumerate(names):
        data = make_jpeg(i, plain=True)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        out[name] = data
    return out


# ---------------------------------------------------------------------------- folder links (bug 1)


def test_a_linked_class_folder_is_read_like_torchvision(tmp_path: Path):
    real = tmp_path / "real"
    files = dict(write_image_folder(real, 8, num_classes=2))
    tree = tmp_path / "tree"
    tree.mkdir()
    os.rename(real / "class_00", tree / "class_00")
    (tree / "class_01").symlink_to(real / "class_01", target_is_directory=True)
    summary = write_shards(tree, str(tmp_path / "out" / "s-%02d.tar"), restart_intervals=False)
    assert summary.written == 8 and summary.skipped == [] and summary.class_names == ["class_00", "class_01"]
    samples = read_shards(tmp_path / "out")
    assert {k: (v["jpg"], int(v["cls"])) for k, v in samples.items()} == {
        rel.removesuffix(".jpg"): ((tree / rel).read_bytes(), label) for rel, label in files.items()
    }


def test_a_linked_subfolder_of_a_flat_folder_is_read(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    images = jpegs(elsewhere, ["x.jpg", "y.jpg"])
    flat = tmp_path / "flat"
    jpegs(flat, ["a.jpg"])
    (flat / "more").symlink_to(elsewhere, target_is_directory=True)
    assert walk(str(flat)) == (["a.jpg", "more/x.jpg", "more/y.jpg"], [], [])
    write_shards(flat, str(tmp_path / "out" / "s-%02d.tar"), restart_intervals=False)
    samples = read_shards(tmp_path / "out")
    assert sorted(samples) == ["a", "more/x", "more/y"]
    assert samples["more/x"]["jpg"] == images["x.jpg"] and samples["more/y"]["jpg"] == images["y.jpg"]


def test_link_loops_end_and_list_each_file_once(tmp_path: Path):
    root = tmp_path / "root"
    images = jpegs(root, ["a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"])
    (root / "sub" / "deeper" / "up").symlink_to(root, target_is_directory=True)  # a loop to the root
    (root / "sub" / "self").symlink_to(".", target_is_directory=True)  # a loop to its own folder
    (root / "twin").symlink_to(root / "sub" / "deeper", target_is_directory=True)  # a second link, not a loop
    files, skipped, _ = walk(str(root))
    assert files == sorted(images)  # each under its real path: links are followed after real folders
    twice = "folder listed twice: already read as {} (a link loop, or a second link)"
    assert sorted(skipped) == [
        Skip("sub/deeper/up", twice.format("the source folder itself")),
        Skip("sub/self", twice.format("sub")),
        Skip("twin", twice.format("sub/deeper")),
    ]
    summary = write_shards(root, str(tmp_path / "out" / "s-%02d.tar"), restart_intervals=False)
    assert summary.written == 3 and len(summary.skipped) == 3
    assert {k: v["jpg"] for k, v in read_shards(tmp_path / "out").items()} == {
        name.removesuffix(".jpg"): data for name, data in images.items()
    }


# ---------------------------------------------------------------------------- special files (bug 6)


@pytest.mark.skipif(NO_FIFO, reason="needs named pipes")
def test_fifos_sockets_and_broken_links_are_skipped_without_being_opened(tmp_path: Path):
    root = tmp_path / "root"
    images = jpegs(root, ["a.jpg", "c/b.jpg"])
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "a.cls")  # a sidecar that is a FIFO is not read either
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "c" / "sock.jpg"))
        (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
        files, skipped, _ = walk(str(root))
        assert files == ["a.jpg", "c/b.jpg"]
        assert [(s.name, s.reason.split(":")[0]) for s in sorted(skipped)] == [
            ("a.cls", "not a regular file (a named pipe)"),
            ("c/sock.jpg", "not a regular file (a socket)"),
            ("gone.jpg", "broken symbolic link"),
            ("pipe.jpg", "not a regular file (a named pipe)"),
        ]
        summary = write_shards(root, str(tmp_path / "out" / "s-%02d.tar"), restart_intervals=False)
    assert summary.written == 2 and sorted(s.name for s in summary.skipped) == sorted(s.name for s in skipped)
    samples = read_shards(tmp_path / "out")
    assert samples == {"a": {"jpg": images["a.jpg"]}, "c/b": {"jpg": images["c/b.jpg"]}}


@pytest.mark.skipif(NO_FIFO, reason="needs named pipes")
def test_a_list_naming_a_fifo_skips_it_instead_of_blocking(tmp_path: Path):
    images = jpegs(tmp_path, ["a.jpg"])
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "list.csv").write_text("path\na.jpg\npipe.jpg\n")
    summary = write_shards(tmp_path / "list.csv", str(tmp_path / "out" / "s-%02d.tar"), restart_intervals=False)
    assert summary.written == 1
    assert [(s.name, s.reason) for s in summary.skipped] == [
        ("pipe.jpg", f"cannot read: {tmp_path / 'pipe.jpg'} is not a regular file (a named pipe)")
    ]
    assert read_shards(tmp_path / "out") == {"a": {"jpg": images["a.jpg"]}}


# ---------------------------------------------------------------------------- names that cannot be keys (bugs 3, 4)

BAD_NAMES = ["tab\tname.jpg", "new\nline.jpg", "nel\x85name.jpg"]


def test_control_characters_and_non_utf8_names_are_listed_skips():
    records = [Record("ok", "/x/ok.jpg", name="ok.jpg"), Record("a\tb", "/x/a\tb.jpg", name="a\tb.jpg")]
    records.append(Record("caf\udce9", "/x/caf\udce9.jpg", name="caf\udce9.jpg"))
    good, bad = checked_records(records)
    assert good == records[:1]
    assert bad == [
        Skip("a\tb.jpg", "invalid sample key: sample key 'a\\tb' contains the control character '\\t'"),
        Skip(
            "caf\\xe9.jpg",
            "name not valid UTF-8: b'caf\\xe9.jpg' (tar and webdataset sample keys are UTF-8): rename it",
        ),
    ]
    assert printable("caf\udce9") == "caf\\xe9" and printable("plain ü") == "plain ü"


def _bad_name_folder(root: Path) -> dict[str, bytes]:
    """Six good images, one per bad name in BAD_NAMES, one Latin-1 name; returns the good ones by key."""
    good = jpegs(root, [f"img{i}.jpg" for i in range(6)])
    for i, name in enumerate(BAD_NAMES):
        (root / name).write_bytes(make_jpeg(10 + i, plain=True))
    with open(os.path.join(os.fsencode(root), b"caf\xe9.jpg"), "wb") as f:
        f.write(make_jpeg(20, plain=True))
    return {name.removesuffix(".jpg"): data for name, data in good.items()}


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names")
def test_a_write_skips_bad_names_and_goes_on(tmp_path: Path):
    good = _bad_name_folder(tmp_path / "src")
    summary = write_shards(
        tmp_path / "src", str(tmp_path / "out" / "s-%02d.tar"), maxcount=2, shuffle=False, restart_intervals=False
    )
    assert summary.written == 6
    reasons = {s.name: s.reason for s in summary.skipped}
    assert sorted(reasons) == sorted([*BAD_NAMES, "caf\\xe9.jpg"])
    assert all(reasons[n].startswith("invalid sample key: sample key ") for n in BAD_NAMES)
    assert "not valid UTF-8: b'caf\\xe9.jpg'" in reasons["caf\\xe9.jpg"]
    assert {k: v["jpg"] for k, v in read_shards(tmp_path / "out").items()} == good
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(s["name"] for s in manifest["skipped"]) == sorted(reasons)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names")
def test_bad_names_survive_an_interrupted_write_and_its_resume(tmp_path: Path, monkeypatch):
    _bad_name_folder(tmp_path / "src")
    clean, out = tmp_path / "clean", tmp_path / "out"
    options = {"maxcount": 2, "restart_intervals": False}
    write_shards(tmp_path / "src", str(clean / "s-%02d.tar"), **options)
    real = outfiles.write_json

    def stop_after_first_shard(url, value, storage_options):
        real(url, value, storage_options)
        if len(value.get("shards", ())) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(outfiles, "write_json", stop_after_first_shard)
    with pytest.raises(KeyboardInterrupt):
        write_shards(tmp_path / "src", str(out / "s-%02d.tar"), **options)
    monkeypatch.undo()
    assert json.loads((out / PROGRESS).read_text())["shards"].keys() == {"0"}
    summary = write_shards(tmp_path / "src", str(out / "s-%02d.tar"), resume=True, **options)
    assert summary.resumed_shards == 1 and summary.written == 6 and len(summary.skipped) == 4
    for name in ["s-00.tar", "s-01.tar", "s-02.tar", "manifest.json"]:
        assert (out / name).read_bytes() == (clean / name).read_bytes()


# ---------------------------------------------------------------------------- CSV cells (bug 2)


def test_csv_cells_are_read_without_surrounding_spaces(tmp_path: Path):
    images = jpegs(tmp_path, ["0.jpg", "1.jpg", "2.jpg"])
    (tmp_path / "list.csv").write_text(
        'path, label, key, caption\n0.jpg, 3, k0, "a, b"\n 1.jpg ,10 , k1 , c\n2.jpg, 0, ,d\n'
    )
    scan = CsvSource(tmp_path / "list.csv").scan()
    assert scan.class_names is None and scan.skipped == []
    assert [(r.key, r.label, r.extra) for r in scan.records] == [
        ("k0", 3, {"caption": "a, b"}),
        ("k1", 10, {"caption": "c"}),
        ("2", 0, {"caption": "d"}),  # an empty key cell: the path gives the key, and it is no extra field
    ]
    write_shards(tmp_path / "list.csv", str(tmp_path / "out" / "s-%02d.tar"), shuffle=False, restart_intervals=False)
    samples = read_shards(tmp_path / "out")
    assert {k: (v["jpg"], v["cls"]) for k, v in samples.items()} == {
        "k0": (images["0.jpg"], b"3"),
        "k1": (images["1.jpg"], b"10"),
        "2": (images["2.jpg"], b"0"),
    }


def test_csv_class_names_with_spaces_map_like_without(tmp_path: Path):
    jpegs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "list.csv").write_text("path, class\na.jpg, dog\nb.jpg,cat\nc.jpg,  dog \n")
    scan = CsvSource(tmp_path / "list.csv").scan()
    assert scan.class_names == ["cat", "dog"] and [r.label for r in scan.records] == [1, 0, 1]


# ---------------------------------------------------------------------------- LMDB paths (bug 5)


def _lmdb(path: Path, subdir: bool = True) -> dict[str, bytes]:
    lmdb = pytest.importorskip("lmdb")
    items = {f"{i}.jpg": make_jpeg(i, plain=True) for i in range(3)}
    env = lmdb.open(str(path), map_size=1 << 26, subdir=subdir)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k.encode(), v)
    env.close()
    return items


def test_lmdb_is_detected_by_content_not_by_name(tmp_path: Path):
    photos = tmp_path / "photos.lmdb"
    jpegs(photos, ["0.jpg", "1.jpg"])
    assert not is_lmdb(str(photos)) and detect_type(str(photos)) == "folder"
    write_shards(photos, str(tmp_path / "o1" / "s-%02d.tar"), restart_intervals=False)
    assert sorted(read_shards(tmp_path / "o1")) == ["0", "1"]
    items = _lmdb(tmp_path / "store.bin", subdir=False)  # an LMDB data file, any name
    assert is_lmdb(str(tmp_path / "store.bin")) and detect_type(str(tmp_path / "store.bin")) == "lmdb"
    write_shards(tmp_path / "store.bin", str(tmp_path / "o2" / "s-%02d.tar"), restart_intervals=False)
    assert {k: v["jpg"] for k, v in read_shards(tmp_path / "o2").items()} == {
        k.removesuffix(".jpg"): v for k, v in items.items()
    }
    (tmp_path / "list.csv").write_text("path\n0.jpg\n")
    assert not is_lmdb(str(tmp_path / "list.csv")) and not is_lmdb(str(tmp_path / "empty.mdb"))


def test_lmdb_on_a_path_that_is_not_one_names_the_path(tmp_path: Path):
    pytest.importorskip("lmdb")
    (tmp_path / "list.csv").write_text("path\n0.jpg\n")
    (tmp_path / "images").mkdir()
    for path in (tmp_path / "list.csv", tmp_path / "images"):
        with pytest.raises(ValueError, match=f"not an LMDB store: {path} "):
            LmdbSource(path).scan()


def test_a_mistyped_decoder_fails_before_any_record_is_read(tmp_path: Path):
    _lmdb(tmp_path / "db")
    with pytest.raises(ValueError, match="LMDB value decoder 'mydecoders:decode' cannot be used: ModuleNotFoundError"):
        open_source(tmp_path / "db", lmdb_decoder="mydecoders:decode")
    with pytest.raises(ValueError, match="LMDB value decoder 'json:nothing' cannot be used: AttributeError"):
        LmdbSource(tmp_path / "db", "json:nothing")
    assert LmdbSource(tmp_path / "db", "json:loads")._decode is json.loads


# ---------------------------------------------------------------------------- a stray root image (bug 7)


def test_stray_root_images_beside_class_folders_warn(tmp_path: Path, caplog):
    write_image_folder(tmp_path / "tree", 4, num_classes=2)
    assert stray_images_warning(str(tmp_path / "tree")) is None  # a clean ImageFolder tree
    jpegs(tmp_path / "tree", ["preview.jpg"])
    warning = stray_images_warning(str(tmp_path / "tree"))
    assert warning is not None and "(preview.jpg)" in warning and "(class_00, class_01)" in warning
    assert "--source-type imagefolder" in warning
    with caplog.at_level("WARNING", logger="shardpipe"):
        assert open_source(tmp_path / "tree").kind == "folder"  # the documented rule stands
    assert [r.getMessage() for r in caplog.records] == [warning]
    caplog.clear()
    open_source(tmp_path / "tree", "folder")  # chosen, not guessed: no warning
    assert not caplog.records
    jpegs(tmp_path / "flat", ["a.jpg", "notes/readme.txt"])
    assert stray_images_warning(str(tmp_path / "flat")) is None  # subfolders without images
