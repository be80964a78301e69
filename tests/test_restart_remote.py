"""``shardpipe restart`` on remote shards: inputs read from real SeaweedFS (S3), fake-gcs-server
and nginx; outputs written to S3 and GCS, each published only when complete, resumable."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import fsspec.core
import numpy as np
import pytest
from PIL import Image

from shardpipe import ShardDataset
from shardpipe.devtools.synth import CMYK_INDEX, GREY_INDEX, PROGRESSIVE_INDEX, make_jpeg

pytest.importorskip("shardpipe.image.decoders.native", reason="native extension not built")

from shardpipe.image.restart import restart_layout  # noqa: E402
from shardpipe.write.restart_job import mark_restarts  # noqa: E402

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[1]
INDICES = (1, 2, GREY_INDEX, CMYK_INDEX, PROGRESSIVE_INDEX)


def shard_bytes(start: int) -> tuple[bytes, dict[str, bytes]]:
    """A webdataset-style tar (Python's tarfile) of JPEGs of every kind with a ``.cls`` beside each."""
    members: dict[str, bytes] = {}
    for i in range(start, start + len(INDICES)):
        members[f"sample{i}.jpg"] = make_jpeg(INDICES[i % len(INDICES)])
        members[f"sample{i}.cls"] = str(i % 3).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), members


def read_object(url: str, options: dict) -> bytes:
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs.cat_file(path)


def exists(url: str, options: dict) -> bool:
    fs, path = fsspec.core.url_to_fs(url, **options)
    fs.invalidate_cache()
    return bool(fs.exists(path))


def check_converted(data: bytes, members: dict[str, bytes]) -> None:
    """Names and order kept; JPEGs decode to the same pixels (marked where they can be); the rest byte for byte."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert list(got) == list(members)
    for name, before in members.items():
        after = got[name]
        if not name.endswith(".jpg"):
            assert after == before, name
            continue
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(after))), np.asarray(Image.open(io.BytesIO(before))))
        index = INDICES[int(name[len("sample") : -len(".jpg")]) % len(INDICES)]
        if index == CMYK_INDEX:
            assert after == before, name
        else:
            assert restart_layout(after) is not None, name


@pytest.mark.parametrize("source, dest", [("s3", "gcs"), ("gcs", "s3")])
def test_remote_shards_convert_to_an_object_store_and_resume(source, dest, request, tmp_path: Path) -> None:
    src, out = request.getfixturevalue(f"{source}_store"), request.getfixturevalue(f"{dest}_store")
    prefix = f"restart-{uuid.uuid4().hex[:8]}"
    expected = {}
    for i in range(2):
        data, members = shard_bytes(10 * i)
        src.put(f"{prefix}/in/part-{i}.tar", data)
        expected[f"part-{i}.tar"] = members
    out_dir = out.url(f"{prefix}/out")
    summary = mark_restarts(
        src.url(f"{prefix}/in/part-{{0..1}}.tar"), out_dir,
        storage_options=src.options(), output_storage_options=out.options(),
    )  # fmt: skip
    assert (summary.shards, summary.skipped_shards, summary.jpegs, summary.marked) == (2, 0, 10, 8)
    assert summary.bytes_in == sum(len(shard_bytes(10 * i)[0]) for i in range(2))
    outputs = {name: read_object(f"{out_dir}/{name}", out.options()) for name in expected}
    assert summary.bytes_out == sum(map(len, outputs.values()))
    for name, members in expected.items():
        check_converted(outputs[name], members)
    manifest = json.loads(read_object(f"{out_dir}/manifest.json", out.options()))
    assert [s["name"] for s in manifest["shards"]] == ["part-0.tar", "part-1.tar"] and manifest["samples"] == 10
    assert exists(f"{out_dir}/{manifest['index']}", out.options())
    keys = {s["__key__"] for s in ShardDataset(f"{out_dir}/manifest.json", storage_options=out.options(), decode=None)}
    assert keys == {f"sample{i}" for i in [*range(5), *range(10, 15)]}

    # resume: part-0 is kept, the deleted part-1 is written again, the same bytes
    fs, path = fsspec.core.url_to_fs(f"{out_dir}/part-1.tar", **out.options())
    fs.rm(path)
    again = mark_restarts(
        src.url(f"{prefix}/in/part-{{0..1}}.tar"), out_dir,
        storage_options=src.options(), output_storage_options=out.options(),
    )  # fmt: skip
    assert (again.skipped_shards, again.jpegs) == (1, 5)
    assert read_object(f"{out_dir}/part-1.tar", out.options()) == outputs["part-1.tar"]


@pytest.mark.parametrize("dest", ["s3", "gcs"])
def test_a_shard_that_fails_midway_publishes_nothing(dest, request) -> None:
    out = request.getfixturevalue(f"{dest}_store")
    src = request.getfixturevalue("http_store")
    prefix = f"restart-{uuid.uuid4().hex[:8]}"
    good, members = shard_bytes(0)
    src.put(f"{prefix}/ok-0.tar", good)
    src.put(f"{prefix}/ok-1.tar", good[: len(good) // 2])  # ends inside a member
    out_dir = out.url(f"{prefix}/out")
    summary = mark_restarts(
        src.url(f"{prefix}/ok-{{0..1}}.tar"), out_dir, workers=1, output_storage_options=out.options()
    )  # fmt: skip
    assert summary.damaged == [(src.url(f"{prefix}/ok-1.tar"), "not a readable tar shard (unexpected end of data)")]
    assert not exists(f"{out_dir}/ok-1.tar", out.options())  # the upload was aborted, not published
    check_converted(read_object(f"{out_dir}/ok-0.tar", out.options()), members)  # the other one: converted
    manifest = json.loads(read_object(f"{out_dir}/manifest.json", out.options()))
    assert [s["name"] for s in manifest["shards"]] == ["ok-0.tar"]
    assert manifest["skipped"] == [{"name": src.url(f"{prefix}/ok-1.tar"), "reason": summary.damaged[0][1]}]


def test_command_reads_http_and_writes_s3_with_separate_options(http_store, s3_store) -> None:
    prefix = f"restart-{uuid.uuid4().hex[:8]}"
    data, members = shard_bytes(0)
    http_store.put(f"{prefix}/web-0.tar", data)
    out_dir = s3_store.url(f"{prefix}/out")
    code = "import sys; from shardpipe.cli import main; sys.exit(main())"
    argv = ["restart", http_store.url(f"{prefix}/web-{{0..0}}.tar"), "-o", out_dir, "--no-progress",
            "--output-storage-options", json.dumps(s3_store.options())]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 shards (0 already done): 4 of 5 JPEGs restart-marked" in r.stdout, r.stdout
    check_converted(read_object(f"{out_dir}/web-0.tar", s3_store.options()), members)
    assert exists(f"{out_dir}/manifest.json", s3_store.options())

    nowhere = json.dumps({**s3_store.options(), "endpoint_url": "http://127.0.0.1:1"})  # nothing listens there
    r = subprocess.run(
        [sys.executable, "-c", code, *argv[:-1], nowhere], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and f"shardpipe restart: error: cannot reach the output {out_dir}" in r.stderr
    bad = [*argv[:3], http_store.url(f"{prefix}/out"), "--no-progress"]
    r = subprocess.run([sys.executable, "-c", code, *bad], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "a web server is read-only" in r.stderr


def test_a_remote_manifest_converts_into_a_local_folder_with_its_class_names(s3_store, tmp_path: Path) -> None:
    from shardpipe import ShardWriter

    prefix = f"restart-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "made"
    jpegs = {f"k{i}": make_jpeg(INDICES[i % len(INDICES)]) for i in range(6)}
    with ShardWriter(str(local / "m-%03d.tar"), maxcount=4, metadata={"class_names": ["cat", "dog"]}) as w:
        for i, (key, data) in enumerate(jpegs.items()):
            w.write({"__key__": key, "jpg": data, "cls": i % 2})
    for path in sorted(local.iterdir()):
        s3_store.put(f"{prefix}/{path.name}", path.read_bytes())
    out = tmp_path / "out"
    summary = mark_restarts(s3_store.url(f"{prefix}/manifest.json"), str(out), storage_options=s3_store.options())
    assert (summary.shards, summary.jpegs, summary.marked) == (2, 6, 5)  # not the CMYK one
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["cat", "dog"] and manifest["samples"] == 6
    got = {s["__key__"]: s for s in ShardDataset(str(out / "manifest.json"), decode=None)}
    assert sorted(got) == sorted(jpegs) and all(int(got[k]["cls"]) == i % 2 for i, k in enumerate(jpegs))
    for key, before in jpegs.items():
        after = got[key]["jpg"]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(after))), np.asarray(Image.open(io.BytesIO(before))))
