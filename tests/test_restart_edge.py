"""``shardpipe restart`` edge cases: an output folder that is the input folder under another name,
byte-reproducible .tgz output, and sha256 in the new manifest (so ``verify`` checks the bytes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.devtools.synth import write_image_folder
from shardpipe.write.job import write_shards

pytest.importorskip("shardpipe.image.decoders.native", reason="native extension not built")

from shardpipe.write.restart_job import convert_shard, mark_restarts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m shardpipe.cli ARGS`` in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two shards (10 generated JPEGs, 2 classes) with their manifest, written without restart intervals."""
    root = tmp_path_factory.mktemp("restart-edge")
    write_image_folder(root / "src", 10, num_classes=2)
    write_shards(str(root / "src"), str(root / "in" / "s-%06d.tar"), maxcount=5, restart_intervals=False,
                 progress=False)  # fmt: skip
    return root / "in"


@pytest.fixture(scope="module")
def tgz_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("restart-edge-tgz")
    write_image_folder(root / "src", 6, num_classes=2)
    write_shards(str(root / "src"), str(root / "in" / "s-%06d.tgz"), maxcount=3, compress="gz",
                 restart_intervals=False, progress=False)  # fmt: skip
    return root / "in"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- the input folder under another name


def test_an_output_folder_naming_the_inputs_through_a_symlink_is_refused(shards: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(shards, target_is_directory=True)
    before = folder_bytes(shards)
    r = cli("restart", str(shards / "manifest.json"), "-o", str(link), "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "shardpipe restart: error: the output folder holds the input shard" in r.stderr
    assert "choose another folder" in r.stderr and "Traceback" not in r.stderr
    assert folder_bytes(shards) == before  # manifest.json (sha256, class_names) untouched
    with pytest.raises(ValueError, match="the output folder holds the input shard"):
        mark_restarts(str(shards / "s-{000000..000001}.tar"), str(link))
    assert folder_bytes(shards) == before


def test_an_output_folder_holding_the_input_manifest_is_refused(shards: Path, tmp_path: Path) -> None:
    """A manifest listing shards elsewhere: converting into its own folder would overwrite it."""
    meta = tmp_path / "meta"
    meta.mkdir()
    manifest = json.loads((shards / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry["name"] = str(shards / entry["name"])
    manifest.pop("index")
    (meta / "manifest.json").write_text(json.dumps(manifest))
    before = folder_bytes(meta)
    with pytest.raises(ValueError, match=r"the output folder holds the input manifest .*manifest\.json"):
        mark_restarts(str(meta / "manifest.json"), str(meta))
    assert folder_bytes(meta) == before


def test_class_names_come_from_the_input_manifest(shards: Path, tmp_path: Path) -> None:
    mark_restarts(str(shards / "manifest.json"), str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written["class_names"] == json.loads((shards / "manifest.json").read_text())["class_names"]
    assert written["class_names"] == ["class_00", "class_01"]


# ---------------------------------------------------------------- reproducible .tgz


def test_tgz_output_has_no_timestamp_or_file_name_and_is_reproducible(tgz_shards: Path, tmp_path: Path) -> None:
    first = mark_restarts(str(tgz_shards / "manifest.json"), str(tmp_path / "a"))
    assert first.marked == 6
    shard = (tmp_path / "a" / "s-000000.tgz").read_bytes()
    assert shard[:3] == b"\x1f\x8b\x08"
    assert shard[3] & 0x08 == 0, "the gzip header names a file (FNAME)"
    assert shard[4:8] == bytes(4), "the gzip header has a timestamp"
    # the same header as the shard writer's own .tgz shards
    assert shard[:10] == (tgz_shards / "s-000000.tgz").read_bytes()[:10]
    mark_restarts(str(tgz_shards / "manifest.json"), str(tmp_path / "b"))
    for name in ("s-000000.tgz", "s-000001.tgz", "manifest.index"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_convert_shard_reports_the_bytes_and_checksum_it_wrote(tgz_shards: Path, tmp_path: Path) -> None:
    jpegs, marked, bytes_in, bytes_out, sha = convert_shard(str(tgz_shards / "s-000000.tgz"), str(tmp_path / "o.tgz"))
    data = (tmp_path / "o.tgz").read_bytes()
    assert (jpegs, marked, bytes_in) == (3, 3, (tgz_shards / "s-000000.tgz").stat().st_size)
    assert (bytes_out, sha) == (len(data), hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------- sha256 in the manifest


def check_sha256(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["shards"]:
        assert entry["sha256"] == hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest(), entry["name"]


def test_the_new_manifest_records_sha256_and_verify_checks_it(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli("restart", str(shards / "manifest.json"), "-o", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check_sha256(out)
    # resume: a shard kept from the earlier run gets its checksum too
    (out / "s-000001.tar").unlink()
    (out / "manifest.json").unlink()
    summary = mark_restarts(str(shards / "manifest.json"), str(out))
    assert summary.skipped_shards == 1
    check_sha256(out)
    ok = cli("verify", str(out / "manifest.json"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = bytearray((out / "s-000000.tar").read_bytes())
    data[-1] ^= 1  # a flipped bit in the end padding: only the checksum can see it
    (out / "s-000000.tar").write_bytes(bytes(data))
    bad = cli("verify", str(out / "manifest.json"), cwd=tmp_path)
    assert bad.returncode == 1 and "sha256" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


# ---------------------------------------------------------------- a refused run leaves nothing behind


def refusals(shards: Path, tmp_path: Path) -> dict[str, tuple[list[str], int, str]]:
    """Runs refused before any work, by name: their arguments, exit status and the error's words."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "x.tar").write_bytes((shards / "s-000000.tar").read_bytes())
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "manifest.json").write_bytes((shards / "manifest.json").read_bytes())
    (gone / "s-000000.tar").write_bytes((shards / "s-000000.tar").read_bytes())
    first = str(shards / "s-000000.tar")
    return {
        "one name": ([f"{tmp_path}/a/x.tar::{tmp_path}/b/x.tar"], 2, "have the same file name"),
        "listed twice": ([f"{first}::{first}"], 2, "names " + first + " twice"),
        "per row": ([first, "--per-row", "0"], 2, "per_row (--per-row) must be at least 1, got 0"),
        "manifest shard missing": ([str(gone / "manifest.json")], 1, "no such shard: " + str(gone / "s-000001.tar")),
    }


@pytest.mark.parametrize("case", ["one name", "listed twice", "per row", "manifest shard missing"])
def test_a_refused_run_makes_no_output_folder(shards: Path, tmp_path: Path, case: str) -> None:
    """The output folder was made before the checks: a refused run left it behind, empty (or holding only
    restart.json), for the user to clean up."""
    args, status, words = refusals(shards, tmp_path)[case]
    out = tmp_path / "new" / "out"
    r = cli("restart", *args, "-o", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == status, r.stderr
    assert "shardpipe restart: error:" in r.stderr and words in r.stderr, r.stderr
    assert not out.exists() and not out.parent.exists()
