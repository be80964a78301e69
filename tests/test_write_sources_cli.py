"""``shardpipe write`` on awkward sources, as a user runs it: exit status, what it prints, what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shardpipe.devtools.synth import make_jpeg, write_image_folder

REPO = Path(__file__).resolve().parents[1]


def write(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m shardpipe.cli write ARGS --no-progress`` (a hang fails the test, not the suite)."""
    argv = [sys.executable, "-m", "shardpipe.cli", "write", *map(str, args), "--no-progress"]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def members(out: Path) -> dict[str, bytes]:
    """Every tar member of the shards in ``out``, by name."""
    found = {}
    for shard in sorted(out.glob("s-*.tar")):
        with tarfile.open(shard) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return found


def test_bad_file_names_are_listed_skips_and_resume_agrees(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"img{i}.jpg").write_bytes(make_jpeg(i, plain=True))
    (src / "tab\tname.jpg").write_bytes(make_jpeg(8, plain=True))
    with open(os.path.join(os.fsencode(src), b"caf\xe9.jpg"), "wb") as f:
        f.write(make_jpeg(9, plain=True))
    out = tmp_path / "out"
    run = write(src, out / "s-%02d.tar", "--maxcount", "2", "--no-shuffle")
    assert run.returncode == 0, run.stderr
    assert "skipped 2: invalid sample key: 1, name not valid UTF-8: 1" in run.stdout
    assert "caf\\xe9.jpg: name not valid UTF-8: b'caf\\xe9.jpg'" in run.stdout
    assert "contains the control character '\\t'" in run.stdout
    assert sorted(members(out)) == [f"img{i}.jpg" for i in range(4)]
    again = write(src, out / "s-%02d.tar", "--maxcount", "2", "--no-shuffle", "--resume")
    assert again.returncode == 0 and "skipped 2:" in again.stdout, again.stderr
    assert write(src, tmp_path / "strict" / "s-%02d.tar", "--strict").returncode == 1  # skips still count


def test_lmdb_errors_are_clean_and_name_what_is_wrong(tmp_path: Path):
    lmdb = pytest.importorskip("lmdb")
    photos = tmp_path / "photos.lmdb"  # a folder of images, named like a store
    photos.mkdir()
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(make_jpeg(i, plain=True))
    run = write(photos, tmp_path / "o1" / "s-%02d.tar")
    assert run.returncode == 0 and "source: folder (auto-detected" in run.stdout, run.stderr
    (tmp_path / "list.csv").write_text("path\nphotos.lmdb/0.jpg\n")
    run = write(tmp_path / "list.csv", tmp_path / "o2" / "s-%02d.tar", "--source-type", "lmdb")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"shardpipe write: error: not an LMDB store: {tmp_path / 'list.csv'}" in run.stderr
    env = lmdb.open(str(tmp_path / "store.lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"0.jpg", make_jpeg(0, plain=True))
    env.close()
    run = write(tmp_path / "store.lmdb", tmp_path / "o3" / "s-%02d.tar", "--lmdb-decoder", "mydecoders:decode")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "LMDB value decoder 'mydecoders:decode' cannot be used: ModuleNotFoundError" in run.stderr
    assert not (tmp_path / "o3").exists()  # failed before anything was written


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_named_like_an_image_does_not_hang_the_write(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(make_jpeg(1, plain=True))
    os.mkfifo(src / "pipe.jpg")
    run = write(src, tmp_path / "out" / "s-%02d.tar", timeout=60)
    assert run.returncode == 0, run.stderr
    assert "pipe.jpg: not a regular file (a named pipe)" in run.stdout
    assert sorted(members(tmp_path / "out")) == ["a.jpg"]


def test_the_summary_says_how_the_source_was_read_and_warns_of_stray_images(tmp_path: Path):
    tree = tmp_path / "tree"
    write_image_folder(tree, 6, num_classes=2)
    run = write(tree, tmp_path / "o1" / "s-%02d.tar")
    assert run.returncode == 0 and "source: imagefolder (auto-detected" in run.stdout
    assert "WARNING" not in run.stderr
    (tree / "preview.jpg").write_bytes((tree / "class_00" / "img-000000.jpg").read_bytes())
    run = write(tree, tmp_path / "o2" / "s-%02d.tar")
    assert run.returncode == 0
    assert "source: folder (auto-detected; its subfolders hold images too" in run.stdout
    warning = next(line for line in run.stderr.splitlines() if line.startswith("WARNING"))
    assert "read as a flat folder (no class labels)" in warning and "(class_00, class_01)" in warning
    assert "--source-type imagefolder" in warning
    run = write(tree, tmp_path / "o3" / "s-%02d.tar", "--source-type", "imagefolder")
    assert run.returncode == 0 and "WARNING" not in run.stderr
    assert "source: imagefolder (--source-type)" in run.stdout
    assert "preview.jpg: not in a class folder" in run.stdout
    assert sum(name.endswith(".cls") for name in members(tmp_path / "o3")) == 6


def test_linked_class_folders_and_spaced_csv_cells_from_the_command_line(tmp_path: Path):
    real = tmp_path / "real"
    write_image_folder(real, 8, num_classes=2)
    tree = tmp_path / "tree"
    tree.mkdir()
    for cls in ("class_00", "class_01"):
        (tree / cls).symlink_to(real / cls, target_is_directory=True)
    assert write(tree, tmp_path / "o1" / "s-%02d.tar").returncode == 0
    manifest = json.loads((tmp_path / "o1" / "manifest.json").read_text())
    assert manifest["samples"] == 8 and manifest["class_names"] == ["class_00", "class_01"]
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(make_jpeg(i, plain=True))
    (tmp_path / "list.csv").write_text("path, label\n0.jpg, 3\n1.jpg, 10\n2.jpg, 0\n")
    assert write(tmp_path / "list.csv", tmp_path / "o2" / "s-%02d.tar", "--no-shuffle").returncode == 0
    cls = {k: v for k, v in members(tmp_path / "o2").items() if k.endswith(".cls")}
    assert cls == {"0.cls": b"3", "1.cls": b"10", "2.cls": b"0"}
    assert json.loads((tmp_path / "o2" / "manifest.json").read_text())["class_names"] is None


def test_hidden_files_and_folders_are_left_out_counted_not_skipped(tmp_path: Path):
    tree = tmp_path / "tree"
    write_image_folder(tree, 4, num_classes=2)
    apple = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # an AppleDouble header, as macOS copies leave
    (tree / "class_00" / "._img-000000.jpg").write_bytes(apple)
    (tree / "class_01" / "._img-000001.jpg").write_bytes(apple)
    (tree / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tree / "class_01" / ".thumbs").mkdir()
    (tree / "class_01" / ".thumbs" / "t.jpg").write_bytes(make_jpeg(7, plain=True))
    out = tree / ".shards"  # the run's own output folder, hidden and inside the source: not counted
    run = write(tree, out / "s-%02d.tar", "--strict")
    assert run.returncode == 0, run.stdout + run.stderr
    note = (
        "left out 3 hidden files (.DS_Store, ._*) and 1 hidden folder (.thumbs): names starting with '.' are not read"
    )
    assert note in run.stdout.splitlines() and "skipped: nothing" in run.stdout
    jpgs = sorted(name for name in members(out) if name.endswith(".jpg"))
    assert jpgs == [f"class_0{i % 2}/img-00000{i}.jpg" for i in (0, 2, 1, 3)]
    assert json.loads((out / "manifest.json").read_text())["notes"] == [note]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(make_jpeg(1, plain=True))
    (flat / "._a.jpg").write_bytes(apple)
    (flat / ".b.jpg").write_bytes(make_jpeg(2, plain=True))  # an image, but hidden: left out all the same
    run = write(flat, tmp_path / "o2" / "s-%02d.tar")
    assert run.returncode == 0 and "skipped: nothing" in run.stdout, run.stdout + run.stderr
    assert "left out 2 hidden files (._*, .b.jpg): names starting with '.' are not read" in run.stdout
    assert sorted(members(tmp_path / "o2")) == ["a.jpg"]


def test_binary_lmdb_keys_become_hex_sample_keys(tmp_path: Path):
    """Packed-integer keys were skipped for their control characters; non-UTF-8 keys were escaped, then
    split into folders at each backslash. Binary keys are now ``0x`` + hex: unique, the same every run."""
    lmdb = pytest.importorskip("lmdb")
    import struct

    env = lmdb.open(str(tmp_path / "store.lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in (0, 1, 256):
            txn.put(struct.pack(">I", i), make_jpeg(i, plain=True))  # as many LMDB image data sets key them
        txn.put(b"caf\xe9/a\\b.jpg", make_jpeg(3, plain=True))  # not UTF-8
        txn.put(b"tab\there.jpg", make_jpeg(4, plain=True))  # UTF-8, with a control character
        txn.put(b"train/plain.jpg", make_jpeg(5, plain=True))  # text: read as a path, as before
    env.close()
    outs = [tmp_path / "o1", tmp_path / "o2"]
    for out in outs:
        run = write(tmp_path / "store.lmdb", out / "s-%02d.tar", "--strict", "--no-restart-intervals")
        assert run.returncode == 0 and "skipped: nothing" in run.stdout, run.stdout + run.stderr
    found = members(outs[0])
    assert list(found) == [
        "0x00000000.jpg", "0x00000001.jpg", "0x00000100.jpg", "0x636166e92f615c622e6a7067.jpg",
        "0x74616209686572652e6a7067.jpg", "train/plain.jpg",
    ]  # fmt: skip
    assert found["0x00000100.jpg"] == make_jpeg(256, plain=True)
    assert (outs[0] / "s-00.tar").read_bytes() == (outs[1] / "s-00.tar").read_bytes()


def test_float_tiffs_presize_to_their_greys_or_are_listed_skips(tmp_path: Path):
    """Pillow clips float pixels to 0..255, so a 0..1 float TIFF presized to black."""
    import io

    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    ramp = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (300, 1))  # 0 on the left to 1 on the right
    Image.fromarray(ramp).save(src / "unit.tif")
    Image.fromarray(ramp[:40, :60] * 255).save(src / "small255.tif")  # below the target: re-encoded all the same
    Image.fromarray(ramp * 4 - 1).save(src / "wide.tif")  # -1..3: no one reading
    Image.fromarray(np.where(ramp > 0.5, np.nan, ramp).astype(np.float32)).save(src / "nan.tif")
    out = tmp_path / "out"
    run = write(src, out / "s-%02d.tar", "--presize", "100", "--no-shuffle")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nan.tif: unreadable image: float image holding NaN or infinite values: convert it to 8-bit first" in (
        run.stdout
    )
    assert (
        "wide.tif: unreadable image: float image with values from -1 to 3: presize reads float pixels in 0..1 "
        "(or 0..255); scale it to one of them, or convert it to 8-bit first"
    ) in run.stdout
    found = members(out)
    assert sorted(found) == ["small255.jpg", "unit.jpg"]
    unit = np.asarray(Image.open(io.BytesIO(found["unit.jpg"])), dtype=np.float32)
    assert unit.shape == (100, 133)
    expected = np.tile(np.linspace(0, 255, 133), (100, 1))  # the ramp, scaled to 8 bits
    assert np.abs(unit - expected).mean() < 3 and unit[:, -5:].min() > 240
    small = np.asarray(Image.open(io.BytesIO(found["small255.jpg"])), dtype=np.float32)
    assert small.shape == (40, 60) and np.abs(small - ramp[:40, :60] * 255).mean() < 3


def test_the_summary_escapes_control_characters_in_names(tmp_path: Path):
    """A skipped file's name went to the terminal as it was: an escape sequence in it recoloured (or
    retitled, or cleared) the user's terminal; the summary now prints it as ``\\x1b``, as `inspect` does."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.jpg").write_bytes(make_jpeg(0, plain=True))
    (src / "red\x1b[31mtab\tname.jpg").write_bytes(make_jpeg(1, plain=True))
    run = write(src, tmp_path / "out" / "s-%02d.tar", "--no-shuffle")
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout and "\t" not in run.stdout
    assert "  red\\x1b[31mtab\\x09name.jpg: invalid sample key: sample key 'red\\x1b[31mtab\\tname'" in run.stdout
