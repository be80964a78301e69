"""The manifest: one JSON file beside the shards, the single description of a dataset.

Schema (``"format": "shardpipe/1"``)::

    {"format": "shardpipe/1",
     "shards": [{"name": "train-000000.tar", "samples": 10000, "bytes": 1073741312,
                 "sha256": "..."}, ...],        # sha256 optional (``shardpipe index`` without --sha256)
     "samples": <total>, "bytes": <total>,
     "index": "manifest.index",                 # optional: the per-sample offset sidecar (format/index.py)
     ...}                                       # writer metadata: class_names, options, skipped...

Shard names are relative to the manifest's folder (or absolute URLs). ``ShardWriter``,
``shardpipe write`` and ``shardpipe index`` write it; ``ShardDataset``, ``IndexedDataset``,
``verify`` and the write job's resume read it, all through this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from shardpipe.errors import ShardNotFoundError
from shardpipe.io.files import atomic_write, dirname_url, join_url, read_bytes

MANIFEST = "manifest.json"
FORMAT = "shardpipe/1"


def shard_entry(name: str, samples: int, size: int, sha256: str | None = None) -> dict[str, Any]:
    """One shard's record: its name (relative to the manifest), sample count, bytes, sha256."""
    entry: dict[str, Any] = {"name": name, "samples": int(samples), "bytes": int(size)}
    if sha256:
        entry["sha256"] = sha256
    return entry


def build_manifest(shards: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest document for ``shards`` (entries from ``shard_entry``), totals included."""
    return {
        "format": FORMAT,
        "shards": [dict(s) for s in shards],
        "samples": sum(int(s["samples"]) for s in shards),
        "bytes": sum(int(s["bytes"]) for s in shards),
        **(metadata or {}),
    }


def read_manifest(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest at ``url`` as stored (names unresolved); ValueError when it is not one."""
    try:
        manifest = json.loads(read_bytes(url, storage_options=storage_options))
    except ShardNotFoundError as e:
        raise ShardNotFoundError(f"manifest not found: {url}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{url} is not a manifest: invalid JSON: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{url} is not a manifest: no 'shards' list")
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{url} is not a valid manifest: shard entry {i} has no 'name'")
        for field in ("samples", "bytes"):  # never trust a number from a file further than this
            value = entry.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(
                    f"manifest {url}: shard entry {i} ({entry.get('name')!r}) has {field} {value!r}, "
                    "not a non-negative integer"
                )
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise ValueError(f"manifest {url}: shard entry {i} has sha256 {sha!r}, not 64 hex digits")
    return manifest


def load_manifest(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a manifest; shard names (and the index) become full URLs under ``"url"``/``"index_url"``."""
    manifest = read_manifest(url, storage_options)
    base = dirname_url(url)
    for entry in manifest["shards"]:
        entry["url"] = join_url(base, entry["name"])
    if manifest.get("index"):
        manifest["index_url"] = join_url(base, manifest["index"])
    return manifest


def write_manifest(url: str, manifest: Mapping[str, Any], storage_options: dict[str, Any] | None = None) -> str:
    """Write ``manifest`` to ``url`` atomically (sorted keys: reproducible bytes); returns ``url``."""
    with atomic_write(url, storage_options=storage_options) as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
    return url
