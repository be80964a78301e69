"""Write sources by type name, imported only when used (fsspec's ``known_implementations`` style).

Each entry maps a type name to ``"module:Class"`` and the install hint shown when its
optional dependency is missing; :func:`open_source` picks one for a path.
"""

from __future__ import annotations

import os

from shardpipe.registry import Entry, Registry
from shardpipe.write.sources.base import IMAGE_SUFFIXES, Source, ValueDecoder, suffix_of

SOURCES = Registry(
    "source type",
    {
        "folder": Entry("shardpipe.write.sources.folder:FolderSource"),
        "imagefolder": Entry("shardpipe.write.sources.imagefolder:ImageFolderSource"),
        "csv": Entry("shardpipe.write.sources.lists:CsvSource"),
        "jsonl": Entry("shardpipe.write.sources.lists:JsonlSource"),
        "lmdb": Entry("shardpipe.write.sources.lmdb:LmdbSource", "pip install 'shardpipe[lmdb]'"),
    },
)
SOURCE_TYPES: tuple[str, ...] = ("auto", *SOURCES)
#: what each of open_source's source-specific keywords is for
_APPLIES_TO = {
    "label_pattern": "label pattern applies to flat folders only",
    "value_decoder": "an LMDB value decoder applies to LMDB stores only",
}


def source_class(kind: str) -> type[Source]:
    """The source class registered as ``kind`` (imported now)."""
    return SOURCES.load(kind)  # type: ignore[no-any-return]


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
    cls = source_class(kind)
    given = {"label_pattern": label_pattern or None, "value_decoder": lmdb_decoder}
    options = {k: v for k, v in given.items() if v is not None}
    for option in options:
        if option not in cls.path_options:
            raise ValueError(f"{_APPLIES_TO[option]}, not to a {kind} source")
    return cls.from_path(path, **options)
