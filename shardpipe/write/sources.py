"""Inputs for ``shardpipe write``: flat folders, ImageFolder trees, CSV/JSONL lists, LMDB stores.

A source first *scans* (cheap: names and labels only, no image bytes) into a list of
:class:`Record` in a deterministic order (sorted paths, file order, LMDB key order), and
then *loads* each record's bytes on demand, possibly in a worker process. Every record
has a unique sample key derived from its relative path or LMDB key (see :func:`make_key`).
Files that are not images are listed as :class:`Skip` entries with a reason, never
dropped silently.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shardpipe.format.sample import IMAGE_EXTENSIONS

#: file extensions a folder scan treats as images (by name; the content is checked later)
IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS | {"jpe", "jfif"})
#: sidecar files beside an image in a flat folder: ``x.cls`` holds its label, ``x.json`` extra fields
SIDECARS = ("cls", "json")
PATH_FIELDS = ("path", "file", "filename", "image", "img", "image_path")
LABEL_FIELDS = ("label", "cls", "class", "target")
KEY_FIELDS = ("key", "__key__")
SOURCE_TYPES = ("auto", "folder", "imagefolder", "csv", "jsonl", "lmdb")

#: ``decoder(value) -> image bytes | (image bytes, label) | (image bytes, label, extra dict)``
ValueDecoder = Callable[[bytes], Any]


class Record(NamedTuple):
    """One input image: its sample key, where its bytes are, and what is known about it.

    ``ref`` is a local file path for file-based sources, the LMDB key (bytes) for LMDB,
    or the image bytes themselves for :class:`RecordsSource`. ``name`` is what messages
    call it (relative path, LMDB key). ``sidecars`` lists ``.cls``/``.json`` files.
    """

    key: str
    ref: str | bytes
    label: int | None = None
    extra: dict[str, Any] | None = None
    name: str = ""
    sidecars: tuple[str, ...] = ()


class Skip(NamedTuple):
    """An input that was not written, and why."""

    name: str
    reason: str


@dataclass
class Scan:
    """What a source holds: records in output order, skipped inputs, class names (if any)."""

    records: list[Record]
    skipped: list[Skip] = field(default_factory=list)
    class_names: list[str] | None = None


class Loaded(NamedTuple):
    data: bytes
    label: int | None
    extra: dict[str, Any] | None


# ---------------------------------------------------------------------------- keys


def make_key(name: str) -> str:
    """A valid sample key for a relative path without its extension.

    Separators become ``/``; dots become ``_`` (readers split key and extension at the
    first dot of the basename); empty, ``.`` and ``..`` parts are dropped; a basename
    that looks like metadata (``__x__``) gets a ``k`` prefix.
    """
    parts = [p.replace(".", "_") for p in re.split(r"[/\\]+", name) if p not in ("", ".", "..")]
    if not parts:
        parts = ["_"]
    base = parts[-1]
    if base.startswith("__") and base.endswith("__"):
        parts[-1] = "k" + base
    return "/".join(parts)


def strip_suffix(name: str) -> str:
    """``a/b.c.jpg`` -> ``a/b.c`` (only the last extension goes; the key rules handle the rest)."""
    slash = name.rfind("/")
    dot = name.rfind(".")
    return name[:dot] if dot > slash + 1 else name


def unique_keys(records: Iterable[Record]) -> list[Record]:
    """Make keys unique in order: a repeated key gets ``_1``, ``_2``, ... appended."""
    seen: set[str] = set()
    out = []
    for r in records:
        key = r.key
        n = 0
        while key in seen:
            n += 1
            key = f"{r.key}_{n}"
        seen.add(key)
        out.append(r if key == r.key else r._replace(key=key))
    return out


def _suffix(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""


# ---------------------------------------------------------------------------- labels


def labels_to_indices(values: Sequence[str | int | None]) -> tuple[list[int | None], list[str] | None]:
    """Integer labels stay; string class names map to their index in the sorted names."""
    present = [v for v in values if v is not None and v != ""]
    if all(isinstance(v, int) or (isinstance(v, str) and re.fullmatch(r"-?\d+", v)) for v in present):
        return [None if v is None or v == "" else int(v) for v in values], None
    names = sorted({str(v) for v in present})
    index = {n: i for i, n in enumerate(names)}
    return [None if v is None or v == "" else index[str(v)] for v in values], names


def _apply_labels(records: list[Record], values: Sequence[str | int | None]) -> tuple[list[Record], list[str] | None]:
    labels, names = labels_to_indices(values)
    return [r._replace(label=lab) for r, lab in zip(records, labels)], names


# ---------------------------------------------------------------------------- sources


class Source:
    """Base class: ``scan()`` lists records, ``load(record)`` returns its bytes and label."""

    kind = "records"

    def scan(self) -> Scan:
        raise NotImplementedError

    def load(self, record: Record) -> Loaded:
        """Read a record's bytes (and its sidecar label/extra); ``OSError`` if unreadable."""
        if isinstance(record.ref, bytes):
            return Loaded(record.ref, record.label, record.extra)
        with open(record.ref, "rb") as f:
            data = f.read()
        label, extra = record.label, record.extra
        for path in record.sidecars:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8").strip()
            if path.endswith(".cls"):
                if label is None:
                    try:
                        label = int(text)
                    except ValueError:
                        raise ValueError(f"label file {path} does not hold an integer: {text[:40]!r}") from None
            else:
                value = json.loads(text)
                if not isinstance(value, dict):
                    raise ValueError(f"sidecar {path} must hold a JSON object, not {type(value).__name__}")
                extra = {**value, **(extra or {})}
        return Loaded(data, label, extra)

    def describe(self) -> dict[str, Any]:
        """How the manifest records this source."""
        return {"type": self.kind}


def _walk(root: str) -> list[str]:
    """Relative paths (with ``/``) of every file under ``root``, sorted; hidden dirs skipped."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + f for f in filenames)
    out.sort()
    return out


class FolderSource(Source):
    """Every image file under ``root`` (recursively), keyed by its relative path.

    Labels come from ``label_pattern`` (a regex searched in the relative path; its
    ``label`` group or first group is the label: integers stay, names map to sorted
    indices), or else from a ``.cls`` sidecar file beside the image. A ``.json``
    sidecar adds extra fields. Files matching no image or sidecar are skipped and listed.
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike[str], label_pattern: str | None = None):
        self.root = os.fspath(root)
        self.label_pattern = label_pattern
        self._regex = re.compile(label_pattern) if label_pattern else None
        if self._regex is not None and self._regex.groups < 1:
            raise ValueError(f"label pattern {label_pattern!r} needs a group, e.g. r'^([a-z]+)_\\d+'")

    def scan(self) -> Scan:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"source folder not found: {self.root}")
        files = _walk(self.root)
        present = set(files)
        records: list[Record] = []
        skipped: list[Skip] = []
        used: set[str] = set()
        label_values: list[str | None] = []
        for rel in files:
            suffix = _suffix(rel)
            if suffix not in IMAGE_SUFFIXES:
                continue
            stem = strip_suffix(rel)
            sidecars = tuple(os.path.join(self.root, f"{stem}.{s}") for s in SIDECARS if f"{stem}.{s}" in present)
            used.update(f"{stem}.{s}" for s in SIDECARS if f"{stem}.{s}" in present)
            value: str | None = None
            if self._regex is not None:
                m = self._regex.search(rel)
                if m is None:
                    skipped.append(Skip(rel, f"label pattern {self.label_pattern!r} does not match"))
                    continue
                value = m.group("label") if "label" in self._regex.groupindex else m.group(1)
                sidecars = tuple(s for s in sidecars if not s.endswith(".cls"))
            records.append(Record(make_key(stem), os.path.join(self.root, rel), None, None, rel, sidecars))
            label_values.append(value)
        for rel in files:
            if _suffix(rel) not in IMAGE_SUFFIXES and rel not in used:
                skipped.append(
                    Skip(rel, f"not an image file (.{_suffix(rel)})" if _suffix(rel) else "not an image file")
                )
        names = None
        if self._regex is not None:
            records, names = _apply_labels(records, label_values)
        return Scan(unique_keys(records), sorted(skipped), names)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.root, "label_pattern": self.label_pattern}


class ImageFolderSource(Source):
    """``root/<class>/**/<image>``: label = index of the class folder in the sorted names."""

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.fspath(root)

    def scan(self) -> Scan:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"source folder not found: {self.root}")
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise ValueError(f"{self.root} has no class folders: an ImageFolder tree is root/<class>/<image>")
        index = {c: i for i, c in enumerate(classes)}
        records, skipped = [], []
        for rel in _walk(self.root):
            cls, slash, _ = rel.partition("/")
            if not slash:
                skipped.append(Skip(rel, "not in a class folder"))
            elif _suffix(rel) not in IMAGE_SUFFIXES:
                skipped.append(
                    Skip(rel, f"not an image file (.{_suffix(rel)})" if _suffix(rel) else "not an image file")
                )
            else:
                records.append(Record(make_key(strip_suffix(rel)), os.path.join(self.root, rel), index[cls], None, rel))
        return Scan(unique_keys(records), skipped, classes)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.root}


class _ListSource(Source):
    """Shared by CSV and JSONL: rows of (path, label, key, extra fields)."""

    def __init__(self, path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None):
        self.path = os.fspath(path)
        self.root = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(self.path))

    def rows(self) -> Iterable[tuple[int, dict[str, Any] | str]]:
        """``(line number, row dict)`` or ``(line number, error message)``."""
        raise NotImplementedError

    def scan(self) -> Scan:
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"list file not found: {self.path}")
        records: list[Record] = []
        skipped: list[Skip] = []
        values: list[Any] = []
        for line, row in self.rows():
            where = f"{os.path.basename(self.path)}:{line}"
            if isinstance(row, str):
                skipped.append(Skip(where, row))
                continue
            path_field = next((f for f in PATH_FIELDS if row.get(f) not in (None, "")), None)
            if path_field is None:
                skipped.append(Skip(where, f"no path field (one of {', '.join(PATH_FIELDS)})"))
                continue
            rel = str(row[path_field]).replace("\\", "/")
            label_field = next((f for f in LABEL_FIELDS if f in row), None)
            key_field = next((f for f in KEY_FIELDS if row.get(f) not in (None, "")), None)
            used = {path_field, label_field, key_field}
            extra = {k: v for k, v in row.items() if k not in used and k is not None} or None
            full = os.path.join(self.root, rel)
            key = make_key(str(row[key_field])) if key_field else make_key(strip_suffix(rel.lstrip("/")))
            records.append(Record(key, full, None, extra, rel))
            values.append(row.get(label_field) if label_field else None)
        records, names = _apply_labels(records, values)
        return Scan(unique_keys(records), skipped, names)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.path}


class CsvSource(_ListSource):
    """A CSV list: a header row naming a path column (``path``/``file``/``image``...), an
    optional label column (``label``/``cls``/``class``/``target``: integers, or class names
    mapped to sorted indices), an optional ``key`` column; other columns go into ``.json``.
    Without a recognised header, column 1 is the path and column 2 the label.
    Relative paths are relative to the CSV file's folder (or ``root``).
    """

    kind = "csv"

    def rows(self) -> Iterable[tuple[int, dict[str, Any] | str]]:
        delimiter = "\t" if self.path.lower().endswith(".tsv") else ","
        with open(self.path, newline="", encoding="utf-8") as f:
            header: list[str] | None = None
            for line, cells in enumerate(csv.reader(f, delimiter=delimiter), 1):
                if not any(c.strip() for c in cells):
                    continue
                if header is None:
                    lowered = [c.strip().lower() for c in cells]
                    if any(c in PATH_FIELDS for c in lowered):
                        header = lowered
                        continue
                    header = ["path", "label"] + [f"column{i}" for i in range(3, len(cells) + 1)]
                if len(cells) > len(header):
                    yield line, f"{len(cells)} columns, but the header has {len(header)}"
                    continue
                yield line, dict(zip(header, cells))


class JsonlSource(_ListSource):
    """A JSON-lines list: one object per line with ``path`` (or ``file``/``image``...),
    optional ``label`` (integer or class name), optional ``key``; other fields go into ``.json``.
    """

    kind = "jsonl"

    def rows(self) -> Iterable[tuple[int, dict[str, Any] | str]]:
        with open(self.path, encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    yield line, f"invalid JSON: {e}"
                    continue
                if not isinstance(row, dict):
                    yield line, f"a line must be a JSON object, not {type(row).__name__}"
                    continue
                yield line, row


class RecordsSource(Source):
    """Records given in memory (API use): ``(key, path-or-bytes, label, extra)`` tuples, in order."""

    kind = "records"

    def __init__(self, items: Iterable[Sequence[Any]], class_names: list[str] | None = None):
        self.records = unique_keys(
            Record(make_key(str(k)), ref if isinstance(ref, bytes) else os.fspath(ref), lab, extra, str(k))
            for k, ref, lab, extra in (tuple(i) + (None,) * (4 - len(i)) for i in items)
        )
        self.class_names = class_names

    def scan(self) -> Scan:
        return Scan(list(self.records), [], self.class_names)


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
    has_images = any(e.is_file() and _suffix(e.name) in IMAGE_SUFFIXES for e in entries)
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
    if kind == "folder":
        return FolderSource(path, label_pattern)
    if kind == "imagefolder":
        return ImageFolderSource(path)
    if kind == "csv":
        return CsvSource(path)
    if kind == "jsonl":
        return JsonlSource(path)
    return LmdbSource(path, lmdb_decoder)


# the LMDB reader lives in its own module; it builds on the types above
from shardpipe.write.lmdb_source import LmdbSource  # noqa: E402
