"""What a manifest may point to: relative names stay under its folder unless ``manifest_paths``
allows more (``inside``: absolute paths and URLs too; ``relative``: nothing else; ``any``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardpipe import IndexedDataset, ShardDataset, index_shards
from shardpipe.format.manifest import ManifestPathError, load_manifest

from .helpers import make_samples, write_shards


@pytest.fixture
def layout(tmp_path) -> dict:
    """data/manifest.json (its own shard data/a.tar) and a shard outside data/: secret/b.tar."""
    (tmp_path / "data").mkdir()
    (tmp_path / "secret").mkdir()
    inside = write_shards(tmp_path / "data", make_samples(3, prefix="in"), [3])[0]
    outside = write_shards(tmp_path / "secret", make_samples(2, prefix="out"), [2])[0]
    return {"root": tmp_path, "inside": inside, "outside": outside}


def manifest_naming(layout: dict, *names: str, index: str | None = None) -> str:
    def entry(name: str) -> dict:
        path = layout["outside"] if "secret" in name else layout["inside"]
        return {"name": name, "samples": 2 if "secret" in name else 3, "bytes": Path(path).stat().st_size}

    shards = [entry(n) for n in names]
    doc = {"format": "shardpipe/1", "shards": shards, "samples": 0, "bytes": 0, **({"index": index} if index else {})}
    path = layout["root"] / "data" / "manifest.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize(
    "name", ["../secret/shard-0000.tar", "./../secret/shard-0000.tar", "x/../../secret/shard-0000.tar", ".."]
)
def test_a_relative_name_leaving_the_folder_is_refused_by_default(layout, name):
    manifest = manifest_naming(layout, "shard-0000.tar", name)
    with pytest.raises(ManifestPathError) as info:
        ShardDataset(manifest, decode=None)
    assert f"shard entry 1 names {name!r}, which leaves the manifest's folder" in str(info.value)
    assert "manifest_paths='any'" in str(info.value)


def test_manifest_paths_any_allows_the_escape(layout):
    manifest = manifest_naming(layout, "shard-0000.tar", "../secret/shard-0000.tar")
    keys = [s["__key__"] for s in ShardDataset(manifest, decode=None, manifest_paths="any")]
    assert keys == ["in00000", "in00001", "in00002", "out00000", "out00001"]


@pytest.mark.parametrize("form", ["absolute", "file-url"])
def test_absolute_names_are_allowed_by_default_and_refused_under_relative(layout, form):
    name = layout["outside"] if form == "absolute" else Path(layout["outside"]).as_uri()
    manifest = manifest_naming(layout, "shard-0000.tar", name)
    keys = [s["__key__"] for s in ShardDataset(manifest, decode=None)]
    assert keys[-2:] == ["out00000", "out00001"]
    with pytest.raises(ManifestPathError, match="outside the manifest's folder \\(manifest_paths='relative'"):
        ShardDataset(manifest, decode=None, manifest_paths="relative")


def test_names_under_the_folder_pass_every_rule(layout):
    manifest = manifest_naming(layout, "shard-0000.tar", "./shard-0000.tar")
    for rule in ("inside", "relative", "any"):
        assert len(list(ShardDataset(manifest, decode=None, manifest_paths=rule))) == 6


@pytest.mark.parametrize("name", [7, "", None, ["a"], "a\0b"])
def test_a_name_that_is_not_a_file_name_is_refused(layout, name):
    path = Path(manifest_naming(layout, "shard-0000.tar"))
    doc = json.loads(path.read_text())
    doc["shards"][0]["name"] = name
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestPathError, match="shard entry 0 has name .*, not a file name"):
        load_manifest(str(path))


def test_the_index_name_follows_the_rule_too(layout):
    out = layout["root"] / "data" / "manifest.json"
    index_shards([layout["inside"]], str(out), workers=1)
    doc = json.loads(out.read_text())
    (layout["root"] / "manifest.index").write_bytes((layout["root"] / "data" / doc["index"]).read_bytes())
    doc["index"] = "../manifest.index"
    out.write_text(json.dumps(doc))
    with pytest.raises(ManifestPathError, match="the index names '../manifest.index', which leaves"):
        IndexedDataset(str(out), decode=None)
    assert len(IndexedDataset(str(out), decode=None, manifest_paths="any")) == 3


def test_an_unknown_rule_is_a_usage_error(layout):
    manifest = manifest_naming(layout, "shard-0000.tar")
    with pytest.raises(ValueError, match="manifest_paths must be 'inside', 'relative' or 'any', not 'all'"):
        ShardDataset(manifest, manifest_paths="all")
