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
import stat
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shardpipe.format.sample import IMAGE_EXTENSIONS, check_key

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
    #: what the summary and the manifest say once about the source (how a CSV list was read, hidden files left out)
    notes: list[str] = field(default_factory=list)


class Loaded(NamedTuple):
    data: bytes
    label: int | None
    extra: dict[str, Any] | None


class Outputs(NamedTuple):
    """A local write's own files, which a folder source leaves out: its output folder (by
    ``(st_dev, st_ino)``) when it lies below the source, and the file names it writes there
    when it is the source folder itself. Read as inputs, a rerun or ``--resume`` would list
    the shards as skips and take the output folder for a class."""

    folder: tuple[int, int]
    names: re.Pattern[str]


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


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the bytes of a non-UTF-8 file name (surrogate-escaped by
    Python) become ``\\xe9``-style escapes, so messages, the manifest and stdout can hold it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that no file name decoded to
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def key_problem(record: Record) -> str | None:
    """Why ``record`` cannot be written under its key (a skip reason), or None when it can.

    Tar member names and webdataset keys are UTF-8 text without control characters: a file
    name that is not UTF-8, or holds a tab or newline, is skipped rather than failing the
    whole write when its sample reaches the tar writer.
    """
    for text in (record.name, record.key):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"name not valid UTF-8: {_name_bytes(text)!r} (tar and webdataset sample keys are UTF-8): rename it"
    try:
        check_key(record.key)
    except ValueError as e:
        return f"invalid sample key: {e}"
    return None


def _name_bytes(text: str) -> bytes:
    """The bytes a surrogate-escaped file name stands for (as ``os.fsencode`` gives them)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def checked_records(records: Iterable[Record]) -> tuple[list[Record], list[Skip]]:
    """``records`` split into those with a valid key and a :class:`Skip` for each of the others."""
    good: list[Record] = []
    bad: list[Skip] = []
    for r in records:
        problem = key_problem(r)
        if problem is None:
            good.append(r)
        else:
            bad.append(Skip(printable(r.name or r.key), problem))
    return good, bad


def suffix_of(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""


# ---------------------------------------------------------------------------- labels


def labels_to_indices(values: Sequence[str | int | float | None]) -> tuple[list[int | None], list[str] | None]:
    """Integer labels stay; string class names map to their index in the sorted names.

    A whole float (``3.0``, or ``"3.0"`` as pandas writes an integer column with a gap) is an
    integer: read as a class name, ``"10.0"`` would sort before ``"2.0"`` and every label change.
    """
    present = [v for v in values if v is not None and v != ""]
    integers = [_integer(v) for v in present]
    if None not in integers:
        return [None if v is None or v == "" else _integer(v) for v in values], None
    names = sorted({str(v) for v in present})
    index = {n: i for i, n in enumerate(names)}
    return [None if v is None or v == "" else index[str(v)] for v in values], names


def _integer(value: str | int | float) -> int | None:
    """``value`` as an integer label (``3``, ``"-1"``, ``3.0``, ``"3.0"``), or None when it is a class name."""
    if isinstance(value, int):  # a JSON true/false too
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    m = re.fullmatch(r"(-?\d+)(?:\.0*)?", value)
    return int(m.group(1)) if m else None


def apply_labels(
    records: list[Record], values: Sequence[str | int | float | None]
) -> tuple[list[Record], list[str] | None]:
    labels, names = labels_to_indices(values)
    return [r._replace(label=lab) for r, lab in zip(records, labels)], names


# ---------------------------------------------------------------------------- sources


class Source:
    """Base class: ``scan()`` lists records, ``load(record)`` returns its bytes and label."""

    kind = "records"
    #: the keywords of :func:`~shardpipe.write.sources.open_source` this type takes besides the path
    path_options: tuple[str, ...] = ()
    #: set by ``write_shards`` before ``scan()``: the run's own files, which folder sources leave out
    outputs: Outputs | None = None

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
        data = read_regular(record.ref)
        label, extra = record.label, record.extra
        for path in record.sidecars:
            text = read_regular(path).decode("utf-8").strip()
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


class Walk(NamedTuple):
    """What :func:`walk` found: regular files (relative paths with ``/``, sorted), what it passed over,
    and the hidden entries it left out (sorted; a folder's name ends in ``/``)."""

    files: list[str]
    skipped: list[Skip]
    hidden: list[str]


def walk(root: str, outputs: Outputs | None = None) -> Walk:
    """Every regular file under ``root`` (hidden ones and ``outputs`` left out), following symbolic links.

    Hidden files and folders (names starting with ``.``: macOS's ``._x.jpg`` AppleDouble files and
    ``.DS_Store``, ``.git``) are no inputs: they are left out unread and listed in ``hidden``, not skips.

    Folder links are followed as torchvision's ImageFolder does, but each real folder is
    listed once (by ``(st_dev, st_ino)``), under its own path when it has one (links are
    followed after every real folder), so a link loop neither hangs nor repeats files.
    FIFOs, sockets and devices are never opened (reading a FIFO blocks forever): they, broken
    links and unreadable folders are skipped with a reason.
    """
    files: list[str] = []
    skipped: list[Skip] = []
    hidden: list[str] = []
    root_id = _dir_id(os.stat(root))
    seen = {root_id: ""}  # real folder -> the prefix it is listed under
    # this run's output folder is left out where it is found; when it is the root, the files it writes there
    own = outputs.names if outputs is not None and outputs.folder == root_id else None
    below = outputs.folder if outputs is not None and own is None else None
    real = [""]  # folders to list, as prefixes ("" is the root, else "a/b/")
    links: deque[tuple[str, tuple[int, int]]] = deque()  # linked folders, in the order found
    while real or links:
        if real:
            prefix = real.pop()
        else:
            prefix, ident = links.popleft()
            if ident in seen:
                skipped.append(_listed_twice(prefix, seen[ident]))
                continue
            seen[ident] = prefix
        for entry in _list_folder(root, prefix, skipped):
            rel = prefix + entry.name
            kind = _entry_kind(entry)
            if own is not None and not prefix and kind != "dir" and own.fullmatch(entry.name):
                continue  # this run's shard or manifest, beside the images
            ident = _dir_id(entry.stat()) if kind == "dir" else None
            if ident is not None and ident == below:
                continue  # this run's output folder
            if entry.name.startswith("."):
                hidden.append(rel if ident is None else rel + "/")
            elif kind == "file":
                files.append(rel)
            elif ident is None:
                skipped.append(Skip(rel, kind))
            elif entry.is_symlink():
                links.append((rel + "/", ident))
            elif ident in seen:  # a bind mount of a folder above it
                skipped.append(_listed_twice(rel + "/", seen[ident]))
            else:
                seen[ident] = rel + "/"
                real.append(rel + "/")
    files.sort()
    return Walk(files, skipped, sorted(hidden))


def hidden_note(hidden: list[str]) -> list[str]:
    """The summary note for the hidden entries :func:`walk` left out (``left out 3 hidden files
    (._*, .DS_Store) and 1 hidden folder (.git)``), as a list: empty when there were none."""
    parts = []
    for what, names in (("file", [h for h in hidden if h[-1] != "/"]), ("folder", [h for h in hidden if h[-1] == "/"])):
        kinds = sorted(
            {"._*" if b.startswith("._") else printable(b) for b in (n.rstrip("/").rsplit("/", 1)[-1] for n in names)}
        )
        if kinds:
            shown = ", ".join(kinds[:3]) + (", ..." if len(kinds) > 3 else "")
            parts.append(f"{len(names)} hidden {what}{'s' * (len(names) > 1)} ({shown})")
    return [f"left out {' and '.join(parts)}: names starting with '.' are not read"] if parts else []


def _list_folder(root: str, prefix: str, skipped: list[Skip]) -> list[os.DirEntry[str]]:
    """The entries of ``root/prefix`` by name; an unreadable subfolder is a skip (the root an error)."""
    try:
        return sorted(os.scandir(os.path.join(root, prefix)), key=lambda e: e.name)
    except OSError as e:
        if not prefix:
            raise
        skipped.append(Skip(prefix.rstrip("/"), f"cannot list folder: {e.strerror or e}"))
        return []


def _listed_twice(prefix: str, first: str) -> Skip:
    where = first.rstrip("/") or "the source folder itself"
    return Skip(prefix.rstrip("/"), f"folder listed twice: already read as {where} (a link loop, or a second link)")


def _dir_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _entry_kind(entry: os.DirEntry[str]) -> str:
    """``"file"`` (regular, after links), ``"dir"``, or why the entry is not read."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file(follow_symlinks=False):  # the folder listing's own type: no system call per file
            return "file"
        mode = entry.stat().st_mode  # a link, or a special file
    except OSError as e:
        if entry.is_symlink():
            return f"broken symbolic link: {e.strerror or e}"
        return f"cannot read: {e.strerror or e}"
    return "file" if stat.S_ISREG(mode) else f"not a regular file ({_special_kind(mode)})"


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_kind(mode: int) -> str:
    return next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")


def read_regular(path: str) -> bytes:
    """The bytes of the regular file ``path``; ``OSError`` for anything else (never blocks on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:  # checked before open() wraps the descriptor: open() refuses a folder without closing it
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{path} is not a regular file ({'a folder' if stat.S_ISDIR(mode) else _special_kind(mode)})")
        f = open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return f.read()
