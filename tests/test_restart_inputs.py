"""``shardpipe restart`` on inputs a user really has: a tar cut at a member boundary or with a
damaged header, a .tgz whose CRC does not match (each refused with a message that names the file,
without output that looks complete; in a run of many, listed and left out while the others are
converted), pax ``size`` records, a shard listed twice, and a full disk (a file size limit)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shardpipe
from shardpipe.devtools.synth import make_jpeg
from shardpipe.errors import CorruptShardError

pytest.importorskip("shardpipe.image.decoders.native", reason="native extension not built")

from shardpipe.image.restart import restart_layout  # noqa: E402
from shardpipe.write import restart_job  # noqa: E402
from shardpipe.write.restart_job import convert_shard, mark_restarts  # noqa: E402

from .helpers import small_jpeg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    """``python -m shardpipe.cli ARGS`` in ``cwd``, its files limited to ``limit`` bytes."""

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300, preexec_fn=set_limit if limit is not None else None,
    )  # fmt: skip


def members(start: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` samples in the webdataset layout: a JPEG and a class label each."""
    out: list[tuple[str, bytes]] = []
    for i in range(start, start + n):
        out += [(f"s{i:04d}.jpg", small_jpeg(i, (96, 80))), (f"s{i:04d}.cls", str(i % 3).encode())]
    return out


def write_tar(path: Path, files: list[tuple[str, bytes]], pax: bool = False) -> bytes:
    """A tar written by Python's tarfile (``pax``: every member carries pax ``size`` and ``mtime``
    records, as some writers do); its bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            if pax:
                info.pax_headers = {"size": str(len(data)), "mtime": "1700000000.5"}
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------- damaged inputs are refused


def test_a_tar_cut_at_a_member_boundary_is_refused(tmp_path: Path) -> None:
    """tarfile takes a missing end-of-archive marker for the end: the members after the cut were
    left out and the output looked complete (``verify`` calls the input truncated)."""
    write_tar(tmp_path / "whole.tar", members(0, 6))
    cut = tarfile.open(tmp_path / "whole.tar").getmembers()[6].offset  # after 3 samples
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s-1.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:cut])
    with pytest.raises(CorruptShardError) as e:
        convert_shard(str(tmp_path / "in" / "s-1.tar"), str(tmp_path / "o.tar"))
    assert str(e.value) == (
        f"{tmp_path / 'in' / 's-1.tar'}: not a readable tar shard (it ends at byte {cut} without the end-of-archive marker)"
    )
    assert not list(tmp_path.glob("o.tar*"))
    r = cli("restart", "in/s-1.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    why = f"in/s-1.tar: not a readable tar shard (it ends at byte {cut} without the end-of-archive marker)"
    assert r.stderr == f"WARNING skipped a damaged input shard: {why}\nshardpipe restart: error: {why}\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["restart.json"]  # the settings only


def test_a_damaged_header_in_the_middle_is_refused(tmp_path: Path) -> None:
    data = bytearray(write_tar(tmp_path / "s.tar", members(0, 6)))
    at = tarfile.open(tmp_path / "s.tar").getmembers()[4].offset
    data[at + 3] ^= 0x20  # the name changes, the checksum does not
    (tmp_path / "s.tar").write_bytes(bytes(data))
    with pytest.raises(CorruptShardError) as e:
        convert_shard(str(tmp_path / "s.tar"), str(tmp_path / "o.tar"))
    assert str(e.value) == f"{tmp_path / 's.tar'}: not a readable tar shard (bad tar header at byte {at}: bad checksum)"
    assert not list(tmp_path.glob("o.tar*"))


def test_damaged_shards_are_listed_and_the_others_converted(tmp_path: Path) -> None:
    """Of 5 shards, one cut short and one with a bad header: the run stopped at the first of them
    (of 10,000 shards, at the first bad one), without a manifest. Now the others are converted, the
    damaged ones listed (summary, manifest's ``skipped``), exit status 1; a rerun once they are
    replaced converts only them."""
    files = {i: [(f"s{k:04d}.jpg", make_jpeg(k, plain=True)) for k in range(3 * i, 3 * i + 3)] for i in range(5)}
    (tmp_path / "in").mkdir()
    whole = {i: write_tar(tmp_path / "in" / f"s-{i}.tar", f) for i, f in files.items()}
    cut = tarfile.open(tmp_path / "in" / "s-1.tar").getmembers()[2].offset
    (tmp_path / "in" / "s-1.tar").write_bytes(whole[1][:cut])
    at = tarfile.open(tmp_path / "in" / "s-3.tar").getmembers()[1].offset
    bad = bytearray(whole[3])
    bad[at + 3] ^= 0x20  # the name changes, the checksum does not
    (tmp_path / "in" / "s-3.tar").write_bytes(bytes(bad))
    r = cli("restart", "in/s-{0..4}.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    one = f"in/s-1.tar: not a readable tar shard (it ends at byte {cut} without the end-of-archive marker)"
    three = f"in/s-3.tar: not a readable tar shard (bad tar header at byte {at}: bad checksum)"
    assert r.stdout.splitlines()[1:] == [
        "skipped 2 damaged input shards (not in the manifest):",
        f"  {one}",
        f"  {three}",
    ]
    assert r.stdout.startswith("5 shards (0 already done): 9 of 9 JPEGs restart-marked")
    assert sorted(r.stderr.splitlines()) == [
        f"WARNING skipped a damaged input shard: {one}",
        f"WARNING skipped a damaged input shard: {three}",
        "shardpipe restart: error: damaged input shards skipped: 2 (listed above and in the manifest); replace or "
        "repair them, then run the same command again to convert them",
    ]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["s-0.tar", "s-2.tar", "s-4.tar"] and manifest["samples"] == 9
    assert manifest["skipped"] == [
        {"name": "in/s-1.tar", "reason": one.split(": ", 1)[1]},
        {"name": "in/s-3.tar", "reason": three.split(": ", 1)[1]},
    ]
    assert sorted(os.listdir(tmp_path / "out")) == [
        "manifest.index", "manifest.json", "restart.json", "s-0.tar", "s-2.tar", "s-4.tar",
    ]  # fmt: skip
    assert cli("verify", "out/manifest.json", cwd=tmp_path).returncode == 0  # sizes, counts, sha256, index
    for i in (1, 3):
        write_tar(tmp_path / "in" / f"s-{i}.tar", files[i])  # replaced
    r = cli("restart", "in/s-{0..4}.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("5 shards (3 already done): 6 of 6 JPEGs restart-marked") and r.stderr == ""
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == [f"s-{i}.tar" for i in range(5)] and "skipped" not in manifest
    assert cli("verify", "out/manifest.json", cwd=tmp_path).returncode == 0
    got = {s["__key__"]: s["jpg"] for s in shardpipe.ShardDataset(str(tmp_path / "out" / "manifest.json"), decode=None)}
    before = {name[:-4]: data for f in files.values() for name, data in f}
    assert sorted(got) == sorted(before)
    for key, after in got.items():
        assert np.array_equal(pixels(after), pixels(before[key])) and restart_layout(after) is not None, key
    r = cli("restart", "--help", cwd=tmp_path)
    assert "(restart: 1 also when a damaged input shard was skipped: the others are converted)" in r.stdout


def test_a_run_whose_every_shard_is_damaged_fails_naming_them(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"s-{i}.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(CorruptShardError) as e:
        mark_restarts(str(tmp_path / "in" / "s-{0..1}.tar"), str(tmp_path / "out"))
    first = f"{tmp_path}/in/s-0.tar: not a readable tar shard"
    assert str(e.value).startswith(
        f"none of the 2 input shards could be read (each is logged above); the first: {first}"
    )
    assert sorted(os.listdir(tmp_path / "out")) == ["restart.json"]  # no manifest of no shards


def tgz(path: Path, files: list[tuple[str, bytes]]) -> tuple[bytes, int]:
    """``files`` as a .tgz; its bytes and the CRC32 of the tar inside."""
    tar = write_tar(path.with_suffix(".tar"), files)
    data = gzip.compress(tar, mtime=0)
    path.write_bytes(data)
    return data, zlib.crc32(tar)


def test_a_tgz_whose_crc_or_trailer_is_wrong_is_refused(tmp_path: Path) -> None:
    """tarfile's inflater checks no CRC: a corrupted .tgz became a new one with a valid CRC."""
    data, crc = tgz(tmp_path / "s.tgz", members(0, 4))
    bad = (crc ^ 1).to_bytes(4, "little")
    (tmp_path / "crc.tgz").write_bytes(data[:-8] + bad + data[-4:])
    with pytest.raises(CorruptShardError) as e:
        convert_shard(str(tmp_path / "crc.tgz"), str(tmp_path / "o.tgz"))
    assert str(e.value) == (
        f"{tmp_path / 'crc.tgz'}: not a readable tar shard (CRC check failed {hex(crc ^ 1)} != {hex(crc)})"
    )
    (tmp_path / "cut.tgz").write_bytes(data[:-8])
    with pytest.raises(CorruptShardError) as e:
        convert_shard(str(tmp_path / "cut.tgz"), str(tmp_path / "o.tgz"))
    assert str(e.value) == (
        f"{tmp_path / 'cut.tgz'}: not a readable tar shard (Compressed file ended before the end-of-stream marker "
        "was reached)"
    )
    assert not list(tmp_path.glob("o.tgz*"))
    jpegs, marked, bytes_in, _, _ = convert_shard(str(tmp_path / "s.tgz"), str(tmp_path / "o.tgz"))
    assert (jpegs, marked, bytes_in) == (4, 4, len(data))


# ---------------------------------------------------------------- pax size records


def test_pax_size_records_follow_the_new_sizes(tmp_path: Path) -> None:
    """A pax ``size`` record overrides the header's size: it was copied with the original JPEG's
    size, so the new shard could not be read (and, kept as complete, stopped every rerun)."""
    files = members(0, 3)
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "p-0.tar", files, pax=True)
    summary = mark_restarts(str(tmp_path / "in" / "p-0.tar"), str(tmp_path / "out"))
    assert (summary.jpegs, summary.marked) == (3, 3)
    with tarfile.open(tmp_path / "out" / "p-0.tar") as tar:
        for info, (name, before) in zip(tar, files, strict=True):
            after = tar.extractfile(info).read()
            assert info.name == name and info.size == len(after) and info.pax_headers["size"] == str(len(after))
            assert info.mtime == 1_700_000_000.5
            if name.endswith(".jpg"):
                assert len(after) != len(before) and np.array_equal(pixels(after), pixels(before))
            else:
                assert after == before
    got = {s["__key__"]: s for s in shardpipe.ShardDataset(str(tmp_path / "out" / "manifest.json"), decode=None)}
    assert sorted(got) == ["s0000", "s0001", "s0002"] and got["s0001"]["cls"] == b"1"


# ---------------------------------------------------------------- a shard list with duplicates


def test_a_shard_listed_twice_or_two_of_one_name_are_named(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_tar(tmp_path / folder / "s-0.tar", members(0, 1))
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        mark_restarts(f"{tmp_path}/a/s-0.tar::{tmp_path}/a/s-0.tar", str(out))
    assert str(e.value) == f"the shard list names {tmp_path}/a/s-0.tar twice: list each shard once"
    with pytest.raises(ValueError) as e:
        mark_restarts(f"{tmp_path}/a/s-0.tar::{tmp_path}/b/s-0.tar", str(out))
    assert str(e.value) == (
        f"the input shards {tmp_path}/a/s-0.tar and {tmp_path}/b/s-0.tar have the same file name; "
        f"they would both be written to {out}/s-0.tar"
    )
    assert not out.exists()  # nothing was made


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_names_the_output_and_a_rerun_finishes(tmp_path: Path) -> None:
    """A file size limit (EFBIG) stands in for a full disk (ENOSPC): the error named no file."""
    (tmp_path / "in").mkdir()
    for i in range(2):
        write_tar(tmp_path / "in" / f"s-{i}.tar", members(10 * i, 8))
    small = min((tmp_path / "in" / f"s-{i}.tar").stat().st_size for i in range(2)) // 2
    r = cli("restart", "in/s-{0..1}.tar", "-o", "out", "--workers", "1", "--no-progress", cwd=tmp_path, limit=small)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "shardpipe restart: error: [Errno 27] File too large: 'out/s-0.tar'\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["restart.json"]  # no partial shard, no manifest
    r = cli("restart", "in/s-{0..1}.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["s-0.tar", "s-1.tar"] and manifest["samples"] == 16
    for entry in manifest["shards"]:
        assert entry["sha256"] == hashlib.sha256((tmp_path / "out" / entry["name"]).read_bytes()).hexdigest()


def test_a_shard_is_on_disk_before_it_gets_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an fsync before the rename, a crash could leave the name with no bytes behind it,
    and a rerun skips a shard that exists."""
    write_tar(tmp_path / "s.tar", members(0, 2))
    synced: list[tuple[str, bool]] = []
    fsync = os.fsync

    def record(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "o.tar").exists()))
        fsync(fd)

    monkeypatch.setattr(restart_job.os, "fsync", record)
    convert_shard(str(tmp_path / "s.tar"), str(tmp_path / "o.tar"))
    assert synced == [(str(tmp_path / "o.tar.restart-tmp"), False)]
    assert (tmp_path / "o.tar").exists() and not (tmp_path / "o.tar.restart-tmp").exists()


def test_the_summary_escapes_control_characters_in_damaged_shard_names(tmp_path: Path) -> None:
    """A damaged input's name is printed with its control characters escaped (``\\x1b``), not sent
    to the terminal as an escape sequence."""
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "a.tar", [("s0.jpg", make_jpeg(0, plain=True))])
    whole = write_tar(tmp_path / "in" / "b\x1b[2J.tar", [("s1.jpg", make_jpeg(1, plain=True))])
    (tmp_path / "in" / "b\x1b[2J.tar").write_bytes(whole[:700])  # cut inside the image
    r = cli("restart", "in/*.tar", "-o", "out", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "\x1b" not in r.stdout
    assert r.stdout.splitlines()[1:] == [
        "skipped 1 damaged input shards (not in the manifest):",
        "  in/b\\x1b[2J.tar: not a readable tar shard (unexpected end of data)",
    ]
