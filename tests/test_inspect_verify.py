"""``shardpipe inspect`` and ``shardpipe verify`` on good shards and on damaged ones."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from shardpipe import ShardWriter
from shardpipe.cli import main
from shardpipe.cli.inspect import inspect_shards
from shardpipe.cli.verify import verify_shards
from shardpipe.devtools.synth import make_jpeg
from shardpipe.write.job import write_shards


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[bytes]]:
    """21 photo-like JPEGs (with grey/CMYK/progressive ones) in 3 shards of a manifest."""
    root = tmp_path_factory.mktemp("shards")
    jpegs = [make_jpeg(i) for i in range(21)]
    src = root / "src"
    src.mkdir()
    for i, data in enumerate(jpegs):
        (src / f"im{i:02d}.jpg").write_bytes(data)
    (src / "im05.cls").write_text("5")
    write_shards(src, str(root / "out" / "d-%03d.tar"), maxcount=8)
    return root / "out", jpegs


def copy_of(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    dst.mkdir()
    for p in folder.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_inspect_reports_counts_extensions_sizes_and_keys(written, capsys):
    out, jpegs = written
    report = inspect_shards(str(out / "manifest.json"), first=3)
    sizes = [Image.open(io.BytesIO(d)).size for d in jpegs]
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    total = report["total"]
    assert total["shards"] == 3 and total["samples"] == 21
    assert total["extensions"] == {"cls": 1, "jpg": 21}
    assert total["width"] == {"min": widths[0], "median": widths[10], "max": widths[-1]}
    assert total["height"] == {"min": heights[0], "median": heights[10], "max": heights[-1]}
    assert total["first_keys"] == ["im00", "im01", "im02"]
    assert [s["samples"] for s in report["shards"]] == [8, 8, 5]
    assert [s["first_keys"][0] for s in report["shards"]] == ["im00", "im08", "im16"]
    assert total["bytes"] == sum(p.stat().st_size for p in out.glob("*.tar"))

    assert main(["inspect", str(out / "d-{000..002}.tar")]) == 0
    text = capsys.readouterr().out
    assert "total: 3 shards, 21 samples" in text and "extensions: cls 1, jpg 21" in text
    assert f"image width  min/median/max: {widths[0]}/{widths[10]}/{widths[-1]}" in text
    assert main(["inspect", str(out / "manifest.json"), "--json", "--keys", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["first_keys"] == ["im00"]


def test_verify_good_shards(written, capsys):
    out, _ = written
    assert main(["verify", str(out / "manifest.json"), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "verified 3 shards: 21 samples, 21 images decoded, no problems" in text
    assert main(["verify", str(out / "d-{000..002}.tar"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [] and report["samples"] == 21


def test_verify_finds_a_corrupt_member(tmp_path: Path):
    good = make_jpeg(1)
    broken = good[:2000] + bytes(range(256)) * 40 + good[2000 + 256 * 40 :]  # header and end marker intact
    with ShardWriter(str(tmp_path / "c-%02d.tar"), maxcount=2) as w:
        w.write({"__key__": "a", "jpg": good, "cls": 1})
        w.write({"__key__": "b", "jpg": broken, "cls": 2})
        w.write({"__key__": "c", "jpg": good, "cls": b"not a number"})
        w.write({"__key__": "d", "jpg": good, "json": b"{oops"})
    report = verify_shards(str(tmp_path / "manifest.json"))
    c00, c01 = (str(tmp_path / n) for n in ("c-00.tar", "c-01.tar"))
    assert report["problems"] == [
        f"{c00}: corrupt member b.jpg: DecodeError: corrupt JPEG data: broken data stream when reading image file",
        f"{c01}: corrupt member c.cls: ValueError: invalid literal for int() with base 10: 'not a number'",
        f"{c01}: corrupt member d.json: JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ]
    # inspect reads headers only: the same shards look fine to it
    assert inspect_shards(str(tmp_path / "manifest.json"))["total"]["samples"] == 4


def test_verify_cli_bad_checksum_count_and_truncation(written, tmp_path: Path, capsys):
    out, _ = written
    bad = copy_of(out, tmp_path)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    manifest["shards"][1]["samples"] = 9
    (bad / "manifest.json").write_text(json.dumps(manifest))
    data = (bad / "d-002.tar").read_bytes()
    (bad / "d-002.tar").write_bytes(data[: len(data) // 2])

    assert main(["verify", str(bad / "manifest.json")]) == 1
    text = capsys.readouterr().out
    assert f"FAIL {bad / 'd-000.tar'}" in text and f"ok   {bad / 'd-001.tar'}" not in text
    assert f"{bad / 'd-000.tar'}: checksum mismatch: sha256 " in text and f"manifest says {'0' * 64}" in text
    assert f"{bad / 'd-001.tar'}: count mismatch: 8 samples, manifest says 9" in text
    assert (
        f"{bad / 'd-002.tar'}: truncated or damaged shard: truncated tar: shard {bad / 'd-002.tar'} ends inside member"
        in text
    )
    assert "count mismatch: 17 samples in the shards, manifest total says 21" in text
    assert "problems in 3 shards" in text

    assert main(["inspect", str(bad / "manifest.json")]) == 1
    assert "ERROR: truncated tar" in capsys.readouterr().out


def test_verify_missing_shard_and_duplicate_keys(written, tmp_path: Path, capsys):
    out, _ = written
    bad = copy_of(out, tmp_path)
    (bad / "d-001.tar").unlink()
    assert main(["verify", str(bad / "manifest.json")]) == 1
    assert f"{bad / 'd-001.tar'}: missing shard: cannot open: shard not found" in capsys.readouterr().out
    jpg = make_jpeg(3)
    with ShardWriter(str(tmp_path / "dup-%d.tar"), maxcount=2) as w:
        for key in ("x", "y", "x"):
            w.write({"__key__": key, "jpg": jpg})
    report = verify_shards(str(tmp_path / "manifest.json"))
    assert report["problems"] == [f"duplicate key 'x' in {tmp_path / 'dup-0.tar'} and {tmp_path / 'dup-1.tar'}"]


def test_cli_errors(tmp_path: Path, capsys):
    assert main(["verify", str(tmp_path / "none.json")]) == 2
    assert "shardpipe verify: error:" in capsys.readouterr().err


def _tar_of(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar with exactly ``members`` in this order (ShardWriter cannot write duplicates)."""
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_verify_and_inspect_report_a_duplicated_member(tmp_path: Path, capsys):
    jpg = make_jpeg(2)
    shard = tmp_path / "dup.tar"
    _tar_of(
        shard,
        [("a.jpg", jpg), ("a.cls", b"1"), ("b.jpg", jpg), ("b.cls", b"2"), ("b.jpg", jpg[:100]), ("c.jpg", jpg)],
    )
    # the pipeline's own stages refuse sample 'b' (counted under on_error), so 2 samples come out
    refused = f"sample 'b' in shard {shard} has two 'jpg' members"
    problem = f"{shard}: {refused}"
    report = verify_shards(str(shard))
    assert report["problems"] == [problem] and report["samples"] == 2
    assert main(["verify", str(shard)]) == 1
    text = capsys.readouterr().out
    assert f"FAIL {shard}: 2 samples" in text and f"  {problem}" in text

    summary = inspect_shards(str(shard))["shards"][0]
    assert summary["problems"] == [refused] and summary["extensions"] == {"cls": 1, "jpg": 2}
    assert summary["first_keys"] == ["a", "c"]
    assert main(["inspect", str(shard)]) == 1
    assert f"PROBLEM: {refused}" in capsys.readouterr().out


def test_verify_checks_id_fields_as_integers_like_the_pipeline(tmp_path: Path):
    shard = tmp_path / "ids.tar"
    _tar_of(shard, [("a.jpg", make_jpeg(1)), ("a.id", b"17"), ("b.jpg", make_jpeg(2)), ("b.id", b"seventeen")])
    assert verify_shards(str(shard))["problems"] == [
        f"{shard}: corrupt member b.id: ValueError: invalid literal for int() with base 10: 'seventeen'"
    ]
