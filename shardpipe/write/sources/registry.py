"""Write sources by type name, imported only when used (fsspec's ``known_implementations`` style).

Each entry maps a type name to ``"module:Class"`` and the install hint shown when its
optional dependency is missing; :func:`open_source` picks one for a path.
"""

from __future__ import annotations

import logging
import os

from shardpipe.registry import Entry, Registry
from shardpipe.write.sources.base import IMAGE_SUFFIXES, Source, ValueDecoder, suffix_of

log = logging.getLogger("shardpipe")

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
#: ``MDB_MAGIC`` (0xBEEFC0DE) as a little- and a big-endian machine store it in an LMDB meta page
LMDB_MAGIC = (b"\xde\xc0\xef\xbe", b"\xbe\xef\xc0\xde")
#: what each of open_source's source-specific keywords is for
_APPLIES_TO = {
    "label_pattern": "label pattern applies to flat folders only",
    "value_decoder": "an LMDB value decoder applies to LMDB stores only",
}


def source_class(kind: str) -> type[Source]:
    """The source class registered as ``kind`` (imported now)."""
    return SOURCES.load(kind)  # type: ignore[no-any-return]


def is_lmdb(path: str) -> bool:
    """Whether ``path`` is an LMDB environment: a folder holding ``data.mdb``, or an LMDB data
    file (opened with ``subdir=False``), recognised by the magic number of its first meta page."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "data.mdb"))
    if not os.path.isfile(path):  # not a FIFO either: opening one would block
        return False
    with open(path, "rb") as f:
        head = f.read(20)
    return any(head[at : at + 4] in LMDB_MAGIC for at in (16, 12))  # page header: 64-bit, 32-bit builds


def detect_type(path: str) -> str:
    """Guess the source type from a path (see :func:`open_source`)."""
    lower = path.lower().rstrip("/")
    if lower.endswith(".csv") or lower.endswith(".tsv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if is_lmdb(path):  # by content, not name: a folder of images may well be called photos.lmdb
        return "lmdb"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"source not found or of unknown type: {path}")
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    has_dirs = any(e.is_dir() for e in entries)
    has_images = any(e.is_file() and suffix_of(e.name) in IMAGE_SUFFIXES for e in entries)
    return "imagefolder" if has_dirs and not has_images else "folder"


def stray_images_warning(path: str) -> str | None:
    """A warning for a folder read as flat that looks like an ImageFolder tree with stray images.

    Detection keeps its documented rule (images at the root make a flat folder), but when
    subfolders hold images too, their names are silently not labels: say so, and how to
    force ``imagefolder``. None when the folder has no such mix.
    """
    entries = sorted((e for e in os.scandir(path) if not e.name.startswith(".")), key=lambda e: e.name)
    root_images = [e.name for e in entries if e.is_file() and suffix_of(e.name) in IMAGE_SUFFIXES]
    if not root_images:
        return None
    folders = [e.name for e in entries if e.is_dir() and _holds_image(e.path)]
    if not folders:
        return None
    return (
        f"{path} is read as a flat folder (no class labels) because images sit at its root "
        f"({_some(root_images)}), but its subfolders hold images too ({_some(folders)}): if it is an ImageFolder "
        "tree (root/<class>/<image>), move the root images away or pass --source-type imagefolder "
        "(source_type='imagefolder'), which labels by class folder and skips the root images"
    )


def _holds_image(folder: str) -> bool:
    """Whether any file under ``folder`` is named like an image (stops at the first; links below it not followed)."""
    return any(suffix_of(f) in IMAGE_SUFFIXES for _, _, files in os.walk(folder) for f in files)


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
    warning = stray_images_warning(path) if source_type == "auto" and kind == "folder" else None
    if warning:
        log.warning("%s", warning)
    cls = source_class(kind)
    given = {"label_pattern": label_pattern or None, "value_decoder": lmdb_decoder}
    options = {k: v for k, v in given.items() if v is not None}
    for option in options:
        if option not in cls.path_options:
            raise ValueError(f"{_APPLIES_TO[option]}, not to a {kind} source")
    return cls.from_path(path, **options)
