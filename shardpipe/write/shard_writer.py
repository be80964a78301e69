"""Write samples into numbered tar (or tar.gz) shards, with a manifest.

Each shard is one ``shardpipe.format.tar.writer.TarWriter`` stream, byte-for-byte
reproducible. Each shard is written under a
temporary name and renamed when complete, so a crash never leaves a partial shard
under a final name; ``manifest.json`` lists each shard's sample count, size and sha256,
and ``manifest.index`` where each sample starts (``shardpipe.format.index``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Collection, Mapping
from typing import Any

from shardpipe.errors import ShardpipeError
from shardpipe.format.index import ShardIndex, index_name, write_index
from shardpipe.format.manifest import MANIFEST, build_manifest, shard_entry, write_manifest
from shardpipe.format.tar.writer import TarWriter
from shardpipe.io.files import atomic_write, dirname_url, is_local, join_url, local_path
from shardpipe.io.urls import check_url, natural_key

log = logging.getLogger("shardpipe")

#: the widest zero-padded shard number a pattern may ask for
MAX_WIDTH = 32
_PERCENT = re.compile(r"%(?:%|0?(\d*)d)")  # %% (a literal %) or %d, %6d, %06d
_BRACE = re.compile(r"\{\{|\}\}|\{(0?)(?::0?(\d*)d)?\}")  # {{ }} (literal braces) or {}, {0}, {:06d}, {0:06d}


class ShardPatternError(ShardpipeError, ValueError):
    """An output pattern without exactly one shard-number placeholder (a usage error)."""


def check_pattern(pattern: str) -> str:
    """The placeholder style of ``pattern`` (``"%"`` or ``"{}"``), or ``ShardPatternError``.

    A pattern holds exactly one shard number: ``%d``/``%06d`` (``%%`` is a literal ``%``) or
    ``{}``/``{:06d}`` (``{{``/``}}`` are literal braces); a second one, a named field
    (``%(n)d``) or none at all would name several shards alike or fail mid-write. The number
    must be in the file name, not in a folder name (see ``_check_in_file_name``).
    """
    style = _check_placeholders(pattern)
    _check_in_file_name(pattern, _placeholder(pattern, style))
    return style


def _check_placeholders(pattern: str) -> str:
    """The placeholder style of ``pattern``, or ``ShardPatternError`` unless it has exactly one."""
    if not isinstance(pattern, str) or not pattern:
        raise ShardPatternError(f"shard pattern must be a non-empty string, not {pattern!r}")
    usage = "it needs a %d or {} placeholder (exactly one) for the shard number, e.g. out/train-%06d.tar"
    percent = [m for m in _PERCENT.finditer(pattern) if m.group(0) != "%%"]
    if pattern.replace("%%", "").count("%") != len(percent):
        raise ShardPatternError(f"shard pattern {pattern!r} has a % that is not a %d placeholder: {usage}")
    if percent:
        if len(percent) > 1:
            raise ShardPatternError(f"shard pattern {pattern!r} has {len(percent)} placeholders, not one: {usage}")
        _check_width(pattern, percent[0], "%")
        return "%"
    fields = [m for m in _BRACE.finditer(pattern) if m.group(0) not in ("{{", "}}")]
    rest = _BRACE.sub("", pattern)
    if "{" in rest or "}" in rest:
        raise ShardPatternError(f"shard pattern {pattern!r} has a brace that is not a {{}} placeholder: {usage}")
    if not fields:
        example = pattern.replace("*", "%06d", 1) if "*" in pattern else "out/train-%06d.tar"
        raise ShardPatternError(
            f"shard pattern {pattern!r} needs a %d or {{}} placeholder for the shard number, e.g. {example!r}"
            + (" (a glob names existing files; shards to write need numbers)" if "*" in pattern else "")
        )
    if len(fields) > 1:
        raise ShardPatternError(
            f"shard pattern {pattern!r} has {len(fields)} shard-number placeholders, not one: {usage}"
        )
    _check_width(pattern, fields[0], "{}")
    return "{}"


def _check_width(pattern: str, placeholder: re.Match[str], style: str) -> None:
    """Refuse padding wider than ``MAX_WIDTH`` and padding with spaces (``%6d``: file names with
    spaces, which a brace range such as the one ``shardpipe write`` prints cannot give back)."""
    width = placeholder.group(1 if style == "%" else 2)
    if width and int(width) > MAX_WIDTH:
        raise ShardPatternError(f"shard pattern {pattern!r} pads the number to {width} digits (at most {MAX_WIDTH})")
    if _number(placeholder, style, 0).startswith(" "):
        text = placeholder.group(0)
        zeros = f"%0{width}d" if style == "%" else text.replace(":", ":0", 1)
        raise ShardPatternError(
            f"shard pattern {pattern!r} pads the shard number with spaces ({text}), which puts spaces in the "
            f"file names; pad with zeros: {zeros}"
        )


def _check_in_file_name(pattern: str, placeholder: re.Match[str]) -> None:
    """Refuse a shard number in a folder name (``out/%03d/shard.tar``): manifest.json goes beside
    the first shard and lists shards by file name, so shards in several folders would all be
    listed under one (wrong) name."""
    if "/" not in pattern[placeholder.end() :]:
        return
    folder = pattern[: placeholder.start()].rpartition("/")[0]
    stem, dot, ext = pattern.rpartition("/")[2].partition(".")
    example = f"{folder}/" if folder else ""
    example += f"{stem}-{placeholder.group(0)}{dot}{ext}"
    raise ShardPatternError(
        f"shard pattern {pattern!r} puts the shard number in a folder name: the shards would land in "
        "separate folders, but manifest.json (beside the first shard) lists shards by file name only; "
        f"put the number in the file name, e.g. {example!r}"
    )


def _placeholder(pattern: str, style: str) -> re.Match[str]:
    """The shard-number placeholder of a pattern of ``style`` (the escapes ``%%``, ``{{``, ``}}`` skipped)."""
    regex, escapes = (_PERCENT, ("%%",)) if style == "%" else (_BRACE, ("{{", "}}"))
    return next(m for m in regex.finditer(pattern) if m.group(0) not in escapes)


def _number(placeholder: re.Match[str], style: str, index: int) -> str:
    """The placeholder filled with ``index`` (``%06d``, 7 -> ``000007``)."""
    return placeholder.group(0) % index if style == "%" else placeholder.group(0).format(index)


def _literal(text: str, style: str) -> str:
    """A placeholder-free part of a pattern with its escapes undone (``%%`` -> ``%``, ``{{`` -> ``{``)."""
    return text % () if style == "%" else text.format()


def _brace_escape(text: str) -> str:
    """``text`` with backslashes and braces escaped, so that brace expansion keeps it literal."""
    return re.sub(r"[\\{}]", lambda m: "\\" + m.group(0), text)


def shard_name(pattern: str, index: int) -> str:
    """Fill a ``%06d``-style or ``{:06d}``-style pattern with the shard index (checked by ``check_pattern``)."""
    if check_pattern(pattern) == "%":
        return pattern % index
    return pattern.format(index)


def brace_range(pattern: str, count: int) -> str:
    """Shards ``0..count-1`` of ``pattern`` as one brace pattern that the readers accept
    (``out/train-%06d.tar``, 3 -> ``out/train-{000000..000002}.tar``).

    Literal braces and backslashes in the names are escaped (``set{{a}}-{:02d}.tar``, 2 ->
    ``set\\{a\\}-{00..01}.tar``), so brace expansion gives back exactly the names written.
    """
    if count <= 1:
        return _brace_escape(shard_name(pattern, 0))
    style = check_pattern(pattern)
    m = _placeholder(pattern, style)
    head, tail = (_brace_escape(_literal(part, style)) for part in (pattern[: m.start()], pattern[m.end() :]))
    return f"{head}{{{_number(m, style, 0)}..{_number(m, style, count - 1)}}}{tail}"


def shard_file_regex(pattern: str) -> re.Pattern[str]:
    """The file names ``pattern`` gives its shards, any number (``s-%06d.tar`` -> ``s-\\d{6,}\\.tar``)."""
    style = check_pattern(pattern)
    m = _placeholder(pattern, style)
    name_start = pattern.rfind("/", 0, m.start()) + 1
    head, tail = _literal(pattern[name_start : m.start()], style), _literal(pattern[m.end() :], style)
    zero = _number(m, style, 0)  # as wide as the smallest number: %06d -> 000000
    return re.compile(re.escape(head) + rf"\d{{{len(zero)},}}" + re.escape(tail))


def stale_shards(pattern: str, written: Collection[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Files in the shards' folder that ``pattern`` could have named but that are not in ``written``
    (file names): an earlier run's shards, which a glob over the folder would read with the new ones.

    Only lists them (users' files are never deleted); a folder that cannot be listed gives ``[]``.
    """
    folder = dirname_url(shard_name(pattern, 0))
    regex = shard_file_regex(pattern)
    try:
        names = _file_names(folder, storage_options)
    except Exception as e:  # noqa: BLE001 - a check after the write: a store's listing error must not fail it
        log.debug("cannot list %s to look for stale shards: %s", folder, e)
        return []
    stale = [n for n in names if regex.fullmatch(n) and n not in written]
    return [join_url(folder, n) for n in sorted(stale, key=natural_key)]


def _file_names(folder: str, storage_options: dict[str, Any] | None) -> list[str]:
    """The names of the files (not folders) directly in ``folder``, local or remote."""
    if is_local(folder):
        with os.scandir(local_path(folder) or ".") as entries:
            return [e.name for e in entries if e.is_file()]
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    return [posixpath.basename(p.rstrip("/")) for p in fs.find(path, maxdepth=1)]


def warn_stale_shards(pattern: str, written: Collection[str], storage_options: dict[str, Any] | None = None) -> None:
    """Log a warning naming the :func:`stale_shards` beside this run's shards, if any."""
    stale = stale_shards(pattern, written, storage_options)
    if not stale:
        return
    names = ", ".join(s.rsplit("/", 1)[-1] for s in stale[:3]) + (", ..." if len(stale) > 3 else "")
    log.warning(
        "%d file(s) in %s match the shard pattern but were not written by this run (%s): manifest.json lists "
        "only this run's shards, but a glob over the folder would read these too; delete them or write into "
        "an empty folder",
        len(stale), dirname_url(stale[0]) or ".", names,
    )  # fmt: skip


#: shard names that say gzip: readers that go by the name (webdataset's) gunzip these and no others
GZIP_SUFFIXES = (".tar.gz", ".tgz")


def check_compress_name(name: str, compress: str | None) -> None:
    """Refuse a shard name that says another compression than the shard has: shardpipe reads either
    (it looks at the bytes), but webdataset and tar(1) go by the name, and would fail on it."""
    gz_name = name.lower().endswith(GZIP_SUFFIXES)
    if compress == "gz" and not gz_name:
        raise ValueError(f"gzip shards need a .tar.gz or .tgz name (readers go by it), not {name!r}")
    if compress is None and gz_name:
        raise ValueError(f"shard {name!r} is named as gzip but written plain: pass compress='gz' or name it .tar")


#: the manifest's own keys, which ``metadata`` may not replace
RESERVED = frozenset({"format", "shards", "samples", "bytes", "index"})


class ShardWriter:
    """Write samples into numbered shards, rolling over at ``maxcount`` samples or ``maxsize`` bytes.

    ``maxsize`` counts the uncompressed tar bytes (``None``: no limit); a shard closes before the
    sample that would start beyond it, so no shard exceeds ``maxsize`` by more than one sample.
    ``metadata`` goes into the manifest beside its own keys (``RESERVED``), which it may not name.

    Use as a context manager; ``write(sample)`` takes a dict with ``"__key__"`` and one
    entry per extension (``"jpg": bytes``, ``"cls": int``, ``"json": dict``). On close,
    ``manifest.json`` and its index sidecar are written beside the shards. A sample is
    never split across shards.
    """

    def __init__(
        self,
        pattern: str,
        *,
        maxcount: int = 10_000,
        maxsize: int | None = 1 << 30,
        compress: str | None = None,
        start_shard: int = 0,
        manifest: bool = True,
        metadata: Mapping[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        if maxcount < 1 or (maxsize is not None and maxsize < 1):
            raise ValueError("maxcount and maxsize must be positive (maxsize=None: no limit)")
        taken = sorted(RESERVED & set(metadata or ()))
        if taken:
            raise ValueError(f"metadata keys {taken} are the manifest's own ({sorted(RESERVED)}); name them otherwise")
        check_url(pattern)
        check_compress_name(shard_name(pattern, 0), compress)  # validates the pattern now, not at a rollover
        self.pattern = pattern
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.compress = compress
        self.storage_options = storage_options
        self.write_manifest = manifest
        self.metadata = dict(metadata or {})
        self.shard_index = start_shard
        self.shards: list[dict[str, Any]] = []
        self.indexes: dict[str, ShardIndex] = {}  #: shard name -> its index (for the sidecar)
        self._ctx: Any = None
        self._tar: TarWriter | None = None
        self._name = ""

    def _open(self) -> None:
        self._name = shard_name(self.pattern, self.shard_index)
        self._ctx = atomic_write(self._name, storage_options=self.storage_options)
        f = self._ctx.__enter__()
        self._tar = TarWriter(f, self.compress)

    def _finish(self) -> None:
        if self._tar is None:
            return
        tar, self._tar = self._tar, None
        size, sha = tar.close()
        self._ctx.__exit__(None, None, None)  # renames the temporary file into place
        name = self._name.rsplit("/", 1)[-1]
        self.shards.append(shard_entry(name, tar.samples, size, sha))
        self.indexes[name] = tar.index
        self.shard_index += 1

    def write(self, sample: Mapping[str, Any]) -> None:
        if self._tar is not None and (
            self._tar.samples >= self.maxcount or (self.maxsize is not None and self._tar.tar_size >= self.maxsize)
        ):
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        self._tar.write(sample)

    def close(self) -> None:
        self._finish()
        if self.write_manifest and self.shards:
            self.write_manifest_file()

    def manifest(self) -> dict[str, Any]:
        meta = {**self.metadata, "index": index_name(MANIFEST)} if self.write_manifest else self.metadata
        return build_manifest(self.shards, meta)

    def write_manifest_file(self) -> str:
        """Write the index sidecar, then ``manifest.json`` (which names it); returns the manifest URL.

        Warns (``shardpipe`` logger) about files in the folder that the pattern could have named
        but that this manifest does not list: an earlier run's shards (see ``stale_shards``).
        """
        folder = dirname_url(self._name or shard_name(self.pattern, 0))
        url = join_url(folder, MANIFEST)
        write_index(join_url(folder, index_name(MANIFEST)), self._shard_indexes(folder), self.storage_options)
        url = write_manifest(url, self.manifest(), self.storage_options)
        warn_stale_shards(self.pattern, {e["name"] for e in self.shards}, self.storage_options)
        return url

    def _shard_indexes(self, folder: str) -> list[ShardIndex]:
        """Each listed shard's index; shards kept from an earlier run (resume) are scanned."""
        from shardpipe.write.index_job import scan_shard

        out = []
        for entry in self.shards:
            index = self.indexes.get(entry["name"])
            if index is None:
                index = scan_shard(join_url(folder, entry["name"]), self.storage_options).index
            out.append(index)
        return out

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file is removed)."""
        if self._tar is not None:
            self._tar = None
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
