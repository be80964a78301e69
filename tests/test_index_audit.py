"""``shardpipe index`` on shards other tools wrote, run as a real program.

Each test runs ``python -m shardpipe.cli`` in its own process, as a user does: a tar written
without sorting, an output that names a folder, a rebuilt index of a ``shardpipe write`` manifest.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from PIL import Image

from .helpers import strict_cli, tar_of


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 8)).save(buf, "JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------- index


def test_index_warns_when_a_key_is_split_across_the_shard(tmp_path: Path):
    """``tar -cf x.tar dir/`` stores files in directory order, not sorted: one key's members end
    up apart, and each run is a sample of its own (as streaming reads it). Indexed silently,
    12 "samples" of 4 images looked fine until training saw jpgs without their captions."""
    members = [(f"./{k}.{ext}", jpeg() if ext == "jpg" else b"x") for ext in ("jpg", "txt") for k in "ab"]
    tar_of(tmp_path / "u-0.tar", members)
    tar_of(tmp_path / "u-1.tar", sorted(members))
    out = strict_cli("index", str(tmp_path / "u-{0..1}.tar"), "-o", str(tmp_path / "manifest.json"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("indexed 6 samples in 2 shards")
    assert out.stderr == (
        f"WARNING 1 of 2 shards hold a key in more than one place ({tmp_path / 'u-0.tar'}: 2 keys, "
        "the first './a'): its members are not next to each other (a tar written unsorted? `tar --sort=name`), "
        "so each run of them is indexed as a sample of its own, as streaming reads it; "
        "`shardpipe verify` lists them\n"
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [4, 2]


def test_index_into_a_folder_is_refused_before_any_shard_is_read(tmp_path: Path):
    """``-o DIR`` scanned every shard (hours with --sha256), wrote DIR's sibling ``DIR.index``, then
    failed on a rename: ``[Errno 21] Is a directory: 'DIR.1a2b3c4d.tmp' -> 'DIR'``."""
    tar_of(tmp_path / "s.tar", [("a.jpg", jpeg())])
    folder = tmp_path / "out"
    folder.mkdir()
    for output in (str(folder), f"{folder}/", "new/"):
        out = strict_cli("index", str(tmp_path / "s.tar"), "-o", output, "--no-progress", cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        named = output.rstrip("/")
        assert out.stderr == (
            f"shardpipe index: error: {output} is a folder: name the manifest to write, such as {named}/manifest.json\n"
        )
    assert sorted(os.listdir(tmp_path)) == ["out", "s.tar"]
    assert os.listdir(folder) == []


def test_index_over_one_of_its_shards_is_refused_before_anything_is_written(tmp_path: Path):
    """``-o`` naming an input shard (or a name whose index sidecar is one) wrote JSON over that shard."""
    shards = [tar_of(tmp_path / f"s-{i}.tar", [("a.jpg", jpeg())]) for i in range(2)]
    tar_of(tmp_path / "m.index", [("b.jpg", jpeg())])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    os.symlink(shards[1], tmp_path / "link.json")
    for output, hit in (("s-1.tar", "s-1.tar"), ("link.json", "s-1.tar"), ("m.json", "m.index")):
        out = strict_cli("index", "s-{0..1}.tar::m.index", "-o", output, "--no-progress", cwd=tmp_path)
        target = output if output != "m.json" else "m.index"
        assert (out.returncode, out.stderr) == (
            2,
            f"shardpipe index: error: {target} would be written over the shard {hit}: name another manifest file\n",
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "link.json"} == before


def test_reindexing_a_manifest_keeps_its_class_names_and_other_metadata(tmp_path: Path):
    """Every stale-index error says "rebuild it with `shardpipe index`": indexing a `shardpipe
    write` manifest over itself dropped class_names (the only record of what each .cls means),
    the options and the skipped inputs."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat_0", "cat_1", "dog_0"):
        (photos / f"{name}.jpg").write_bytes(jpeg())
    pattern = str(tmp_path / "out" / "s-%03d.tar")
    wrote = strict_cli(
        "write", str(photos), pattern, "--label-pattern", r"([a-z]+)_\d+", "--maxcount", "2", "--no-progress"
    )
    assert wrote.returncode == 0, wrote.stderr
    manifest = tmp_path / "out" / "manifest.json"
    before = json.loads(manifest.read_text())
    (tmp_path / "out" / "manifest.index").unlink()
    out = strict_cli("index", str(manifest), "-o", str(manifest), "--no-progress")
    assert out.returncode == 0, out.stderr
    after = json.loads(manifest.read_text())
    assert after["class_names"] == ["cat", "dog"]
    kept = {k: v for k, v in before.items() if k not in ("shards", "indexed_by")}
    assert {k: v for k, v in after.items() if k not in ("shards", "indexed_by")} == kept
    assert after["indexed_by"] == "shardpipe index"
    assert [(s["name"], s["samples"], s["bytes"]) for s in after["shards"]] == [
        (s["name"], s["samples"], s["bytes"]) for s in before["shards"]
    ]
