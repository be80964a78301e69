"""``shardpipe write`` into a folder inside its own source folder: a rerun and ``--resume`` read the same inputs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from shardpipe.devtools.synth import make_jpeg, write_image_folder

from .helpers import kill_group, spawn

REPO = Path(__file__).resolve().parents[1]


def argv(source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "shardpipe.cli", "write", str(source), str(out / "s-%03d.tar"), "--maxcount", "5",
        "--no-progress", *extra,
    ]  # fmt: skip


def files(folder: Path, source: Path) -> dict[str, bytes]:
    """The shards, manifest and index in ``folder``, by name (the manifest with ``source`` as ``SRC``)."""
    out = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.suffix != ".jpg"}
    out["manifest.json"] = out["manifest.json"].replace(f'"{source}"'.encode(), b'"SRC"')
    return out


def test_ctrl_c_and_resume_into_a_folder_inside_an_imagefolder_tree_match_a_clean_run(tmp_path: Path):
    """The output folder was read as a class (``a_out`` sorts first: every label moved up one, so --resume
    refused the changed inputs) and its shards as skipped inputs."""
    tree = tmp_path / "tree"
    write_image_folder(tree, 60, num_classes=3)
    clean = tmp_path / "clean"
    clean.mkdir()
    for cls in tree.iterdir():  # the same tree elsewhere, written into a folder outside it
        (clean / cls.name).symlink_to(cls, target_is_directory=True)
    done = subprocess.run(argv(clean, tmp_path / "out"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    out = tree / "a_out"
    proc = spawn(argv(tree, out, "--presize", "64", "--workers", "1"), cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not (out.is_dir() and len(list(out.glob("s-*.tar"))) >= 2):
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode in (0, 130), err  # 0: it finished before the signal came
    resumed = subprocess.run(
        argv(tree, out, "--presize", "64", "--workers", "1", "--resume"), cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped: nothing" in resumed.stdout
    again = subprocess.run(argv(clean, tmp_path / "clean-presized", "--presize", "64"), cwd=REPO, capture_output=True)
    assert again.returncode == 0
    assert files(out, tree) == files(tmp_path / "clean-presized", clean)


def test_a_rerun_into_the_source_folder_itself_does_not_read_its_shards(tmp_path: Path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.jpg").write_bytes(make_jpeg(i, plain=True))
    first = subprocess.run(argv(src, src, "--strict"), cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    written = files(src, src)
    second = subprocess.run(argv(src, src, "--strict"), cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout  # --strict: no skipped input (its shards were "not an image")
    assert "skipped: nothing" in second.stdout
    assert files(src, src) == written
