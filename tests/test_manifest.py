"""The manifest module on its own: entries, totals, every validation error by message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardpipe.format.manifest import (
    FORMAT,
    build_manifest,
    load_manifest,
    read_manifest,
    shard_entry,
    write_manifest,
)

SHA = "0f" * 32


def test_entries_and_totals():
    assert shard_entry("a.tar", 3, 1024) == {"name": "a.tar", "samples": 3, "bytes": 1024}
    assert shard_entry("b.tar", "4", 2048.0, SHA) == {"name": "b.tar", "samples": 4, "bytes": 2048, "sha256": SHA}
    m = build_manifest([shard_entry("a.tar", 3, 1024), shard_entry("b.tar", 4, 2048)], {"class_names": ["x"]})
    assert m == {
        "format": FORMAT,
        "shards": [{"name": "a.tar", "samples": 3, "bytes": 1024}, {"name": "b.tar", "samples": 4, "bytes": 2048}],
        "samples": 7,
        "bytes": 3072,
        "class_names": ["x"],
    }
    assert build_manifest([]) == {"format": FORMAT, "shards": [], "samples": 0, "bytes": 0}


@pytest.mark.parametrize(
    "doc, message",
    [
        ("{", r"is not a manifest: invalid JSON: "),
        ("[]", r"is not a manifest: no 'shards' list$"),
        ('{"shards": {}}', r"is not a manifest: no 'shards' list$"),
        ('{"shards": ["a.tar"]}', r"is not a valid manifest: shard entry 0 has no 'name'$"),
        ('{"shards": [{"name": "a"}, {"samples": 1}]}', r"is not a valid manifest: shard entry 1 has no 'name'$"),
        ('{"shards": [{"name": "a", "samples": -1}]}', r"shard entry 0 \('a'\) has samples -1, not a non-negative"),
        ('{"shards": [{"name": "a", "samples": true}]}', r"shard entry 0 \('a'\) has samples True, not a"),
        ('{"shards": [{"name": "a", "samples": "3"}]}', r"shard entry 0 \('a'\) has samples '3', not a"),
        ('{"shards": [{"name": "a", "samples": 2.0}]}', r"shard entry 0 \('a'\) has samples 2.0, not a"),
        ('{"shards": [{"name": "a", "bytes": -5}]}', r"shard entry 0 \('a'\) has bytes -5, not a non-negative"),
        ('{"shards": [{"name": "a", "sha256": "xyz"}]}', r"shard entry 0 has sha256 'xyz', not 64 hex digits$"),
        ('{"shards": [{"name": "a", "sha256": "' + "0" * 65 + '"}]}', r"has sha256 '0{65}', not 64 hex digits$"),
        ('{"shards": [{"name": "a", "sha256": 7}]}', r"has sha256 7, not 64 hex digits$"),
    ],
)
def test_bad_manifests_are_named(tmp_path: Path, doc: str, message: str):
    path = tmp_path / "manifest.json"
    path.write_text(doc)
    with pytest.raises(ValueError, match=message) as info:
        read_manifest(str(path))
    assert str(path) in str(info.value)


def test_valid_edge_values_are_accepted(tmp_path: Path):
    path = tmp_path / "manifest.json"
    doc = {"shards": [{"name": "a", "samples": 0, "bytes": 0, "sha256": SHA.upper()}, {"name": "b", "samples": None}]}
    path.write_text(json.dumps(doc))
    assert read_manifest(str(path)) == doc


def test_load_resolves_names_and_the_index_beside_the_manifest(tmp_path: Path):
    manifest = build_manifest(
        [shard_entry("a.tar", 1, 10), shard_entry("s3://other/b.tar", 2, 20)], {"index": "m.index"}
    )
    url = write_manifest(str(tmp_path / "sub" / "manifest.json"), manifest)
    loaded = load_manifest(url)
    assert [s["url"] for s in loaded["shards"]] == [str(tmp_path / "sub" / "a.tar"), "s3://other/b.tar"]
    assert loaded["index_url"] == str(tmp_path / "sub" / "m.index")
    assert "index_url" not in load_manifest(write_manifest(str(tmp_path / "n.json"), build_manifest([])))


def test_written_bytes_are_sorted_and_reproducible(tmp_path: Path):
    url = write_manifest(str(tmp_path / "m.json"), {"shards": [], "b": 1, "a": 2})
    assert Path(url).read_text() == '{\n "a": 2,\n "b": 1,\n "shards": []\n}'


# -- where a manifest may point (check_name) ------------------------------------------------------
def _check(name, rule="inside"):
    from shardpipe.format.manifest import check_name

    return check_name(name, "m.json", "shard entry 3", rule)


def test_check_name_rules_by_exact_message():
    from shardpipe.format.manifest import ManifestPathError

    for rule in ("inside", "relative", "any"):
        assert _check("a/b.tar", rule) == "a/b.tar"
    assert _check("../x.tar", "any") == "../x.tar" and _check("/abs/x.tar", "any") == "/abs/x.tar"
    assert _check("/abs/x.tar") == "/abs/x.tar" and _check("s3://b/x.tar") == "s3://b/x.tar"
    leaves = (
        "manifest m.json: shard entry 3 names {!r}, which leaves the manifest's folder; "
        "pass manifest_paths='any' if you trust this manifest to point anywhere"
    )
    for name in ("../x.tar", "..", "a/../../x.tar", ".", "a/.."):
        with pytest.raises(ManifestPathError) as e:
            _check(name)
        assert str(e.value) == leaves.format(name), name
    outside = (
        "manifest m.json: shard entry 3 names {!r}, outside the manifest's folder (manifest_paths='relative' "
        "allows only names under it; 'inside' allows absolute paths and URLs)"
    )
    for name in ("/abs/x.tar", "s3://b/x.tar", "file:x.tar"):
        with pytest.raises(ManifestPathError) as e:
            _check(name, "relative")
        assert str(e.value) == outside.format(name), name
    with pytest.raises(ValueError) as e:
        _check("a.tar", "anywhere")
    assert str(e.value) == "manifest_paths must be one of ('inside', 'relative', 'any'), not 'anywhere'"


def test_load_manifest_checks_each_name_with_its_place_and_rule(tmp_path: Path):
    from shardpipe.format.manifest import ManifestPathError, load_manifest

    path = tmp_path / "manifest.json"

    def write(shards, **extra):
        path.write_text(json.dumps({"shards": [{"name": n, "samples": 1, "bytes": 1} for n in shards], **extra}))

    write(["a.tar", "../b.tar"])
    with pytest.raises(ManifestPathError) as e:
        load_manifest(str(path))
    assert str(e.value).startswith(f"manifest {path}: shard entry 1 names '../b.tar', which leaves")
    assert load_manifest(str(path), manifest_paths="any")["shards"][1]["url"] == str(tmp_path / "../b.tar")
    write(["a.tar", "/abs/b.tar"])
    assert load_manifest(str(path))["shards"][1]["url"] == "/abs/b.tar"
    with pytest.raises(ManifestPathError, match=r"shard entry 1 names '/abs/b.tar', outside the manifest's folder"):
        load_manifest(str(path), manifest_paths="relative")
    write(["a.tar"], index="../idx.npy")
    with pytest.raises(ManifestPathError) as e:
        load_manifest(str(path))
    assert str(e.value).startswith(f"manifest {path}: the index names '../idx.npy', which leaves")
