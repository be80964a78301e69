"""ShardWriter: rollover limits, manifest, atomic shards, input validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import shardpipe
from shardpipe import ShardWriter

from .helpers import make_samples, run_in_group


def test_maxcount_and_manifest(tmp_path: Path):
    samples = make_samples(23)
    with ShardWriter(str(tmp_path / "out-%05d.tar"), maxcount=10, metadata={"class_names": ["a", "b"]}) as w:
        for s in samples:
            w.write(s)
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert names == ["out-00000.tar", "out-00001.tar", "out-00002.tar"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [10, 10, 3]
    assert manifest["samples"] == 23 and manifest["class_names"] == ["a", "b"]
    for entry in manifest["shards"]:
        data = (tmp_path / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compress", [None, "gz"])
def test_maxsize_bounds_every_shard(tmp_path: Path, compress):
    samples = make_samples(30)
    limit = 12_000
    name = "s-{:04d}.tar.gz" if compress else "s-{:04d}.tar"
    with ShardWriter(str(tmp_path / name), maxsize=limit, compress=compress) as w:
        for s in samples:
            w.write(s)
    shards = json.loads((tmp_path / "manifest.json").read_text())["shards"]
    assert len(shards) > 2 and sum(s["samples"] for s in shards) == 30
    # a shard closes before the sample that would start past the limit: bounded by limit + one sample
    biggest = max(len(s["jpg"]) for s in samples) + 3 * 1536 + 10240  # jpg bytes are stored as they are
    assert all(s["bytes"] <= limit + biggest for s in shards)
    keys = [s["__key__"] for s in shardpipe.ShardDataset(str(tmp_path / "manifest.json"), decode=None)]
    assert keys == [s["__key__"] for s in samples]


def test_failure_leaves_no_partial_shard(tmp_path: Path):
    samples = make_samples(7)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(str(tmp_path / "x-%03d.tar"), maxcount=4) as w:
            for i, s in enumerate(samples):
                if i == 6:
                    raise RuntimeError("boom")
                w.write(s)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000.tar"]  # complete shard only, no temp, no manifest


@pytest.mark.parametrize(
    "sample, kind, error",
    [
        ({"jpg": b"x"}, ValueError, "needs a string '__key__'"),
        ({"__key__": 7, "jpg": b"x"}, ValueError, "needs a string '__key__', got 7"),
        ({"__key__": "a.b", "jpg": b"x"}, ValueError, "dot in its basename"),
        ({"__key__": "k"}, ValueError, "has no fields to write"),
        ({"__key__": "k", "JPG": b"x"}, ValueError, "field name 'JPG' of sample 'k' must be a lower-case extension"),
        ({"__key__": "k", "x/jpg": b"x"}, ValueError, "field name 'x/jpg' of sample 'k' .*without '/'"),
        ({"__key__": "k", "npy": 1.5}, TypeError, "cannot write field 'npy' of type float"),
        ({"__key__": "k", "jpg": None}, TypeError, "cannot write field 'jpg' of type NoneType"),
    ],
)
def test_invalid_samples_are_rejected(tmp_path: Path, sample, kind, error):
    with pytest.raises(kind, match=error):
        with ShardWriter(str(tmp_path / "bad-%03d.tar")) as w:
            w.write(sample)


def test_pattern_needs_a_placeholder(tmp_path: Path):
    with pytest.raises(ValueError, match="needs a %d or"):
        ShardWriter(str(tmp_path / "fixed.tar"))


def test_tar_bytes_identical_to_tarfile_output(tmp_path: Path):
    import io
    import tarfile

    samples = make_samples(9)
    samples[2]["__key__"] = "deep/" + "d" * 120 + "/k"  # needs a pax header
    samples[3]["txt"] = "ünïcode"
    buf = io.BytesIO()
    tw = shardpipe.TarWriter(buf)
    for s in samples:
        tw.write(s)
    tw.close()
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for s in samples:
            for ext, value in s.items():
                if ext.startswith("__"):
                    continue
                data = _stored_bytes(ext, value)
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o444, 0, "", ""
                tf.addfile(info, io.BytesIO(data))
    assert buf.getvalue() == ref.getvalue()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.extractfile("sample00001.cls").read() == b"1"
        assert tf.extractfile("sample00001.json").read() == b'{"index": 1}'
        assert tf.extractfile("sample00003.txt").read() == b"\xc3\xbcn\xc3\xafcode"


def _stored_bytes(ext: str, value) -> bytes:
    """What the webdataset layout stores for a field, written out independently of the writer."""
    if ext == "json":
        return json.dumps(value, sort_keys=True).encode()
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def test_a_failing_field_writes_no_part_of_its_sample(tmp_path: Path):
    import io
    import tarfile

    buf = io.BytesIO()
    tw = shardpipe.TarWriter(buf)
    tw.write({"__key__": "a", "jpg": b"x"})
    with pytest.raises(TypeError, match="cannot write field 'npy' of type float"):
        tw.write({"__key__": "b", "jpg": b"y", "npy": 1.5})  # jpg is fine, npy is not
    with pytest.raises(ValueError, match="field name 'x/jpg' of sample 'b'"):
        tw.write({"__key__": "b", "cls": 1, "x/jpg": b"y"})
    tw.write({"__key__": "c", "jpg": b"z"})
    tw.close()
    assert tw.samples == 2
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()] == [("a.jpg", b"x"), ("c.jpg", b"z")]


def test_disk_full_while_writing_leaves_no_partial_shard(tmp_path: Path):
    """A write that fails mid-shard (here: a file-size limit, as a full disk would) raises
    the OS error and leaves neither a shard under its final name nor a temporary file."""
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        import shardpipe
        from tests.helpers import make_samples
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            with shardpipe.ShardWriter({str(tmp_path / "full-%03d.tar")!r}, maxcount=1000) as w:
                for s in make_samples(200):
                    w.write(s)
        except OSError as e:
            print("OSError", e.errno)
            sys.exit(3)
        """
    )
    result = run_in_group([sys.executable, "-c", script], timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "OSError 27" in result.stdout  # EFBIG: what a full disk (ENOSPC) looks like to the writer
    assert list(tmp_path.iterdir()) == []
