"""Sources for the shard writer: every input image lands in the shards exactly once, bytes unchanged.

Every write here passes ``restart_intervals=False`` (a byte-for-byte copy) because byte identity
is what these tests check; tests/test_write_restart.py covers the default lossless re-encode.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import struct
from pathlib import Path

import pytest
from PIL import Image

import shardpipe
from shardpipe.devtools.synth import make_jpeg, write_flat_folder, write_image_folder
from shardpipe.write.job import write_shards
from shardpipe.write.sources import Record, RecordsSource, detect_type, make_key, open_source, unique_keys
from shardpipe.write.sources.folder import FolderSource
from shardpipe.write.sources.imagefolder import ImageFolderSource
from shardpipe.write.sources.lists import CsvSource, JsonlSource
from shardpipe.write.sources.lmdb import LmdbSource, resolve_callable


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_back(manifest: Path) -> dict[str, dict]:
    """Every sample of the shards, by key (fields stay bytes)."""
    out = {}
    for s in shardpipe.ShardDataset(str(manifest), decode=None):
        assert s["__key__"] not in out, f"duplicate key {s['__key__']}"
        out[s["__key__"]] = s
    return out


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """Photo-like JPEGs (including the greyscale, CMYK and progressive specials at 7, 17, 27)."""
    return [make_jpeg(i) for i in range(30)]


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> tuple[Path, list[tuple[str, int]]]:
    root = tmp_path_factory.mktemp("if")
    return root, write_image_folder(root, 24, num_classes=3)


# ---------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "name, key",
    [
        ("a/b", "a/b"),
        ("a.b/c.d", "a_b/c_d"),
        ("dir\\sub\\x.y", "dir/sub/x_y"),
        ("./../x", "x"),
        ("__meta__", "k__meta__"),
        ("", "_"),
    ],
)
def test_make_key_gives_valid_keys(name, key):
    assert make_key(name) == key
    shardpipe.format.sample.check_key(key)


def test_unique_keys_suffixes_repeats_in_order():
    recs = [Record("x", "1"), Record("x", "2"), Record("x_1", "3"), Record("y", "4")]
    assert [r.key for r in unique_keys(recs)] == ["x", "x_1", "x_1_1", "y"]


# ---------------------------------------------------------------------------- folders


def test_imagefolder_round_trip(imagefolder, tmp_path: Path):
    root, files = imagefolder
    (root / "README.txt").write_text("not an image")
    (root / "class_01" / "notes.md").write_text("not an image")
    try:
        summary = write_shards(root, str(tmp_path / "out-%04d.tar"), maxcount=5, restart_intervals=False)
    finally:
        (root / "README.txt").unlink()
        (root / "class_01" / "notes.md").unlink()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["class_names"] == ["class_00", "class_01", "class_02"] == summary.class_names
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 5, 5, 4]
    assert sorted((s["name"], s["reason"]) for s in manifest["skipped"]) == [
        ("README.txt", "not in a class folder"),
        ("class_01/notes.md", "not an image file (.md)"),
    ]
    samples = read_back(tmp_path / "manifest.json")
    assert len(samples) == len(files) == summary.written == 24
    for rel, label in files:
        s = samples[rel[: -len(".jpg")]]
        assert sha(s["jpg"]) == sha((root / rel).read_bytes())  # pass-through: bytes unchanged
        assert int(s["cls"]) == label


def test_flat_folder_with_label_sidecars_and_extra_json(tmp_path: Path):
    src = tmp_path / "flat"
    files = write_flat_folder(src, 12, num_classes=4)
    (src / "sample-000003.json").write_text(json.dumps({"caption": "three"}))
    (src / ".DS_Store").write_bytes(b"\0\1")
    scan = FolderSource(src).scan()
    assert scan.skipped == []  # hidden: left out, and said once
    assert scan.notes == ["left out 1 hidden file (.DS_Store): names starting with '.' are not read"]
    write_shards(src, str(tmp_path / "out" / "f-%03d.tar"), maxcount=100, restart_intervals=False)
    samples = read_back(tmp_path / "out" / "manifest.json")
    assert sorted(samples) == sorted(f[: -len(".jpg")] for f, _ in files)
    for name, label in files:
        s = samples[name[: -len(".jpg")]]
        assert int(s["cls"]) == label and sha(s["jpg"]) == sha((src / name).read_bytes())
    assert json.loads(samples["sample-000003"]["json"]) == {"caption": "three"}
    assert "json" not in samples["sample-000004"]


def test_flat_folder_label_from_pattern(tmp_path: Path, jpegs):
    src = tmp_path / "pets"
    (src / "more").mkdir(parents=True)
    names = ["cat_1.jpg", "dog_2.jpg", "more/cat_3.jpg", "more/emu_4.jpeg", "unlabelled.jpg"]
    for i, n in enumerate(names):
        (src / n).write_bytes(jpegs[i])
    src_obj = open_source(src, label_pattern=r"(?P<label>[a-z]+)_\d+")
    scan = src_obj.scan()
    assert scan.class_names == ["cat", "dog", "emu"]
    assert [(r.key, r.label) for r in scan.records] == [
        ("cat_1", 0),
        ("dog_2", 1),
        ("more/cat_3", 0),
        ("more/emu_4", 2),
    ]
    assert scan.skipped[0].name == "unlabelled.jpg" and "does not match" in scan.skipped[0].reason
    summary = write_shards(src, str(tmp_path / "o-%02d.tar"), label_pattern=r"([a-z]+)_\d+", restart_intervals=False)
    samples = read_back(tmp_path / "manifest.json")
    assert {k: int(s["cls"]) for k, s in samples.items()} == {"cat_1": 0, "dog_2": 1, "more/cat_3": 0, "more/emu_4": 2}
    assert samples["more/emu_4"]["jpg"] == jpegs[3]  # .jpeg files are stored as .jpg members, bytes unchanged
    assert [s.name for s in summary.skipped] == ["unlabelled.jpg"]
    with pytest.raises(ValueError, match="needs a group"):
        FolderSource(src, label_pattern=r"[a-z]+")


def test_colliding_keys_stay_unique(tmp_path: Path, jpegs):
    src = tmp_path / "dots"
    src.mkdir()
    for i, n in enumerate(["a.b.jpg", "a_b.jpg", "a.b.png"]):
        (src / n).write_bytes(jpegs[i])
    write_shards(src, str(tmp_path / "o-%02d.tar"), restart_intervals=False)
    samples = read_back(tmp_path / "manifest.json")
    # sorted names: a.b.jpg, a.b.png, a_b.jpg -> keys a_b, a_b_1, a_b_2; content decides the extension
    assert {k: s["jpg"] for k, s in samples.items()} == {"a_b": jpegs[0], "a_b_1": jpegs[2], "a_b_2": jpegs[1]}


def test_unreadable_images_are_skipped_and_listed(tmp_path: Path, jpegs):
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "good.jpg").write_bytes(jpegs[0])
    (src / "truncated.jpg").write_bytes(jpegs[1][: len(jpegs[1]) // 2])
    (src / "text.jpg").write_bytes(b"this is not an image at all")
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png, "PNG")
    (src / "tiny.png").write_bytes(png.getvalue())
    (src / "cut.png").write_bytes(png.getvalue()[:-30])
    summary = write_shards(src, str(tmp_path / "o-%02d.tar"), restart_intervals=False)
    reasons = {s.name: s.reason for s in summary.skipped}
    assert reasons.keys() == {"truncated.jpg", "text.jpg", "cut.png"}
    assert reasons["truncated.jpg"] == "unreadable image: truncated JPEG (no end-of-image marker)"
    assert reasons["text.jpg"].startswith("unreadable image: not a recognised image format")
    assert reasons["cut.png"].startswith("unreadable image: corrupt PNG data")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {s["name"] for s in manifest["skipped"]} == reasons.keys()
    samples = read_back(tmp_path / "manifest.json")
    assert samples["good"]["jpg"] == jpegs[0] and samples["tiny"]["png"] == png.getvalue()
    assert "skipped 3" in summary.format() and "truncated.jpg: unreadable image" in summary.format()


# ---------------------------------------------------------------------------- lists


def test_csv_with_class_names_and_extra_columns(imagefolder, tmp_path: Path):
    root, files = imagefolder
    listing = tmp_path / "train.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "caption"])
        for rel, label in files[:10]:
            w.writerow([str(root / rel), ["zebra", "ant", "moose"][label], f"image {rel}"])
        w.writerow([str(root / "missing.jpg"), "ant", "gone"])
    summary = write_shards(listing, str(tmp_path / "out" / "c-%03d.tar"), maxcount=4, restart_intervals=False)
    assert summary.class_names == ["ant", "moose", "zebra"]
    assert [s.name for s in summary.skipped] == [str(root / "missing.jpg")]
    assert summary.skipped[0].reason.startswith("cannot read: [Errno 2]")
    samples = read_back(tmp_path / "out" / "manifest.json")
    assert len(samples) == 10
    by_caption = {json.loads(s["json"])["caption"]: s for s in samples.values()}
    for rel, label in files[:10]:
        s = by_caption[f"image {rel}"]
        assert s["jpg"] == (root / rel).read_bytes()
        assert summary.class_names[int(s["cls"])] == ["zebra", "ant", "moose"][label]


def test_csv_without_header_and_relative_paths(imagefolder, tmp_path: Path):
    root, files = imagefolder
    listing = root / "list.csv"
    listing.write_text("".join(f"{rel},{label}\n" for rel, label in files[:5]))
    try:
        scan = CsvSource(listing).scan()
    finally:
        listing.unlink()
    assert [(r.key, r.label) for r in scan.records] == [(rel[:-4], label) for rel, label in files[:5]]
    assert scan.class_names is None and scan.skipped == []


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_blank_key_cell_names_the_sample_by_its_path_and_stays_out_of_its_json(imagefolder, tmp_path: Path, kind):
    root, files = imagefolder
    rows = [
        (str(root / rel), label, key, f"note {i}")
        for i, ((rel, label), key) in enumerate(zip(files[:3], ["a", "", None]))
    ]
    listing = tmp_path / f"list.{kind}"
    if kind == "csv":
        with open(listing, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "key", "note"])
            w.writerows([(p, label, key or "", note) for p, label, key, note in rows])
    else:
        fields = ("path", "label", "key", "note")
        listing.write_text("".join(json.dumps(dict(zip(fields, r))) + "\n" for r in rows))
    write_shards(listing, str(tmp_path / "k-%02d.tar"), restart_intervals=False, shuffle=False)
    samples = read_back(tmp_path / "manifest.json")
    by_path = {make_key(p[:-4].lstrip("/")) for p, *_ in rows[1:]}
    assert set(samples) == {"a"} | by_path
    assert sorted(json.loads(s["json"])["note"] for s in samples.values()) == ["note 0", "note 1", "note 2"]
    assert all(json.loads(s["json"]).keys() == {"note"} for s in samples.values())  # no "key": "" / null


def test_jsonl_with_keys_labels_extra_and_bad_lines(imagefolder, tmp_path: Path):
    root, files = imagefolder
    listing = tmp_path / "list.jsonl"
    lines = [
        json.dumps({"image": str(root / rel), "label": label, "key": f"img.{i}", "source": "synth"})
        for i, (rel, label) in enumerate(files[:6])
    ]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps(["a", "list"]))
    lines.insert(5, json.dumps({"label": 1}))
    listing.write_text("\n".join(lines) + "\n\n")
    scan = JsonlSource(listing).scan()
    assert [s.reason.split(":")[0] for s in scan.skipped] == [
        "invalid JSON",
        "a line must be a JSON object, not list",
        "no path field (one of path, file, filename, image, img, image_path)",
    ]
    assert [s.name for s in scan.skipped] == ["list.jsonl:3", "list.jsonl:5", "list.jsonl:6"]
    write_shards(listing, str(tmp_path / "j-%02d.tar"), restart_intervals=False)
    samples = read_back(tmp_path / "manifest.json")
    assert sorted(samples) == [f"img_{i}" for i in range(6)]
    for i, (rel, label) in enumerate(files[:6]):
        s = samples[f"img_{i}"]
        assert s["jpg"] == (root / rel).read_bytes() and int(s["cls"]) == label
        assert json.loads(s["json"]) == {"source": "synth"}


# ---------------------------------------------------------------------------- LMDB


def decode_value(value: bytes) -> tuple[bytes, int, dict]:
    """A user's LMDB value format for the test: 4-byte label, then the JPEG."""
    (label,) = struct.unpack(">I", value[:4])
    return value[4:], label, {"format": "labelled"}


def _make_lmdb(path: Path, items: dict[bytes, bytes]) -> None:
    lmdb = pytest.importorskip("lmdb")

    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()


def test_lmdb_raw_values_round_trip(tmp_path: Path, jpegs):
    store = tmp_path / "train.lmdb"
    items = {f"n01/img.{i:03d}.JPEG".encode(): jpegs[i] for i in range(15)}
    items[b"__len__"] = b"15"
    _make_lmdb(store, items)
    assert detect_type(str(store)) == "lmdb"
    summary = write_shards(store, str(tmp_path / "l-%02d.tar"), maxcount=6, workers=2, restart_intervals=False)
    assert [(s.name, s.reason.split(":")[0]) for s in summary.skipped] == [("__len__", "unreadable image")]
    samples = read_back(tmp_path / "manifest.json")
    assert {k: sha(s["jpg"]) for k, s in samples.items()} == {f"n01/img_{i:03d}": sha(jpegs[i]) for i in range(15)}
    assert all("cls" not in s for s in samples.values())
    # shards are planned by input position: __len__ (input 0, not an image) leaves shard 0 one short
    assert [s["samples"] for s in json.loads((tmp_path / "manifest.json").read_text())["shards"]] == [5, 6, 4]


def test_lmdb_value_decoder_gives_labels_and_extra(tmp_path: Path, jpegs):
    store = tmp_path / "db"
    _make_lmdb(store, {f"k{i:02d}".encode(): struct.pack(">I", i % 4) + jpegs[i] for i in range(10)})
    for decoder in (decode_value, "tests.test_sources:decode_value"):
        out = tmp_path / ("api" if callable(decoder) else "cli")
        write_shards(store, str(out / "l-%02d.tar"), lmdb_decoder=decoder, workers=2, restart_intervals=False)
        samples = read_back(out / "manifest.json")
        assert sorted(samples) == [f"k{i:02d}" for i in range(10)]
        for i in range(10):
            s = samples[f"k{i:02d}"]
            assert s["jpg"] == jpegs[i] and int(s["cls"]) == i % 4 and json.loads(s["json"]) == {"format": "labelled"}
    assert (
        LmdbSource(store, "tests.test_sources:decode_value").describe()["decoder"] == "tests.test_sources:decode_value"
    )
    with pytest.raises(ValueError, match="expected 'module:function', got 'no_colon'"):
        resolve_callable("no_colon")


def test_lmdb_decoder_failures_are_skipped_with_reason(tmp_path: Path, jpegs):
    store = tmp_path / "db"
    _make_lmdb(store, {b"a": struct.pack(">I", 1) + jpegs[0], b"b": b"xy"})
    summary = write_shards(store, str(tmp_path / "o-%02d.tar"), lmdb_decoder=decode_value, restart_intervals=False)
    assert summary.written == 1
    assert [(s.name, s.reason) for s in summary.skipped] == [
        ("b", "cannot load: error: unpack requires a buffer of 4 bytes")
    ]


# ---------------------------------------------------------------------------- detection, options


def test_detect_type(imagefolder, tmp_path: Path):
    root, _ = imagefolder
    assert detect_type(str(root)) == "imagefolder"
    assert detect_type(str(root / "class_00")) == "folder"
    assert detect_type("x/list.CSV") == "csv" and detect_type("a.jsonl") == "jsonl"
    with pytest.raises(FileNotFoundError, match="source not found"):
        detect_type(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="label pattern applies to flat folders only"):
        open_source(root, "imagefolder", label_pattern="(x)")
    with pytest.raises(ValueError, match="has no class folders"):
        ImageFolderSource(root / "class_00").scan()


def test_records_source_from_memory(tmp_path: Path, jpegs):
    src = RecordsSource([("a.1", jpegs[0], 3), ("b", jpegs[1], None, {"x": 1})], class_names=None)
    write_shards(src, str(tmp_path / "m-%02d.tar"), restart_intervals=False)
    samples = read_back(tmp_path / "manifest.json")
    assert samples["a_1"]["jpg"] == jpegs[0] and int(samples["a_1"]["cls"]) == 3
    assert json.loads(samples["b"]["json"]) == {"x": 1} and "cls" not in samples["b"]


def test_maxsize_respected_and_gzip(imagefolder, tmp_path: Path):
    root, files = imagefolder
    limit = 400_000
    write_shards(root, str(tmp_path / "s-%03d.tar.gz"), maxsize=limit, compress="gz", restart_intervals=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    biggest = max((root / rel).stat().st_size for rel, _ in files)
    assert len(manifest["shards"]) > 2 and manifest["samples"] == 24
    for entry in manifest["shards"]:
        data = (tmp_path / entry["name"]).read_bytes()
        assert data[:2] == b"\x1f\x8b"
        assert len(gzip.decompress(data)) <= limit + biggest + 4 * 1536 + 10240
    samples = read_back(tmp_path / "manifest.json")
    assert {k: sha(s["jpg"]) for k, s in samples.items()} == {
        rel[:-4]: sha((root / rel).read_bytes()) for rel, _ in files
    }


def test_shuffle_is_seeded_and_complete(imagefolder, tmp_path: Path):
    root, files = imagefolder

    def order(seed: int, name: str) -> list[str]:
        write_shards(
            root, str(tmp_path / name / "x-%02d.tar"), shuffle=True, seed=seed, maxcount=7, restart_intervals=False
        )
        return [s["__key__"] for s in shardpipe.ShardDataset(str(tmp_path / name / "manifest.json"), decode=None)]

    a, b, c = order(1, "a"), order(1, "b"), order(2, "c")
    assert a == b and a != c
    assert sorted(a) == sorted(c) == sorted(rel[:-4] for rel, _ in files)
    assert a != sorted(a)
