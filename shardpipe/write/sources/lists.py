"""CSV and JSON-lines lists of image paths (with labels, keys, extra fields) as write sources."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable
from itertools import islice
from typing import Any

from shardpipe.write.sources.base import Record, Scan, Skip, Source, apply_labels, make_key, strip_suffix, unique_keys

PATH_FIELDS = ("path", "file", "filename", "image", "img", "image_path")
LABEL_FIELDS = ("label", "cls", "class", "target")
KEY_FIELDS = ("key", "__key__")
FIELDS = frozenset(PATH_FIELDS + LABEL_FIELDS + KEY_FIELDS)
#: the column separators a CSV list may use (found from its first line: ``find_delimiter``), as messages name them
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
#: CSV cells read without surrounding whitespace, as the header is (``path, label`` rows like
#: ``0.jpg, 3``): the cells shardpipe reads itself; other columns go into ``.json`` as written
STRIPPED = FIELDS
#: how a list file is read: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped, and bytes that
#: are not UTF-8 become stand-ins that :func:`check_utf8` turns into an error naming the line
ENCODING = {"encoding": "utf-8-sig", "errors": "surrogateescape"}
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
#: how many rows below a one-column header ``find_delimiter`` reads to check that they are one column too
SNIFF_ROWS = 20
#: how many repeated rows the repeat note names by line number
SHOWN_REPEATS = 5

log = logging.getLogger("shardpipe")


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
        first_line: dict[str, int] = {}  # image path -> the line that first names it
        repeats: list[tuple[int, int]] = []  # (line, the earlier line naming the same image)
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
            first = first_line.setdefault(os.path.normpath(full), line)
            if first != line:
                repeats.append((line, first))
            key = make_key(str(row[key_field])) if key_field else make_key(strip_suffix(rel.lstrip("/")))
            records.append(Record(key, full, None, extra, rel))
            values.append(row.get(label_field) if label_field else None)
        records, names = apply_labels(records, values)
        notes = repeat_note(os.path.basename(self.path), repeats)
        for note in notes:
            log.warning("%s", note)
        return Scan(unique_keys(records), skipped, names, notes)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.path}


def repeat_note(name: str, repeats: list[tuple[int, int]]) -> list[str]:
    """The note (and warning) for rows of list ``name`` naming an image an earlier row names.

    They are written, each as its own sample (key ``x_1``, ``x_2``, ...): repeating a row is how a
    list oversamples an image, or gives it several captions. A repeat made by mistake would
    weight that image quietly, hence one warning with the count and the first lines.
    """
    if not repeats:
        return []
    shown = ", ".join(f"line {line} repeats line {first}" for line, first in repeats[:SHOWN_REPEATS])
    more = ", ..." if len(repeats) > SHOWN_REPEATS else ""
    rows = "row repeats" if len(repeats) == 1 else "rows repeat"
    return [
        f"{name}: {len(repeats)} {rows} an earlier row's image ({shown}{more}): each is written as its own "
        "sample (keys x_1, x_2, ...), as for oversampling; delete the repeated rows if they are a mistake"
    ]


class CsvSource(_ListSource):
    """A CSV list: a header row naming a path column (``path``/``file``/``image``...), an
    optional label column (``label``/``cls``/``class``/``target``: integers, or class names
    mapped to sorted indices), an optional ``key`` column; other columns go into ``.json``.
    Without a recognised header, column 1 is the path and column 2 the label; a first row naming a
    label or key column but no path column is an error (read as data, its label cell would be a class).
    Relative paths are relative to the CSV file's folder (or ``root``). Columns are separated by
    commas, semicolons, tabs or vertical bars: which, ``scan`` finds from the first line (:func:`find_delimiter`).
    """

    kind = "csv"

    def __init__(self, path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None):
        super().__init__(path, root)
        #: the column separator, found from the first line by ``scan``
        self.delimiter = "\t" if self.path.lower().endswith(".tsv") else ","

    def scan(self) -> Scan:
        if os.path.isfile(self.path):
            self.delimiter, how = find_delimiter(self.path, self.delimiter)
            scan = super().scan()
            scan.notes.insert(0, f"read: {os.path.basename(self.path)}: {how}")
            return scan
        return super().scan()

    def rows(self) -> Iterable[tuple[int, dict[str, Any] | str]]:
        with open(self.path, newline="", **ENCODING) as f:
            header: list[str] | None = None
            # skipinitialspace: ``a.jpg, "x, y"`` reads the quoted cell as one, like ``a.jpg,"x, y"``
            reader = csv.reader(f, delimiter=self.delimiter, skipinitialspace=True)
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


def find_delimiter(path: str, default: str) -> tuple[str, str]:
    """The column separator of the CSV list at ``path``, from its first line, and how it was found.

    European spreadsheets save ``;``-separated "CSV"; read with ``,``, each row was one path
    cell naming no file. A header naming known columns (``path;label``) decides; a first line
    of data, the one candidate that splits it. A first line that splits at several candidates
    with none naming a known column, or one cell holding column names (``path label``), is a
    ``ValueError`` naming the line: guessing would read every row wrong. So is a header naming one
    column (``path``) over rows that all split at one candidate (``0.jpg;3``): every row would be a skip.
    """
    with open(path, newline="", **ENCODING) as f:
        lines = ((n, t) for n, t in enumerate(f, 1) if t.strip())
        first = next(lines, None)
        following = list(islice(lines, SNIFF_ROWS))
    if first is None:
        return default, "an empty list"
    line, text = first
    check_utf8(text, f"{path}:{line}")
    order = [default, *(d for d in DELIMITERS if d != default)]
    cells = {d: next(csv.reader([text], delimiter=d, skipinitialspace=True), []) for d in order}
    split = [d for d in order if len(cells[d]) > 1]
    named = {d: sum(c.strip().lower() in FIELDS for c in cells[d]) for d in split}
    best = max(named.values(), default=0)
    if best:
        split = [d for d in split if named[d] == best]
    if len(split) == 1:
        return split[0], f"{DELIMITERS[split[0]]}-separated (found in its first line)"
    where = f"{path}:{line}"
    if split:
        raise ValueError(
            f"{where}: cannot tell how the columns are separated: the first line splits at a "
            f"{_either(split, 'and at a')}: start the list with a header naming its columns (path{split[0]}label)"
        )
    words = {w.lower() for w in re.split(r"[^A-Za-z_]+", text)}
    if not re.search(r"[./\\]", text) and words & set(PATH_FIELDS) and len(words - {""}) > 1:
        raise ValueError(
            f"{where}: the header ({text.strip()}) is one column: separate its columns with a "
            f"{_either(list(DELIMITERS))}"
        )
    if text.strip().lower() in PATH_FIELDS:
        _check_one_column(where, text.strip(), order, following)
    return default, f"one column (no {_either(list(DELIMITERS))} in its first line)"


def _check_one_column(where: str, header: str, order: list[str], rows: list[tuple[int, str]]) -> None:
    """``ValueError`` naming ``where`` when the ``rows`` below a one-column ``header`` all split at one candidate."""
    for d in order:
        cells = [next(csv.reader([t], delimiter=d, skipinitialspace=True), []) for _, t in rows]
        if cells and all(len(c) > 1 for c in cells):
            line, text = rows[0]
            shown = "<tab>" if d == "\t" else d
            raise ValueError(
                f"{where}: the header names one column ({header}), but the rows below it have more: line {line} "
                f"({text.strip()[:80]}) splits at a {DELIMITERS[d]} into {len(cells[0])} cells: name every "
                f"column in the header, e.g. {header}{shown}label"
            )


def _either(delimiters: list[str], last: str = "or") -> str:
    """``comma, semicolon or tab`` for ``[",", ";", "\\t"]``."""
    names = [DELIMITERS[d] for d in delimiters]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


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
