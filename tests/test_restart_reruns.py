"""``shardpipe restart`` run again into a folder: other settings are refused (the finished shards would
be kept with their old layout under a manifest that claims the new one), also after a run killed
before its manifest, and a second run at once is refused by the folder's lock, which a killed run
does not leave held."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shardpipe
from shardpipe.errors import OutputInUseError

pytest.importorskip("shardpipe.image.decoders.native", reason="native extension not built")

from shardpipe.image.decoders import registry  # noqa: E402
from shardpipe.image.restart import restart_layout  # noqa: E402
from shardpipe.write.outfiles import folder_lock  # noqa: E402
from shardpipe.write.restart_job import convert_shard, mark_restarts  # noqa: E402

from .helpers import small_jpeg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

#: ``shardpipe ARGS`` whose conversion of the shard named by argv[1] writes a partial file, touches
#: the file argv[2] and waits (the lock held, the shards before it finished, no manifest yet)
HELD = """
import sys, time
from shardpipe.write import restart_job
from shardpipe.cli import main

convert = restart_job.convert_shard

def held(src, dst, *args, **kwargs):
    if dst.endswith(sys.argv[1]):
        with open(dst + ".restart-tmp", "wb") as f:
            f.write(b"half a shard")
        open(sys.argv[2], "w").close()
        time.sleep(600)
    return convert(src, dst, *args, **kwargs)

restart_job.convert_shard = held
sys.exit(main(sys.argv[3:]))
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m shardpipe.cli ARGS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def held_run(cwd: Path, name: str, *args: str) -> subprocess.Popen:
    """``shardpipe ARGS`` in ``cwd``, stopped (alive) in the middle of writing ``name``."""
    marker = cwd / "held"
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD, name, str(marker), *args], cwd=cwd, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the held run did not reach its shard"
        time.sleep(0.05)
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def write_tar(path: Path, start: int, n: int) -> None:
    """A webdataset-layout shard of ``n`` samples: a 96x80 JPEG (6 MCUs a row) and a label each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(start, start + n):
            for name, data in ((f"s{i:04d}.jpg", small_jpeg(i, (96, 80))), (f"s{i:04d}.cls", str(i % 3).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """``tmp_path/in/s-{0..2}.tar``, 4 samples each."""
    for i in range(3):
        write_tar(tmp_path / "in" / f"s-{i}.tar", 10 * i, 4)
    return tmp_path / "in"


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def refusal(folder: str, url: str, diffs: str) -> str:
    return (
        f"{folder} holds shards converted with other settings ({url}): {diffs}. Rerun with the same "
        "settings to finish or extend them, or convert into a new or empty folder"
    )


# ---------------------------------------------------------------- other settings


def test_a_rerun_with_another_per_row_is_refused_and_the_same_one_extends(inputs: Path, tmp_path: Path) -> None:
    r = cli("restart", "in/s-{0..1}.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = folder_bytes(tmp_path / "out")
    r = cli("restart", "in/s-{0..1}.tar", "-o", "out", "--per-row", "2", "--no-progress", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    diffs = "per_row (--per-row) was 8 there, 2 in this run"
    assert r.stderr == f"shardpipe restart: error: {refusal('out', 'out/restart.json', diffs)}\n"
    assert folder_bytes(tmp_path / "out") == before  # the manifest still says 8, as its shards are
    r = cli("restart", "in/s-{0..2}.tar", "-o", "out", "--per-row", "8", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("3 shards (2 already done)")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["restart_intervals"] == {"per_row": 8, "converted_by": "shardpipe restart"}
    assert [s["name"] for s in manifest["shards"]] == ["s-0.tar", "s-1.tar", "s-2.tar"]
    record = json.loads((tmp_path / "out" / "restart.json").read_text())
    assert record == {
        "converted_by": "shardpipe restart",
        "settings": {"per_row": 8, "max_pixels": registry.MAX_PIXELS},
        "shards": ["s-0.tar", "s-1.tar", "s-2.tar"],
        "sources": {f"s-{i}.tar": str(inputs.resolve() / f"s-{i}.tar") for i in range(3)},
    }


def test_another_pixel_limit_is_refused(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the limit an image is copied as it is, so the limit changes the bytes too."""
    out = str(tmp_path / "out")
    mark_restarts(str(inputs / "s-0.tar"), out)
    monkeypatch.setattr(registry, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError) as e:
        mark_restarts(str(inputs / "s-0.tar"), out)
    assert type(e.value) is ValueError
    diffs = "shardpipe.image.decoders.registry.MAX_PIXELS was 100000000 there, 1000 in this run"
    assert str(e.value) == refusal(out, f"{out}/restart.json", diffs)


def test_a_run_killed_before_its_manifest_still_refuses_other_settings(inputs: Path, tmp_path: Path) -> None:
    args = ("restart", "in/s-{0..1}.tar", "-o", "out", "--workers", "1", "--no-progress")
    kill(held_run(tmp_path, "s-1.tar", *args))
    assert sorted(os.listdir(tmp_path / "out")) == ["restart.json", "s-0.tar", "s-1.tar.restart-tmp"]
    r = cli(*args, "--per-row", "4", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    diffs = "per_row (--per-row) was 8 there, 4 in this run"
    assert r.stderr == f"shardpipe restart: error: {refusal('out', 'out/restart.json', diffs)}\n"
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("2 shards (1 already done)")
    assert not (tmp_path / "out" / "s-1.tar.restart-tmp").exists()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["restart_intervals"]["per_row"] == 8 and manifest["samples"] == 8


def test_a_record_whose_shards_are_all_gone_does_not_hold_its_settings(inputs: Path, tmp_path: Path) -> None:
    """A run stopped before it finished a shard (or whose shards were deleted) leaves nothing to protect."""
    out = tmp_path / "out"
    mark_restarts(str(inputs / "s-0.tar"), str(out), per_row=2)
    for name in ("s-0.tar", "manifest.json"):
        (out / name).unlink()
    summary = mark_restarts(str(inputs / "s-1.tar"), str(out))
    assert (summary.shards, summary.skipped_shards) == (1, 0)
    record = json.loads((out / "restart.json").read_text())
    assert record["settings"]["per_row"] == 8 and record["shards"] == ["s-1.tar"]


# ---------------------------------------------------------------- folders of older versions (no record)


def test_an_older_versions_finished_folder_is_checked_against_its_manifest(inputs: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    mark_restarts(str(inputs / "s-{0..1}.tar"), out, per_row=4)
    os.remove(f"{out}/restart.json")  # as an older version left it
    with pytest.raises(ValueError) as e:
        mark_restarts(str(inputs / "s-{0..1}.tar"), out)
    assert type(e.value) is ValueError
    assert str(e.value) == refusal(out, f"{out}/manifest.json", "per_row (--per-row) was 4 there, 8 in this run")
    summary = mark_restarts(str(inputs / "s-{0..2}.tar"), out, per_row=4)
    assert (summary.shards, summary.skipped_shards) == (3, 2)
    assert json.loads(Path(out, "restart.json").read_text())["shards"] == ["s-0.tar", "s-1.tar", "s-2.tar"]


def test_an_older_versions_unfinished_folder_keeps_its_shards_unchecked(
    inputs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No record, no manifest: the settings of its shards are unknown; they are kept, as before, with a warning."""
    out = tmp_path / "out"
    out.mkdir()
    convert_shard(str(inputs / "s-0.tar"), str(out / "s-0.tar"), per_row=2)
    with caplog.at_level(logging.WARNING, logger="shardpipe"):
        summary = mark_restarts(str(inputs / "s-{0..1}.tar"), str(out))
    assert (summary.shards, summary.skipped_shards) == (2, 1)
    assert caplog.messages == [
        f"{out} holds 1 shards from an older version's run without restart.json: they are kept unchecked, "
        "as converted then"
    ]
    assert json.loads((out / "restart.json").read_text())["settings"]["per_row"] == 8


# ---------------------------------------------------------------- two runs at once


def test_a_second_run_at_once_is_refused_and_a_killed_one_does_not_block(inputs: Path, tmp_path: Path) -> None:
    args = ("restart", "in/s-{0..1}.tar", "-o", "out", "--workers", "1", "--no-progress")
    first = held_run(tmp_path, "s-1.tar", *args)
    try:
        r = cli(*args, cwd=tmp_path)
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == (
            "shardpipe restart: error: another shardpipe write or restart is writing into out (it holds a lock "
            "on the folder): wait for it to end, or write into another folder\n"
        )
        assert (tmp_path / "out" / "s-1.tar.restart-tmp").read_bytes() == b"half a shard"  # not removed under it
        assert not (tmp_path / "out" / "manifest.json").exists()
    finally:
        kill(first)
    r = cli(*args, cwd=tmp_path)  # the kernel dropped the killed run's lock
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("2 shards (1 already done)")
    assert not (tmp_path / "out" / "s-1.tar.restart-tmp").exists()


def test_the_python_api_is_refused_while_the_folder_is_locked(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(str(out), "shardpipe restart"):
        with pytest.raises(OutputInUseError) as e:
            mark_restarts(str(inputs / "s-0.tar"), str(out))
    assert str(e.value) == (
        f"another shardpipe write or restart is writing into {out} (it holds a lock on the folder): "
        "wait for it to end, or write into another folder"
    )
    assert os.listdir(out) == []
    assert mark_restarts(str(inputs / "s-0.tar"), str(out)).shards == 1  # released with the block


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (b"{not json", "is not JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"settings": 8, "shards": []}', "is not a record of shardpipe restart (damaged?)"),
        (b'{"settings": {"per_row": 8}, "shards": ["../s-0.tar"]}', "is not a record of shardpipe restart (damaged?)"),
        (
            b'{"settings": {"per_row": 8}, "shards": ["s-0.tar"], "sources": {"s-0.tar": 1}}',
            "is not a record of shardpipe restart (damaged?)",
        ),
    ],
)
def test_a_damaged_record_is_refused_naming_it(inputs: Path, tmp_path: Path, record: bytes, why: str) -> None:
    """The record is read back, not believed: a damaged one stops the run with its name, before any shard."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "restart.json").write_bytes(record)
    r = cli("restart", "in/s-{0..1}.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith(f"shardpipe restart: error: out/restart.json {why}"), r.stderr
    assert r.stderr.endswith(": remove it, or use another folder\n"), r.stderr
    assert os.listdir(out) == ["restart.json"] and (out / "restart.json").read_bytes() == record


def test_a_rerun_removes_partial_shards_it_does_not_convert_again(inputs: Path, tmp_path: Path) -> None:
    """A run killed while writing s-2.tar, rerun for s-0.tar alone: s-2.tar.restart-tmp stayed for good
    (only the rerun's own shards' partial files were removed)."""
    kill(held_run(tmp_path, "s-2.tar", "restart", "in/s-{0..2}.tar", "-o", "out", "--workers", "1", "--no-progress"))
    assert sorted(os.listdir(tmp_path / "out")) == ["restart.json", "s-0.tar", "s-1.tar", "s-2.tar.restart-tmp"]
    r = cli("restart", "in/s-0.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1 shards (1 already done)")
    names = ["manifest.index", "manifest.json", "restart.json", "s-0.tar", "s-1.tar"]
    assert sorted(os.listdir(tmp_path / "out")) == names


# ---------------------------------------------------------------- another input of the same name


def test_a_shard_converted_from_another_input_of_its_name_is_refused(tmp_path: Path) -> None:
    """a/x.tar converted, then b/x.tar into the same folder: out/x.tar was kept as b/x.tar's conversion
    ('1 already done') and the manifest described a's samples under b's run."""
    write_tar(tmp_path / "a" / "x.tar", 0, 4)
    write_tar(tmp_path / "b" / "x.tar", 100, 2)
    r = cli("restart", "a/x.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = folder_bytes(tmp_path / "out")
    r = cli("restart", "b/x.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        f"shardpipe restart: error: out/x.tar was converted from {tmp_path.resolve()}/a/x.tar (out/restart.json), "
        f"not from this run's {tmp_path.resolve()}/b/x.tar: remove it to convert this input into it, "
        "or convert into another folder\n"
    )
    assert folder_bytes(tmp_path / "out") == before
    r = cli("restart", f"{tmp_path}/a/x.tar", "-o", "out", "--no-progress", cwd=tmp_path)  # the same file, named
    assert r.returncode == 0, r.stderr  # another way
    assert r.stdout.startswith("1 shards (1 already done)")
    (tmp_path / "out" / "x.tar").unlink()
    r = cli("restart", "b/x.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"] == 2
    samples = {s["__key__"]: s for s in shardpipe.ShardDataset(str(tmp_path / "out" / "manifest.json"), decode=None)}
    assert sorted(samples) == ["s0100", "s0101"]
    with tarfile.open(tmp_path / "b" / "x.tar") as tar:
        for key, sample in samples.items():
            before = tar.extractfile(f"{key}.jpg").read()
            assert np.array_equal(pixels(before), pixels(sample["jpg"])) and restart_layout(sample["jpg"]) is not None
    record = json.loads((tmp_path / "out" / "restart.json").read_text())
    assert record["sources"] == {"x.tar": str(tmp_path.resolve() / "b" / "x.tar")}
    r = cli("verify", "out/manifest.json", cwd=tmp_path)  # sizes, counts, sha256 and the index
    assert r.returncode == 0, r.stdout + r.stderr
