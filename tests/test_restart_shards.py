"""Restart intervals in shards: ``shardpipe write`` marks JPEGs by default (lossless), and
``shardpipe restart`` converts existing shards (foreign ones too), resumably, with index and
manifest; both run as real commands in subprocesses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shardpipe
from shardpipe.devtools.synth import CMYK_INDEX, GREY_INDEX, PROGRESSIVE_INDEX, make_jpeg
from shardpipe.errors import CorruptShardError

pytest.importorskip("shardpipe.image.decoders.native", reason="native extension not built")

from shardpipe.image.restart import restart_layout  # noqa: E402
from shardpipe.write.restart_job import convert_shard, mark_restarts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INDICES = (1, 2, GREY_INDEX, CMYK_INDEX, PROGRESSIVE_INDEX)


def cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from shardpipe.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def read_back(manifest: Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in shardpipe.ShardDataset(str(manifest), decode=None)}


def check_marked(before: bytes, after: bytes, index: int) -> None:
    assert np.array_equal(pixels(before), pixels(after)), index
    if index == CMYK_INDEX:
        assert after == before, index  # not transcodable: copied as it is
    else:  # a progressive file becomes baseline: a few % larger, its crops ~3.7x cheaper
        growth = 1.10 if index == PROGRESSIVE_INDEX else 1.02
        assert restart_layout(after) is not None and len(after) <= len(before) * growth, index


def test_write_marks_jpegs_by_default_and_can_copy_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in INDICES:
        (src / f"img-{i:03d}.jpg").write_bytes(make_jpeg(i))
    r = cli("write", str(src), str(tmp_path / "a" / "s-%02d.tar"), "--no-progress")
    assert r.returncode == 0, r.stderr
    got = read_back(tmp_path / "a" / "manifest.json")
    assert sorted(got) == [f"img-{i:03d}" for i in sorted(INDICES)]
    for i in INDICES:
        check_marked(make_jpeg(i), got[f"img-{i:03d}"]["jpg"], i)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["options"]["restart_intervals"] is True
    r = cli("write", str(src), str(tmp_path / "b" / "s-%02d.tar"), "--no-restart-intervals", "--no-progress")
    assert r.returncode == 0, r.stderr
    got = read_back(tmp_path / "b" / "manifest.json")
    assert all(got[f"img-{i:03d}"]["jpg"] == make_jpeg(i) for i in INDICES)


def foreign_shard(path: Path, start: int, style: str) -> dict[str, bytes]:
    """A webdataset- or img2dataset-style tar written by Python's tarfile: its members."""
    members: dict[str, bytes] = {}
    for i in range(start, start + len(INDICES)):
        key = f"{i:09d}" if style == "img2dataset" else f"sample{i}"
        members[f"{key}.jpg"] = make_jpeg(INDICES[i % len(INDICES)])
        if style == "img2dataset":
            members[f"{key}.txt"] = f"caption {i}".encode()
            members[f"{key}.json"] = json.dumps({"key": key, "status": "success"}).encode()
        else:
            members[f"{key}.cls"] = str(i % 3).encode()
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o640
            tar.addfile(info, io.BytesIO(data))
    return members


def test_restart_command_converts_foreign_shards_losslessly_and_resumes(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    expected = {
        "shard-0.tar": foreign_shard(src / "shard-0.tar", 0, "webdataset"),
        "shard-1.tar": foreign_shard(src / "shard-1.tar", 10, "img2dataset"),
    }
    out = tmp_path / "out"
    r = cli("restart", str(src / "shard-{0..1}.tar"), "-o", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "2 shards (0 already done): 8 of 10 JPEGs restart-marked" in r.stdout, r.stdout  # not the CMYK ones
    for name, members in expected.items():
        with tarfile.open(out / name) as tar:
            infos = tar.getmembers()
            assert [m.name for m in infos] == list(members)  # names and order kept
            assert all(m.mtime == 1_700_000_000 and m.mode == 0o640 for m in infos)
            for m in infos:
                data = tar.extractfile(m).read()
                if m.name.endswith(".jpg"):
                    number = int("".join(c for c in m.name.split(".")[0] if c.isdigit()))
                    check_marked(members[m.name], data, INDICES[number % len(INDICES)])
                else:
                    assert data == members[m.name]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["shard-0.tar", "shard-1.tar"]
    assert manifest["samples"] == 10 and (out / manifest["index"]).exists()
    got = read_back(out / "manifest.json")
    assert set(got) == {f"sample{i}" for i in range(5)} | {f"{i:09d}" for i in range(10, 15)}
    assert got["000000012"]["txt"] == b"caption 12"

    # resume: shard-0 kept as it is, shard-1 (gone, with a stopped run's partial file) redone
    kept = (out / "shard-0.tar").stat().st_mtime_ns
    redo = (out / "shard-1.tar").read_bytes()
    (out / "shard-1.tar").unlink()
    (out / "shard-1.tar.restart-tmp").write_bytes(b"partial")
    summary = mark_restarts(str(src / "shard-{0..1}.tar"), str(out))
    assert summary.skipped_shards == 1 and summary.jpegs == 5
    assert (out / "shard-0.tar").stat().st_mtime_ns == kept
    assert (out / "shard-1.tar").read_bytes() == redo and not (out / "shard-1.tar.restart-tmp").exists()


def test_members_escaping_the_shard_are_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../evil.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(CorruptShardError, match=r"member '../evil.jpg' escapes the shard"):
        convert_shard(str(tmp_path / "evil.tar"), str(tmp_path / "out.tar"))
    assert not list(tmp_path.glob("out.tar*"))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(CorruptShardError, match="not a readable tar shard"):
        convert_shard(str(tmp_path / "junk.tar"), str(tmp_path / "out.tar"))
    r = cli("restart", str(tmp_path / "missing-{0..1}.tar"), "-o", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 2 and "shardpipe restart: error:" in r.stderr and "missing-0.tar" in r.stderr, r.stderr


def test_an_output_folder_holding_the_inputs_is_refused(tmp_path: Path) -> None:
    foreign_shard(tmp_path / "a-0.tar", 0, "webdataset")
    before = (tmp_path / "a-0.tar").read_bytes()
    with pytest.raises(ValueError, match=r"the output folder holds the input shard .*a-0\.tar: choose another folder"):
        mark_restarts(str(tmp_path / "a-{0..0}.tar"), str(tmp_path))
    assert (tmp_path / "a-0.tar").read_bytes() == before and not (tmp_path / "manifest.json").exists()
