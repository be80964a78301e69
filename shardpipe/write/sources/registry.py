"""Write sources by type name, imported only when used (fsspec's ``known_implementations`` style).

Each entry maps a type name to ``"module:Class"`` and the install hint shown when its
optional dependency is missing; :func:`open_source` picks one for a path.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from shardpipe.write.sources.base import IMAGE_SUFFIXES, Source, ValueDecoder, suffix_of


@dataclass(frozen=True)
class Entry:
    target: str  #: "module:Class"
    install: str  #: what to install when the source's dependency is missing


SOURCES: dict[str, Entry] = {
    "folder": Entry("shardpipe.write.sources.folder:FolderSource", "pip install shardpipe"),
    "imagefolder": Entry("shardpipe.write.sources.imagefolder:ImageFolderSource", "pip install shardpipe"),
    "csv": Entry("shardpipe.write.sources.lists:CsvSource", "pip install shardpipe"),
    "jsonl": Entry("shardpipe.write.sources.lists:JsonlSource", "pip install shardpipe"),
    "lmdb": Entry("shardpipe.write.sources.lmdb:LmdbSource", "pip install 'shardpipe[lmdb]'"),
}
SOURCE_TYPES: tuple[str, ...] = ("auto", *SOURCES)


def source_class(kind: str) -> type[Source]:
    """The source class registered as ``kind`` (imported now)."""
    if kind not in SOURCES:
        raise ValueError(f"source type must be one of {SOURCE_TYPES}, not {kind!r}")
    module, _, attr = SOURCES[kind].target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def detect_type(path: str) -> str:
    """Guess the source type from a path (see :func:`open_source`)."""
    lower = path.lower().rstrip("/")
    if lower.endswith(".csv") or lower.endswith(".tsv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith((".lmdb", ".mdb")) or os.path.isfile(os.path.join(path, "data.mdb")):
        return "lmdb"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"source not found or of unknown type: {path}")
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    has_dirs = any(e.is_dir() for e in entries)
    has_images = any(e.is_file() and suffix_of(e.name) in IMAGE_SUFFIXES for e in entries)
    return "imagefolder" if has_dirs and not has_images else "folder"


def open_source(
    source: str | os.PathLike[str] | Source,
    source_type: str = "auto",
    *,
    label_pattern: str | None = None,
    lmdb_decoder: ValueDecoder | str | None = None,
) -> Source:
    """A :class:`Source` for a path: ``auto`` picks csv/jsonl by extension, lmdb for a
    store (``data.mdb``), imagefolder for a folder of folders, else a flat folder."""
    if isinstance(source, Source):
        return source
    path = os.fspath(source)
    if source_type not in SOURCE_TYPES:
        raise ValueError(f"source type must be one of {SOURCE_TYPES}, not {source_type!r}")
    kind = detect_type(path) if source_type == "auto" else source_type
    if label_pattern and kind != "folder":
        raise ValueError(f"label pattern applies to flat folders only, not to a {kind} source")
    if lmdb_decoder is not None and kind != "lmdb":
        raise ValueError(f"an LMDB value decoder was given for a {kind} source")
    cls = source_class(kind)
    if kind == "folder":
        return cls(path, label_pattern)  # type: ignore[call-arg]
    if kind == "lmdb":
        return cls(path, lmdb_decoder)  # type: ignore[call-arg]
    return cls(path)  # type: ignore[call-arg]
