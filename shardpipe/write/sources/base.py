"""Inputs for ``shardpipe write`` (the shared part): flat folders, ImageFolder trees, CSV/JSONL lists, LMDB stores.

A source first *scans* (cheap: names and labels only, no image bytes) into a list of
:class:`Record` in a deterministic order (sorted paths, file order, LMDB key order), and
then *loads* each record's bytes on demand, possibly in a worker process. Every record
has a unique sample key derived from its relative path or LMDB key (see :func:`make_key`).
Files that are not images are listed as :class:`Skip` entries with a reason, never
dropped silently.
"""

from __future__ import annotations

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


def suffix_of(path: str) -> str:
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


def apply_labels(records: list[Record], values: Sequence[str | int | None]) -> tuple[list[Record], list[str] | None]:
    labels, names = labels_to_indices(values)
    return [r._replace(label=lab) for r, lab in zip(records, labels)], names


# ---------------------------------------------------------------------------- sources


class Source:
    """Base class: ``scan()`` lists records, ``load(record)`` returns its bytes and label."""

    kind = "records"
    #: the keywords of :func:`~shardpipe.write.sources.open_source` this type takes besides the path
    path_options: tuple[str, ...] = ()

    @classmethod
    def from_path(cls, path: str, **options: Any) -> Source:
        """This source over ``path`` with its ``path_options``."""
        return cls(path, **options)  # type: ignore[call-arg]

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


def walk(root: str) -> list[str]:
    """Relative paths (with ``/``) of every file under ``root``, sorted; hidden dirs skipped."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + f for f in filenames)
    out.sort()
    return out
