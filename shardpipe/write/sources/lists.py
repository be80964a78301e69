"""CSV and JSON-lines lists of image paths (with labels, keys, extra fields) as write sources."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from shardpipe.write.sources.base import Record, Scan, Skip, Source, apply_labels, make_key, strip_suffix, unique_keys

PATH_FIELDS = ("path", "file", "filename", "image", "img", "image_path")
LABEL_FIELDS = ("label", "cls", "class", "target")
KEY_FIELDS = ("key", "__key__")
#: CSV cells read without surrounding whitespace, as the header is (``path, label`` rows like
#: ``0.jpg, 3``): the cells shardpipe reads itself; other columns go into ``.json`` as written
STRIPPED = frozenset(PATH_FIELDS + LABEL_FIELDS + KEY_FIELDS)
#: how a list file is read: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped, and bytes that
#: are not UTF-8 become stand-ins that :func:`check_utf8` turns into an error naming the line
ENCODING = {"encoding": "utf-8-sig", "errors": "surrogateescape"}
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def check_utf8(text: str, where: str) -> None:
    """``ValueError`` naming ``where`` (``list.csv:3``) when ``text`` was read from bytes that are not UTF-8."""
    m = _NOT_UTF8.search(text)
    if m:
        byte = ord(m.group()) - 0xDC00
        raise ValueError(
            f"{where}: not UTF-8 text (byte 0x{byte:02x}): save the list as UTF-8 "
            "(a spreadsheet's 'CSV UTF-8', or iconv -f cp1252 -t utf-8)"
        )


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
            label_field = next((f for f in LABEL_FIELDS if f in row), None)
            key_field = next((f for f in KEY_FIELDS if row.get(f) not in (None, "")), None)
            nested = next(
                (f for f in (path_field, label_field, key_field) if isinstance(row.get(f), (list, dict))), None
            )
            if nested is not None:  # str() of it would name a file, a class or a key
                kind = "an array" if isinstance(row[nested], list) else "an object"
                skipped.append(Skip(where, f"{nested} is {kind}, not a single value"))
                continue
            rel = str(row[path_field]).replace("\\", "/")
            blank_keys = {f for f in KEY_FIELDS if f in row and row[f] in (None, "")}  # the path names it
            used = {path_field, label_field, key_field, *blank_keys}
            extra = {k: v for k, v in row.items() if k not in used and k is not None} or None
            full = os.path.join(self.root, rel)
            key = make_key(str(row[key_field])) if key_field else make_key(strip_suffix(rel.lstrip("/")))
            records.append(Record(key, full, None, extra, rel))
            values.append(row.get(label_field) if label_field else None)
        records, names = apply_labels(records, values)
        return Scan(unique_keys(records), skipped, names)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.path}


class CsvSource(_ListSource):
    """A CSV list: a header row naming a path column (``path``/``file``/``image``...), an
    optional label column (``label``/``cls``/``class``/``target``: integers, or class names
    mapped to sorted indices), an optional ``key`` column; other columns go into ``.json``.
    Without a recognised header, column 1 is the path and column 2 the label; a first row naming a
    label or key column but no path column is an error (read as data, its label cell would be a class).
    Relative paths are relative to the CSV file's folder (or ``root``).
    """

    kind = "csv"

    def rows(self) -> Iterable[tuple[int, dict[str, Any] | str]]:
        delimiter = "\t" if self.path.lower().endswith(".tsv") else ","
        with open(self.path, newline="", **ENCODING) as f:
            header: list[str] | None = None
            # skipinitialspace: ``a.jpg, "x, y"`` reads the quoted cell as one, like ``a.jpg,"x, y"``
            reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
            read = 0  # physical lines read: a quoted cell may hold line breaks
            for cells in reader:
                line, read = read + 1, reader.line_num  # the line the row starts on, as an editor shows it
                check_utf8("".join(cells), f"{self.path}:{line}")
                if not any(c.strip() for c in cells):
                    continue
                if header is None:
                    lowered = [c.strip().lower() for c in cells]
                    if any(c in PATH_FIELDS for c in lowered):
                        header = lowered
                        continue
                    if any(c in LABEL_FIELDS + KEY_FIELDS for c in lowered):  # a header, read as data it skews labels
                        raise ValueError(
                            f"{self.path}:{line}: the header ({', '.join(cells)}) names no path column: "
                            f"name the image column one of {', '.join(PATH_FIELDS)}"
                        )
                    header = ["path", "label"] + [f"column{i}" for i in range(3, len(cells) + 1)]
                if len(cells) > len(header):
                    yield line, f"{len(cells)} columns, but the header has {len(header)}"
                    continue
                yield line, {h: c.strip() if h in STRIPPED else c for h, c in zip(header, cells)}


class JsonlSource(_ListSource):
    """A JSON-lines list: one object per line with ``path`` (or ``file``/``image``...),
    optional ``label`` (integer or class name), optional ``key``; other fields go into ``.json``.
    """

    kind = "jsonl"

    def rows(self) -> Iterable[tuple[int, dict[str, Any] | str]]:
        with open(self.path, **ENCODING) as f:
            for line, text in enumerate(f, 1):
                check_utf8(text, f"{self.path}:{line}")
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
