"""Deferred member bytes: a shuffle window over plain local shards holds where each large
member is, and reads it when the sample is emitted (``shardpipe.io.deferred``)."""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path

import pytest

import shardpipe.dataset as dataset_module
from shardpipe.dataset import ShardDataset
from shardpipe.errors import ShardReadError, TruncatedShardError
from shardpipe.io import deferred
from shardpipe.io.deferred import DeferredBytes, SharedFile, materialize
from shardpipe.stages.shuffle import Shuffle

from .helpers import decoder_or_skip, make_samples, payload, small_jpeg, write_manifest_dataset, write_shards


def _samples(n: int) -> list[dict]:
    """Members above and below the deferral threshold: a big photo, a payload, a label."""
    out = make_samples(n)
    for i, s in enumerate(out):
        s["jpg"] = small_jpeg(i, (120, 90))
        s["bin"] = payload(800 + 97 * i, i)  # from 800 bytes (read) to ~4.6 KB (deferred)
    return out


def _read(source, shuffle: int, defer: bool, monkeypatch, **kw) -> list[dict]:
    monkeypatch.setattr(dataset_module, "DEFER_FROM", deferred.DEFER_FROM if defer else None)
    return list(ShardDataset(source, seed=3, shuffle=shuffle, decode=None, **kw))


def _window_values(ds: ShardDataset) -> list:
    pipeline = ds.build_pipeline()
    pipeline.reset(None)
    pipeline.next()  # fills the first window
    shuffle = next(s for s in pipeline.stages if isinstance(s, Shuffle))
    return [v for sample in shuffle._window if sample is not None for v in sample.values()]


def test_deferred_samples_are_the_bytes_read_directly_in_the_same_order(tmp_path: Path, monkeypatch) -> None:
    samples = _samples(60)
    (tmp_path / "plain").mkdir()
    plain = write_manifest_dataset(tmp_path / "plain", samples, [20, 25, 15])
    gz = write_shards(tmp_path, samples[:10], [10], compress="gz")  # a tar.gz shard: never deferred
    for source in (plain, [*gz, *[str(p) for p in sorted((tmp_path / "plain").glob("*.tar"))]]):
        got = _read(source, 25, True, monkeypatch)
        want = _read(source, 25, False, monkeypatch)
        assert [s["__key__"] for s in got] == [s["__key__"] for s in want]
        assert got == want  # every field, byte for byte
        assert all(type(v) is not DeferredBytes for s in got for v in s.values())
    by_key = {s["__key__"]: s for s in samples}
    for s in _read(plain, 25, True, monkeypatch):
        assert s["jpg"] == by_key[s["__key__"]]["jpg"] and s["bin"] == by_key[s["__key__"]]["bin"]


def test_the_window_holds_records_for_large_members_only(tmp_path: Path) -> None:
    manifest = write_manifest_dataset(tmp_path, _samples(30), [30])
    values = _window_values(ShardDataset(manifest, seed=0, shuffle=20, decode=None))
    deferred_sizes = [v.size for v in values if type(v) is DeferredBytes]
    read = [v for v in values if isinstance(v, bytes)]
    assert deferred_sizes and min(deferred_sizes) >= deferred.DEFER_FROM
    assert read and all(len(v) < deferred.DEFER_FROM for v in read)  # labels, small payloads
    # without a shuffle nothing waits in a buffer: members are read as they come
    no_shuffle = ShardDataset(manifest, shuffle=False, decode=None).build_pipeline()
    assert all(getattr(s, "defer_from", None) is None for s in no_shuffle.stages)


def test_a_resume_inside_a_window_of_deferred_members_continues_exactly(tmp_path: Path) -> None:
    manifest = write_manifest_dataset(tmp_path, _samples(50), [17, 33])
    whole = [s["__key__"] for s in ShardDataset(manifest, seed=5, shuffle=20, decode=None)]
    ds = ShardDataset(manifest, seed=5, shuffle=20, decode=None)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(27)]
    state = ds.state_dict()
    again = ShardDataset(manifest, seed=5, shuffle=20, decode=None)
    again.load_state_dict(state)
    assert head + [s["__key__"] for s in again] == whole


def test_a_shard_cut_short_after_its_members_were_deferred_is_an_error_naming_it(tmp_path: Path) -> None:
    manifest = write_manifest_dataset(tmp_path, _samples(12), [12])
    shard = next(tmp_path.glob("*.tar"))
    pipeline = ShardDataset(manifest, seed=0, shuffle=12, decode=None).build_pipeline()
    pipeline.reset(None)
    pipeline.next()  # the window holds records of the whole shard
    os.truncate(shard, 2048)
    with pytest.raises(TruncatedShardError, match=rf"shard {shard}.* changed while it was read: \d+ bytes at byte"):
        for _ in range(12):
            pipeline.next()


def test_a_truncated_shard_gives_the_same_error_deferred_or_not(tmp_path: Path, monkeypatch) -> None:
    write_manifest_dataset(tmp_path, _samples(10), [10])
    shard = next(tmp_path.glob("*.tar"))
    os.truncate(shard, shard.stat().st_size // 2 + 100)  # inside a member's data
    errors = []
    for defer in (True, False):
        with pytest.raises(TruncatedShardError) as e:
            _read([str(shard)], 5, defer, monkeypatch)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "truncated tar" in errors[0]


def test_open_files_stay_bounded_and_are_closed_when_the_records_go(tmp_path: Path, monkeypatch) -> None:
    gc.collect()
    before = SharedFile.live  # records another test's pipeline may still hold
    monkeypatch.setattr(deferred, "MAX_OPEN_FILES", before + 5)
    samples = _samples(60)
    urls = write_shards(tmp_path, samples, [2] * 30)  # 30 tiny shards under one 60-sample window
    fds_before = len(os.listdir("/proc/self/fd"))
    values = _window_values(ShardDataset(urls, seed=0, shuffle=60, decode=None))
    assert SharedFile.live == before + 5  # five shards deferred, the other 25 read into memory
    assert len({v.file for v in values if type(v) is DeferredBytes}) == 5
    assert sorted(s["__key__"] for s in ShardDataset(urls, seed=0, shuffle=60, decode=None)) == sorted(
        s["__key__"] for s in samples
    )
    del values
    gc.collect()
    assert SharedFile.live <= before
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_closing_the_pipeline_lets_go_of_the_window_and_its_files(tmp_path: Path) -> None:
    """A loop stopped early (the pass's pipeline closed) closes the shards its window recorded
    at once, not when a garbage collection finds the pipeline; its state stays resumable."""
    manifest = write_manifest_dataset(tmp_path, _samples(40), [20, 20])
    ds = ShardDataset(manifest, seed=4, shuffle=30, decode=None)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(5)]
    gc.collect()
    assert SharedFile.live >= 1
    with_files = SharedFile.live
    state = ds.state_dict()
    it.close()  # what breaking out of a for loop does to the pass's generator
    assert SharedFile.live < with_files
    again = ShardDataset(manifest, seed=4, shuffle=30, decode=None)
    again.load_state_dict(state)
    assert head + [s["__key__"] for s in again] == [
        s["__key__"] for s in ShardDataset(manifest, seed=4, shuffle=30, decode=None)
    ]


def test_materialize_reads_records_and_leaves_other_samples_alone(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4)
    fd = os.open(path, os.O_RDONLY)
    file = SharedFile(fd, str(path))
    sample = {"__key__": "k", "a": DeferredBytes(file, 10, 5), "b": b"xy", "c": 3}
    assert materialize(sample) == {"__key__": "k", "a": bytes(range(10, 15)), "b": b"xy", "c": 3}
    plain = {"__key__": "k", "b": b"xy"}
    assert materialize(plain) is plain
    assert repr(sample["a"]) == f"DeferredBytes({str(path)!r}, offset=10, size=5)"
    with pytest.raises(TruncatedShardError, match="changed while it was read: 10 bytes at byte 1020 are now 4"):
        DeferredBytes(file, 1020, 10).read()


def test_only_a_plain_buffered_reader_over_a_regular_file_is_read_by_records(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(bytes(range(256)) * 8)
    f = open(path, "rb")
    f.read(3)  # where the stream stands is kept for the raw file handed back (detached from ``f``)
    raw, shared = deferred.unbuffered_local(f, "a.tar")
    assert type(raw) is io.FileIO and raw.tell() == 3 and shared.url == "a.tar"
    assert os.pread(shared.fd, 4, 100) == bytes(range(100, 104))
    assert shared.fd != raw.fileno()  # a descriptor of its own: the stream's may be closed first
    raw.close()
    refused = [
        io.BytesIO(path.read_bytes()),  # no file at all (and no .raw to look at)
        open(path, "r+b"),  # a BufferedRandom: another kind of stream, even over a regular file
        io.BufferedReader(io.BytesIO(path.read_bytes())),  # a buffered reader over memory
    ]
    gz = tmp_path / "b.tar.gz"
    gz.write_bytes(b"\x1f\x8b" + bytes(100))
    refused.append(open(gz, "rb"))  # gzip: its offsets are not the file's
    read_end, write_end = os.pipe()
    os.write(write_end, b"x" * 10)
    refused.append(os.fdopen(read_end, "rb"))  # not a regular file
    try:
        for stream in refused:
            assert deferred.unbuffered_local(stream, "x") is None, stream
    finally:
        os.close(write_end)
        for stream in refused:
            stream.close()


def test_a_record_whose_file_cannot_be_read_names_the_shard_and_the_offset(tmp_path: Path) -> None:
    file = SharedFile(os.open(tmp_path, os.O_RDONLY), "shards/x.tar")  # a folder: pread fails (EISDIR)
    with pytest.raises(ShardReadError, match=r"^cannot read shard shards/x\.tar at byte 512: \[Errno 21\] "):
        DeferredBytes(file, 512, 10).read()


def test_each_shared_file_counts_once_while_it_is_open(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(b"x" * 10)
    gc.collect()
    before = SharedFile.live
    files = [SharedFile(os.open(path, os.O_RDONLY), str(path)) for _ in range(3)]
    assert SharedFile.live == before + 3
    fd = files[0].fd
    del files[0]
    assert SharedFile.live == before + 2
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its last record
    files.clear()
    assert SharedFile.live == before


PROGRAM = """
import gc, os, sys
import shardpipe

ds = shardpipe.ShardDataset({manifest!r}, shuffle=40, seed=2, **{options!r})
loader = shardpipe.ShardLoader(ds, num_workers=2, persistent_workers={persistent}, timeout=120)
fds, worker_files = [], []
for epoch in range(3):
    ds.set_epoch(epoch)
    keys = [s["__key__"] for s in loader]
    assert sorted(keys) == sorted(set(keys)), "a sample came twice"
    print("EPOCH", epoch, len(keys), len(set(keys)), keys[:3])
    gc.collect()  # a finished pass's tables may wait in a reference cycle: count what is really held
    fds.append(len(os.listdir("/proc/self/fd")))
    for w in getattr(loader._iterator, "_workers", []):  # persistent workers, between epochs
        with open(f"/proc/{{w.pid}}/maps") as maps:
            mapped = sum(".tar" in line for line in maps)
        shards = sum(os.path.realpath(f"/proc/{{w.pid}}/fd/" + fd).endswith(".tar") for fd in os.listdir(f"/proc/{{w.pid}}/fd"))
        worker_files.append((mapped, shards))
print("FDS", fds)
print("WORKER_FILES", worker_files)
"""


@pytest.mark.parametrize(
    "persistent, options",
    [
        (False, {"decode": None}),
        (True, {"decode": None}),
        (True, {"decoder": "native"}),  # images decoded in the workers
        (False, {"decoder": "native"}),
    ],
)
def test_a_program_reads_every_sample_each_epoch_through_deferred_windows_in_workers(
    tmp_path: Path, persistent: bool, options: dict
) -> None:
    """A user's script (no main guard) with 2 workers, 3 epochs: every sample once per epoch, the
    epochs' orders differ, and no descriptor piles up in the main process; persistent workers hold
    no shard open or mapped between epochs (the records let go of their files)."""
    import ast
    import subprocess
    import sys

    samples = _samples(90)
    manifest = write_manifest_dataset(tmp_path, samples, [30, 20, 40])
    script = tmp_path / "read_deferred.py"
    if options.get("decoder") == "native":
        decoder_or_skip("native")
    script.write_text(PROGRAM.format(manifest=manifest, persistent=persistent, options=options))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    epochs = [line.split(" ", 4) for line in run.stdout.splitlines() if line.startswith("EPOCH")]
    assert [(e[1], e[2], e[3]) for e in epochs] == [(str(i), "90", "90") for i in range(3)]
    assert len({e[4] for e in epochs}) == 3  # each epoch its own order
    fds = ast.literal_eval(next(line for line in run.stdout.splitlines() if line.startswith("FDS"))[4:])
    assert max(fds) - min(fds) <= 2, fds
    worker_files = ast.literal_eval(
        next(line for line in run.stdout.splitlines() if line.startswith("WORKER_FILES"))[13:]
    )
    assert worker_files == ([(0, 0)] * 6 if persistent else []), worker_files
