"""The manifest: one JSON file beside the shards, the single description of a dataset.

Schema (``"format": "shardpipe/1"``)::

    {"format": "shardpipe/1",
     "shards": [{"name": "train-000000.tar", "samples": 10000, "bytes": 1073741312,
                 "sha256": "..."}, ...],        # sha256 optional (``shardpipe index`` without --sha256)
     "samples": <total>, "bytes": <total>,
     "index": "manifest.index",                 # optional: the per-sample offset sidecar (format/index.py)
     ...}                                       # writer metadata: class_names, options, skipped...

Shard names are relative to the manifest's folder (or absolute paths and URLs). What a
name may point to is a rule (``manifest_paths``, see ``check_name``): by default relative
names stay under the manifest's folder (no ``..`` escape) while absolute paths and URLs
are allowed (merged manifests list shards elsewhere); ``"relative"`` allows only names
under the folder (for manifests you did not write); ``"any"`` allows ``..`` too. ``ShardWriter``,
``shardpipe write`` and ``shardpipe index`` write it; ``ShardDataset``, ``IndexedDataset``,
``verify`` and the write job's resume read it, all through this module.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from shardpipe.errors import ShardNotFoundError, ShardpipeError
from shardpipe.io.files import atomic_write, dirname_url, join_url, read_bytes
from shardpipe.io.remote import ReadOptions

MANIFEST = "manifest.json"
FORMAT = "shardpipe/1"
#: what a manifest's shard (and index) names may point to; the first is the default
MANIFEST_PATHS = ("inside", "relative", "any")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class ManifestPathError(ShardpipeError, ValueError):
    """A manifest names a file that its ``manifest_paths`` rule does not allow.

    ``problem`` is the message without ``fix``, the way out in Python (``manifest_paths='any'``),
    for callers that offer another: the command-line tools have no such option.
    """

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem, self.fix = problem, fix

    def __reduce__(self) -> tuple[Any, ...]:  # a worker's error reaches the main process whole
        return type(self), (self.problem, self.fix)


class DamagedManifestError(ShardpipeError, ValueError):
    """A manifest file that is not valid: not JSON, no ``shards`` list, a shard entry of the wrong shape.

    Bad data (the command-line tools exit 1), unlike a manifest that does not exist (exit 2).
    """


def check_name(name: Any, manifest: str, what: str, rule: str = "inside") -> str:
    """``name`` if ``rule`` allows a manifest to point there, else ``ManifestPathError``.

    ``inside``: relative names must stay under the manifest's folder; absolute paths and
    URLs are allowed. ``relative``: only relative names under the folder. ``any``: anything.
    """
    if rule not in MANIFEST_PATHS:
        raise ValueError(f"manifest_paths must be one of {MANIFEST_PATHS}, not {rule!r}")
    if not isinstance(name, str) or not name or "\0" in name:
        raise ManifestPathError(f"manifest {manifest}: {what} has name {str(name)[:80]!r}, not a file name")
    if rule == "any":
        return name
    absolute = name.startswith("/") or bool(_SCHEME.match(name))
    if absolute:
        if rule == "relative":
            raise ManifestPathError(
                f"manifest {manifest}: {what} names {name[:200]!r}, outside the manifest's folder "
                "(manifest_paths='relative' allows only names under it; 'inside' allows absolute paths and URLs)"
            )
        return name
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise ManifestPathError(
            f"manifest {manifest}: {what} names {name[:200]!r}, which leaves the manifest's folder",
            "pass manifest_paths='any' if you trust this manifest to point anywhere",
        )
    return name


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


def read_manifest(
    url: str, storage_options: dict[str, Any] | None = None, read_options: ReadOptions | None = None
) -> dict[str, Any]:
    """The manifest at ``url`` as stored (names unresolved), read under ``read_options``;
    ``DamagedManifestError`` (a ValueError) when it is not one."""
    try:
        manifest = json.loads(read_bytes(url, storage_options=storage_options, read_options=read_options))
    except ShardNotFoundError as e:
        raise ShardNotFoundError(f"manifest not found: {url}") from e
    except json.JSONDecodeError as e:
        raise DamagedManifestError(f"{url} is not a manifest: invalid JSON: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DamagedManifestError(f"{url} is not a manifest: no 'shards' list")
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise DamagedManifestError(f"{url} is not a valid manifest: shard entry {i} has no 'name'")
        for field in ("samples", "bytes"):  # never trust a number from a file further than this
            value = entry.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise DamagedManifestError(
                    f"manifest {url}: shard entry {i} ({entry.get('name')!r}) has {field} {value!r}, "
                    "not a non-negative integer"
                )
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise DamagedManifestError(f"manifest {url}: shard entry {i} has sha256 {sha!r}, not 64 hex digits")
    return manifest


def load_manifest(
    url: str,
    storage_options: dict[str, Any] | None = None,
    manifest_paths: str = "inside",
    read_options: ReadOptions | None = None,
) -> dict[str, Any]:
    """Read a manifest (under ``read_options``); shard names (and the index) become full URLs under
    ``"url"``/``"index_url"``, each checked against ``manifest_paths`` (see ``check_name``)."""
    manifest = read_manifest(url, storage_options, read_options)
    base = dirname_url(url)
    for i, entry in enumerate(manifest["shards"]):
        entry["url"] = join_url(base, check_name(entry["name"], url, f"shard entry {i}", manifest_paths))
    if manifest.get("index"):
        manifest["index_url"] = join_url(base, check_name(manifest["index"], url, "the index", manifest_paths))
    return manifest


def write_manifest(url: str, manifest: Mapping[str, Any], storage_options: dict[str, Any] | None = None) -> str:
    """Write ``manifest`` to ``url`` atomically (sorted keys: reproducible bytes); returns ``url``."""
    with atomic_write(url, storage_options=storage_options) as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
    return url
