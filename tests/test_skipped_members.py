"""Links and old GNU sparse files in a shard are skipped (only regular files are members), and
``shardpipe index`` and ``verify`` say so once per shard, with how many of each kind."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from shardpipe import ShardDataset
from shardpipe.devtools.synth import make_jpeg

from .helpers import strict_cli

REPO = Path(__file__).resolve().parents[1]
NOTE = "only regular files are read as members of samples (streaming too)"


def tar_with_links(path: Path, links: int, symlinks: int, sparse: int) -> Path:
    """Two images (``<stem>-0.jpg``, ``-1``), then hard links and symlinks to the first and GNU sparse files."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(2):
            data = make_jpeg(i, plain=True)
            info = tarfile.TarInfo(f"{path.stem}-{i}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        kinds = [tarfile.LNKTYPE] * links + [tarfile.SYMTYPE] * symlinks
        for n, kind in enumerate(kinds, start=2):
            info = tarfile.TarInfo(f"{path.stem}-{n}.jpg")
            info.type, info.linkname = kind, f"{path.stem}-0.jpg"
            tf.addfile(info)
        for n in range(2 + len(kinds), 2 + len(kinds) + sparse):
            data = make_jpeg(n, plain=True)
            info = tarfile.TarInfo(f"{path.stem}-{n}.jpg")
            info.type, info.size = tarfile.GNUTYPE_SPARSE, len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING ")]


def test_index_and_verify_name_each_shard_with_skipped_links(tmp_path: Path):
    """Both said nothing: 6 members in a shard, 2 samples indexed and verified, without a word why."""
    tar_with_links(tmp_path / "s-0.tar", links=1, symlinks=2, sparse=1)
    tar_with_links(tmp_path / "s-1.tar", links=0, symlinks=1, sparse=0)
    tar_with_links(tmp_path / "s-2.tar", links=0, symlinks=0, sparse=0)
    index = strict_cli("index", "s-{0..2}.tar", "-o", "manifest.json", "--no-progress", cwd=tmp_path)
    assert index.returncode == 0, index.stderr
    expected = [
        f"WARNING shard s-0.tar: skipped 1 GNU sparse file, 1 hard link and 2 symbolic links: {NOTE}",
        f"WARNING shard s-1.tar: skipped 1 symbolic link: {NOTE}",
    ]
    assert warnings(index.stderr) == expected
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 2]  # what is indexed is unchanged
    keys = [s["__key__"] for s in ShardDataset(str(tmp_path / "manifest.json"), decode=None)]
    assert keys == [f"s-{s}-{i}" for s in range(3) for i in range(2)]  # and streaming reads just these

    verify = strict_cli("verify", "manifest.json", "--json", cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr  # skipped links are not a problem in the data
    assert warnings(verify.stderr) == expected
    report = json.loads(verify.stdout)
    assert [s["skipped"] for s in report["shards"]] == [
        {"GNU sparse file": 1, "hard link": 1, "symbolic link": 2},
        {"symbolic link": 1},
        {},
    ]
    parallel = strict_cli("verify", "manifest.json", "--workers", "2", cwd=tmp_path)
    assert parallel.returncode == 0 and warnings(parallel.stderr) == expected, parallel.stderr


def test_inspect_names_each_shard_with_skipped_links_as_index_and_verify_do(tmp_path: Path):
    """inspect said nothing of them: 2 samples in a shard of 6 members, as if the links were not there."""
    tar_with_links(tmp_path / "s-0.tar", links=1, symlinks=2, sparse=1)
    tar_with_links(tmp_path / "s-1.tar", links=0, symlinks=0, sparse=0)
    expected = [
        f"WARNING shard {tmp_path / 's-0.tar'}: skipped 1 GNU sparse file, 1 hard link and 2 symbolic links: {NOTE}"
    ]
    table = strict_cli("inspect", str(tmp_path / "s-{0..1}.tar"))
    assert table.returncode == 0, table.stderr
    assert warnings(table.stderr) == expected
    assert "total: 2 shards, 4 samples" in table.stdout
    report = strict_cli("inspect", str(tmp_path / "s-{0..1}.tar"), "--json")
    assert report.returncode == 0 and warnings(report.stderr) == expected, report.stderr
    shards = json.loads(report.stdout)
    assert [s["skipped"] for s in shards["shards"]] == [
        {"GNU sparse file": 1, "hard link": 1, "symbolic link": 2},
        {},
    ]
    assert shards["total"]["skipped"] == {"GNU sparse file": 1, "hard link": 1, "symbolic link": 2}


STREAM = """
import json, logging, sys
from shardpipe import ShardDataset, ShardLoader

logging.basicConfig(format="%(levelname)s %(message)s")

ds = ShardDataset(sys.argv[1], decode=None, batch_size=1, epoch_policy="drop")
loader = ShardLoader(ds, num_workers=2)
for epoch in range(2):
    keys = sorted(k for b in loader for k in b["__key__"])
    print(json.dumps({"keys": keys, "skipped": ds.stats.skipped()}), flush=True)
"""


def test_streaming_counts_skipped_links_in_its_stats_and_warns_once_per_shard_and_epoch(tmp_path: Path):
    """ShardDataset stepped over them without a word. s-1's symbolic link lies between its two samples, which
    the two DataLoader workers read one each: it is counted once (by the worker whose range it ends)."""
    tar_with_links(tmp_path / "s-0.tar", links=1, symlinks=0, sparse=1)
    with tarfile.open(tmp_path / "s-1.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for name in ("s-1-0.jpg", "link", "s-1-1.jpg"):
            info = tarfile.TarInfo(name if name != "link" else "s-1-9.jpg")
            if name == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "s-1-0.jpg"
                tf.addfile(info)
                continue
            data = make_jpeg(len(name), plain=True)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    tar_with_links(tmp_path / "s-2.tar", links=0, symlinks=0, sparse=0)
    index = strict_cli("index", "s-{0..2}.tar", "-o", "manifest.json", "--no-progress", cwd=tmp_path)
    assert index.returncode == 0, index.stderr
    run = subprocess.run(
        [sys.executable, "-c", STREAM, str(tmp_path / "manifest.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    epochs = [json.loads(line) for line in run.stdout.splitlines()]
    keys = sorted(f"s-{s}-{i}" for s in range(3) for i in range(2))
    once = {"GNU sparse file": 1, "hard link": 1, "symbolic link": 1}
    assert epochs == [{"keys": keys, "skipped": once}, {"keys": keys, "skipped": {k: 2 * n for k, n in once.items()}}]
    shards = {s: tmp_path / f"s-{s}.tar" for s in range(2)}
    assert sorted(warnings(run.stderr)) == 2 * [  # once a shard in each epoch
        f"WARNING shard {shards[0]}: skipped 1 GNU sparse file and 1 hard link: {NOTE}"
    ] + 2 * [f"WARNING shard {shards[1]}: skipped 1 symbolic link: {NOTE}"]


BLOCK = """
import json, logging, sys
from shardpipe import IndexedDataset, ShardDataset, ShardLoader

logging.basicConfig(format="%(levelname)s %(message)s")

ds = ShardDataset(sys.argv[1], decode=None, batch_size=1, shuffle=True, shuffle_algo="block")
loader = ShardLoader(ds, num_workers=2)
for epoch in range(2):
    ds.set_epoch(epoch)
    keys = sorted(k for b in loader for k in b["__key__"])
    print(json.dumps({"keys": keys, "skipped": ds.stats.skipped()}), flush=True)
print("indexed", flush=True)
indexed = IndexedDataset(sys.argv[1], decode=None)
for epoch in (0, 0, 1):
    indexed.set_epoch(epoch)
    assert len([indexed[i] for i in range(len(indexed))]) == 6
"""


def test_the_block_shuffle_and_indexed_dataset_count_links_inside_samples(tmp_path: Path):
    """The block shuffle stepped over a symbolic link and a sparse file among a sample's members without a
    word: stats.skipped() stayed empty (streaming counted them) and nothing was logged. Now it counts them as
    streaming does and warns once per shard and epoch; IndexedDataset (no stats) warns the same way."""
    for s, kind in enumerate((tarfile.SYMTYPE, tarfile.GNUTYPE_SPARSE)):
        with tarfile.open(tmp_path / f"s-{s}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for k in range(3):
                data = make_jpeg(k, plain=True)
                info = tarfile.TarInfo(f"s{s}k{k}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                if k == 1:  # between the sample's own members: inside its indexed byte range
                    info = tarfile.TarInfo(f"s{s}k{k}.png")
                    info.type, info.linkname, info.size = kind, f"s{s}k{k}.jpg", len(data) * (kind != tarfile.SYMTYPE)
                    tf.addfile(info, io.BytesIO(data) if info.size else None)
                info = tarfile.TarInfo(f"s{s}k{k}.cls")
                info.size = 1
                tf.addfile(info, io.BytesIO(b"1"))
    index = strict_cli("index", "s-{0..1}.tar", "-o", "manifest.json", "--no-progress", cwd=tmp_path)
    assert index.returncode == 0, index.stderr
    streamed = ShardDataset(str(tmp_path / "manifest.json"), decode=None)
    assert len(list(streamed)) == 6 and streamed.stats.skipped() == {"GNU sparse file": 1, "symbolic link": 1}
    run = subprocess.run(
        [sys.executable, "-c", BLOCK, str(tmp_path / "manifest.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == "indexed"
    epochs = [json.loads(line) for line in lines[:-1]]
    keys = sorted(f"s{s}k{k}" for s in range(2) for k in range(3))
    once = {"GNU sparse file": 1, "symbolic link": 1}
    assert epochs == [{"keys": keys, "skipped": once}, {"keys": keys, "skipped": {k: 2 * n for k, n in once.items()}}]
    expected = [
        f"WARNING shard {tmp_path / 's-0.tar'}: skipped 1 symbolic link: {NOTE}",
        f"WARNING shard {tmp_path / 's-1.tar'}: skipped 1 GNU sparse file: {NOTE}",
    ]
    # once a shard and epoch: two epochs of the block shuffle, then IndexedDataset's epochs 0 (read twice) and 1
    assert sorted(warnings(run.stderr)) == sorted(4 * expected)
