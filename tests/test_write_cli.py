"""``shardpipe write``: CLI options, summary, deterministic output for any worker count, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardpipe.cli import main
from shardpipe.cli.write import parse_size
from shardpipe.devtools.synth import make_image, make_jpeg
from shardpipe.write import outfiles
from shardpipe.write.job import PROGRESS, write_shards

from .helpers import alive, kill_group, spawn

REPO = Path(__file__).resolve().parents[1]


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.endswith((".tar", ".tar.gz"))}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """An ImageFolder tree of 300 distinct 640x480 photo-like JPEGs (crops of 20 larger synth images)."""
    root = tmp_path_factory.mktemp("photos")
    n = 0
    for base in range(20):
        img = make_image(base, size=(1000, 750))
        for j in range(15):
            x, y = (j * 23) % 360, (j * 17) % 270
            folder = root / f"c{n % 3}"
            folder.mkdir(exist_ok=True)
            img.crop((x, y, x + 640, y + 480)).save(folder / f"p{n:04d}.jpg", "JPEG", quality=90)
            n += 1
    return root


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    for i in range(40):
        (root / f"img-{i:03d}.jpg").write_bytes(make_jpeg(i))
    (root / "notes.txt").write_text("hello")
    (root / "broken.jpg").write_bytes(make_jpeg(40)[:3000])
    return root


def test_cli_write_prints_summary_and_skips(small_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc = main(["write", str(small_folder), str(out / "s-%04d.tar"), "--maxcount", "16", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "wrote 40 samples into 3 shards" in text
    # every JPEG but the generator's CMYK special (input 17) gets restart intervals (the progressive one, 27,
    # becomes baseline)
    assert "40 images (0 presized, 39 given restart intervals, 1 copied unchanged)" in text and "images/s" in text
    assert "skipped 2: not an image file (.txt): 1, unreadable image: 1" in text
    assert "broken.jpg: unreadable image: truncated JPEG (no end-of-image marker)" in text
    manifest = json.loads((out / "manifest.json").read_text())
    # shards are planned by input position: broken.jpg (input 0) leaves shard 0 one sample short
    assert [s["samples"] for s in manifest["shards"]] == [15, 16, 9]
    assert manifest["options"]["maxcount"] == 16 and manifest["options"]["source"]["type"] == "folder"
    assert {s["name"] for s in manifest["skipped"]} == {"notes.txt", "broken.jpg"}
    assert not (out / PROGRESS).exists()
    rc = main(["write", str(small_folder), str(tmp_path / "strict" / "s-%04d.tar"), "--strict", "--no-progress"])
    assert rc == 1


def test_cli_write_errors_are_clear(small_folder: Path, tmp_path: Path, capsys):
    assert main(["write", str(small_folder), str(tmp_path / "fixed.tar"), "--no-progress"]) == 2
    assert "needs a %d or {} placeholder" in capsys.readouterr().err
    assert main(["write", str(tmp_path / "nope"), str(tmp_path / "o-%02d.tar"), "--no-progress"]) == 2
    assert "source not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    assert main(["write", str(empty), str(tmp_path / "e-%02d.tar"), "--no-progress"]) == 1
    assert "no images were written" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


def test_parse_size():
    assert parse_size("500M") == 500 << 20 and parse_size("1GiB") == 1 << 30 and parse_size("1234") == 1234
    assert parse_size("1.5k") == 1536
    with pytest.raises(Exception, match="not a size: 'lots'"):
        parse_size("lots")


@pytest.mark.parametrize(
    "extra", [[], ["--presize", "200", "--quality", "80"], ["--shuffle", "--seed", "3", "--compress", "gz"]]
)
def test_worker_count_does_not_change_the_shards(photos: Path, tmp_path: Path, extra):
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        argv = [
            "write",
            str(photos),
            str(out / ("t-%04d.tar.gz" if "--compress" in extra else "t-%04d.tar")),
            "--maxcount",
            "40",
            "--workers",
            str(workers),
            "--no-progress",
        ]
        assert main(argv + extra) == 0
        outputs.append((shard_bytes(out), (out / "manifest.json").read_bytes()))
    assert len(outputs[0][0]) == 8
    assert outputs[0] == outputs[1]  # identical shard bytes and manifest


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _descendants(pid: int) -> list[int]:
    """Children of ``pid``, their children, and so on."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds worker processes through /proc")
@pytest.mark.parametrize("start", ["default", "forkserver"])
def test_killed_write_leaves_complete_shards_and_resume_matches_a_clean_run(
    photos: Path, tmp_path: Path, capsys, start: str
):
    """Killed with SIGKILL, the writer leaves complete shards and no process behind: workers that shardpipe's
    forkserver started, or the standard library's (a program's own start method), and those servers."""
    clean = tmp_path / "clean"
    write_shards(
        str(photos), str(clean / "t-%04d.tar"), workers=2, maxcount=10, presize=160, quality=85, shuffle=True, seed=7,
    )  # fmt: skip
    expected = shard_bytes(clean)
    assert len(expected) == 30

    out = tmp_path / "killed"
    argv = [
        "write", str(photos), str(out / "t-%04d.tar"), "--maxcount", "10", "--presize", "160", "--quality", "85",
        "--shuffle", "--seed", "7", "--workers", "2", "--no-progress",
    ]  # fmt: skip
    code = "import sys; from shardpipe.cli import main; sys.exit(main())"
    if start != "default":
        code = f"import multiprocessing as mp; mp.set_start_method({start!r}); {code}"
    proc = spawn([sys.executable, "-c", code, *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len([p for p in out.iterdir() if p.name.endswith(".tar")]) >= 3:
                break
            time.sleep(0.005)
        workers = _descendants(proc.pid)  # the CLI has threads: its workers are a forkserver's children
        proc.send_signal(signal.SIGKILL)  # the writer alone: its workers must notice and exit by themselves
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, (
            f"the write ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        )
        assert len(workers) >= 3, workers  # two workers and the server that started them (and a resource tracker)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in workers), "worker processes outlived the killed writer"
    finally:
        kill_group(proc)  # whatever is left of it, also when an assertion above failed

    left = shard_bytes(out)
    assert 3 <= len(left) < 30 and not (out / "manifest.json").exists()
    for name, data in left.items():  # every shard under a final name is complete
        assert data == expected[name], f"{name} is not the complete shard"

    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "shards kept from the interrupted run" in capsys.readouterr().out
    assert shard_bytes(out) == expected
    assert (out / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())  # no temp or progress file


def test_ctrl_c_then_resume_reuses_recorded_shards_and_refuses_other_options(
    small_folder: Path, tmp_path: Path, capsys, monkeypatch
):
    clean = tmp_path / "clean"
    write_shards(str(small_folder), str(clean / "r-%03d.tar"), maxcount=8)
    out = tmp_path / "out"
    real = outfiles.write_json

    def ctrl_c_after_second_shard(url, value, storage_options):
        real(url, value, storage_options)
        if len(value["shards"]) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(outfiles, "write_json", ctrl_c_after_second_shard)
    argv = ["write", str(small_folder), str(out / "r-%03d.tar"), "--maxcount", "8"]
    assert main([*argv, "--no-progress"]) == 130  # the command and the API below share their defaults
    monkeypatch.undo()
    assert "complete shards are kept; run again with --resume" in capsys.readouterr().err
    progress = json.loads((out / PROGRESS).read_text())
    # input 0 is broken.jpg (skipped): shard 0 holds inputs 0-7 (7 samples), shard 1 inputs 8-15
    assert {i: s["name"] for i, s in progress["shards"].items()} == {"0": "r-000.tar", "1": "r-001.tar"}
    assert [s["samples"] for s in progress["shards"].values()] == [7, 8]
    assert {i: [s[:2] for s in skips] for i, skips in progress["skipped"].items()} == {"0": [[0, "broken.jpg"]]}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json.progress", "r-000.tar", "r-001.tar"]

    rc = main(["write", str(small_folder), str(out / "r-%03d.tar"), "--maxcount", "9", "--resume", "--no-progress"])
    assert rc == 2 and "cannot resume" in capsys.readouterr().err
    rc = main([*argv, "--no-restart-intervals", "--resume", "--no-progress"])  # other bytes: not mixed in
    assert rc == 2 and "the interrupted run had different options" in capsys.readouterr().err

    (out / "r-001.tar").write_bytes(b"damaged")  # a recorded shard that changed is rewritten
    summary = write_shards(str(small_folder), str(out / "r-%03d.tar"), maxcount=8, resume=True)
    assert summary.resumed_shards == 1 and summary.written == 40 and summary.written_now == 33
    assert shard_bytes(out) == shard_bytes(clean)
    assert (out / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    assert not (out / PROGRESS).exists()
    again = write_shards(str(small_folder), str(out / "r-%03d.tar"), maxcount=8, resume=True)
    assert again.written_now == 0 and again.resumed_shards == 6 and again.written == 40  # already finished
    assert [s.name for s in again.skipped] == ["notes.txt", "broken.jpg"]


def test_fsspec_output_url_matches_local_output(small_folder: Path, tmp_path: Path):
    """Output URLs go through fsspec (here its in-memory filesystem), never through os.path."""
    import fsspec

    local = tmp_path / "local"
    write_shards(str(small_folder), str(local / "m-%03d.tar"), maxcount=16)
    summary = write_shards(str(small_folder), "memory://bucket/ds/m-%03d.tar", maxcount=16, workers=2)
    fs = fsspec.filesystem("memory")
    try:
        assert summary.manifest == "memory://bucket/ds/manifest.json"
        assert sorted(fs.ls("/bucket/ds", detail=False)) == [
            f"/bucket/ds/{n}" for n in ("m-000.tar", "m-001.tar", "m-002.tar", "manifest.index", "manifest.json")
        ]
        for name, data in shard_bytes(local).items():
            assert fs.cat(f"/bucket/ds/{name}") == data
        assert (
            json.loads(fs.cat("/bucket/ds/manifest.json"))["shards"]
            == json.loads((local / "manifest.json").read_text())["shards"]
        )
    finally:
        fs.rm("/bucket", recursive=True)


def test_a_second_write_into_a_folder_in_use_is_refused_and_leaves_the_first_alone(
    photos: Path, tmp_path: Path, capsys
):
    """Two writes into one folder would share its shard, temporary and manifest names (and the second
    removed the first's temporary files as a killed run's): the second is refused while the first runs,
    and the first, paused meanwhile, finishes exactly as a lone run does."""
    clean = tmp_path / "clean"
    options = ["--maxcount", "10", "--presize", "160", "--shuffle", "--seed", "3", "--workers", "1", "--no-progress"]
    assert main(["write", str(photos), str(clean / "t-%04d.tar"), *options]) == 0
    out = tmp_path / "busy"
    argv = ["write", str(photos), str(out / "t-%04d.tar"), *options]
    code = "import sys; from shardpipe.cli import main; sys.exit(main())"
    proc = spawn([sys.executable, "-c", code, *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "the first write ended before it was caught"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGSTOP)  # mid-shard: a temporary file in the folder
        before = sorted(p.name for p in out.iterdir())
        capsys.readouterr()
        assert main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert (
            f"another shardpipe write or restart is writing into {out} (it holds a lock on the folder): wait for it "
            "to end, or write into another folder"
        ) in err, err
        assert sorted(p.name for p in out.iterdir()) == before  # its temporary file, shards and progress kept
        os.killpg(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()[-2000:]
    finally:
        kill_group(proc)
    assert shard_bytes(out) == shard_bytes(clean)
    assert (out / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())  # no lock file left
