"""Write samples into numbered tar (or tar.gz) shards, with a manifest.

Each shard is one ``shardpipe.format.tar.writer.TarWriter`` stream, byte-for-byte
reproducible. Each shard is written under a
temporary name and renamed when complete, so a crash never leaves a partial shard
under a final name; ``manifest.json`` lists each shard's sample count, size and sha256,
and ``manifest.index`` where each sample starts (``shardpipe.format.index``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shardpipe.errors import ShardpipeError
from shardpipe.format.index import ShardIndex, index_name, write_index
from shardpipe.format.manifest import MANIFEST, build_manifest, shard_entry, write_manifest
from shardpipe.format.tar.writer import TarWriter
from shardpipe.io.files import atomic_write, dirname_url, join_url
from shardpipe.io.urls import check_url

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
    (``%(n)d``) or none at all would name several shards alike or fail mid-write.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ShardPatternError(f"shard pattern must be a non-empty string, not {pattern!r}")
    usage = "it needs a %d or {} placeholder (exactly one) for the shard number, e.g. out/train-%06d.tar"
    percent = [m for m in _PERCENT.finditer(pattern) if m.group(0) != "%%"]
    if pattern.replace("%%", "").count("%") != len(percent):
        raise ShardPatternError(f"shard pattern {pattern!r} has a % that is not a %d placeholder: {usage}")
    if percent:
        if len(percent) > 1:
            raise ShardPatternError(f"shard pattern {pattern!r} has {len(percent)} placeholders, not one: {usage}")
        _check_width(pattern, percent[0].group(1), usage)
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
    _check_width(pattern, fields[0].group(2), usage)
    return "{}"


def _check_width(pattern: str, width: str | None, usage: str) -> None:
    if width and int(width) > MAX_WIDTH:
        raise ShardPatternError(f"shard pattern {pattern!r} pads the number to {width} digits (at most {MAX_WIDTH})")


def shard_name(pattern: str, index: int) -> str:
    """Fill a ``%06d``-style or ``{:06d}``-style pattern with the shard index (checked by ``check_pattern``)."""
    if check_pattern(pattern) == "%":
        return pattern % index
    return pattern.format(index)


def brace_range(pattern: str, count: int) -> str:
    """Shards ``0..count-1`` of ``pattern`` as one brace pattern that the readers accept
    (``out/train-%06d.tar``, 3 -> ``out/train-{000000..000002}.tar``)."""
    percent = "%" in pattern
    m = re.search(r"%0?\d*d" if percent else r"\{[^{}]*\}", pattern)
    if m is None or count <= 1:
        return shard_name(pattern, 0)

    def text(part: str) -> str:  # the pattern's literal text, unescaped
        return part.replace("%%", "%") if percent else part.replace("{{", "{").replace("}}", "}")

    def number(i: int) -> str:
        return m.group(0) % i if percent else m.group(0).format(i)

    return f"{text(pattern[: m.start()])}{{{number(0)}..{number(count - 1)}}}{text(pattern[m.end() :])}"


class ShardWriter:
    """Write samples into numbered shards, rolling over at ``maxcount`` samples or ``maxsize`` bytes.

    ``maxsize`` counts the uncompressed tar bytes; a shard closes before the sample that
    would start beyond it, so no shard exceeds ``maxsize`` by more than one sample.

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
        maxsize: int = 1 << 30,
        compress: str | None = None,
        start_shard: int = 0,
        manifest: bool = True,
        metadata: Mapping[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        if maxcount < 1 or maxsize < 1:
            raise ValueError("maxcount and maxsize must be positive")
        check_url(pattern)
        shard_name(pattern, 0)  # validate the pattern now, not at the first rollover
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
        if self._tar is not None and (self._tar.samples >= self.maxcount or self._tar.tar_size >= self.maxsize):
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
        """Write the index sidecar, then ``manifest.json`` (which names it); returns the manifest URL."""
        folder = dirname_url(self._name or shard_name(self.pattern, 0))
        url = join_url(folder, MANIFEST)
        write_index(join_url(folder, index_name(MANIFEST)), self._shard_indexes(folder), self.storage_options)
        return write_manifest(url, self.manifest(), self.storage_options)

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
