"""A flat folder of images (labels from a path pattern or ``.cls`` sidecars) as a write source."""

from __future__ import annotations

import os
import re
from typing import Any

from shardpipe.write.sources.base import (
    IMAGE_SUFFIXES,
    SIDECARS,
    Record,
    Scan,
    Skip,
    Source,
    apply_labels,
    hidden_note,
    make_key,
    strip_suffix,
    suffix_of,
    unique_keys,
    walk,
)

#: the longest a user's label pattern may take on one file name (with the ``regex`` package;
#: plain ``re`` has no time bound: see ``LabelPattern``)
LABEL_MATCH_SECONDS = 2.0


class LabelPattern:
    """A user's ``--label-pattern``, compiled once and searched with a time bound per file name.

    With the ``regex`` package installed (``pip install regex``; in the test extra) a search
    that runs past ``LABEL_MATCH_SECONDS`` is a ``ValueError`` naming the pattern and the file
    (a pattern with catastrophic backtracking). Without it, Python's ``re`` runs the search
    unbounded: the pattern is the user's own, so only the user's input can make it slow.
    """

    def __init__(self, pattern: str):
        self.pattern = pattern
        try:
            import regex as engine  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - the test extra installs regex
            engine = re
        self._timed = engine is not re
        try:
            self._regex = engine.compile(pattern)
        except (re.error, getattr(engine, "error", re.error)) as e:
            raise ValueError(f"label pattern {pattern!r} is not a valid regular expression: {e}") from None
        if self._regex.groups < 1:
            raise ValueError(f"label pattern {pattern!r} needs a group, e.g. r'^([a-z]+)_\\d+'")

    def label(self, name: str) -> str | None:
        """The label group of the first match in ``name``, or None when it does not match."""
        try:
            m = self._regex.search(name, timeout=LABEL_MATCH_SECONDS) if self._timed else self._regex.search(name)
        except TimeoutError:
            raise ValueError(
                f"label pattern {self.pattern!r} ran for over {LABEL_MATCH_SECONDS:g} s on file name {name[:200]!r} "
                "(a pattern that backtracks catastrophically?): simplify it, e.g. avoid nested repeats like (a+)+"
            ) from None
        if m is None:
            return None
        return m.group("label") if "label" in self._regex.groupindex else m.group(1)


class FolderSource(Source):
    """Every image file under ``root`` (recursively), keyed by its relative path.

    Labels come from ``label_pattern`` (a regex searched in the relative path; its
    ``label`` group or first group is the label: integers stay, names map to sorted
    indices), or else from a ``.cls`` sidecar file beside the image. A ``.json``
    sidecar adds extra fields. Files matching no image or sidecar are skipped and listed.
    """

    kind = "folder"
    path_options = ("label_pattern",)

    def __init__(self, root: str | os.PathLike[str], label_pattern: str | None = None):
        self.root = os.fspath(root)
        self.label_pattern = label_pattern
        self._regex = LabelPattern(label_pattern) if label_pattern else None

    def scan(self) -> Scan:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"source folder not found: {self.root}")
        files, skipped, hidden = walk(self.root, self.outputs)
        present = set(files)
        records: list[Record] = []
        used: set[str] = set()
        label_values: list[str | None] = []
        for rel in files:
            suffix = suffix_of(rel)
            if suffix not in IMAGE_SUFFIXES:
                continue
            stem = strip_suffix(rel)
            sidecars = tuple(os.path.join(self.root, f"{stem}.{s}") for s in SIDECARS if f"{stem}.{s}" in present)
            used.update(f"{stem}.{s}" for s in SIDECARS if f"{stem}.{s}" in present)
            value: str | None = None
            if self._regex is not None:
                value = self._regex.label(rel)
                if value is None:
                    skipped.append(Skip(rel, f"label pattern {self.label_pattern!r} does not match"))
                    continue
                sidecars = tuple(s for s in sidecars if not s.endswith(".cls"))
            records.append(Record(make_key(stem), os.path.join(self.root, rel), None, None, rel, sidecars))
            label_values.append(value)
        for rel in files:
            if suffix_of(rel) not in IMAGE_SUFFIXES and rel not in used:
                skipped.append(
                    Skip(rel, f"not an image file (.{suffix_of(rel)})" if suffix_of(rel) else "not an image file")
                )
        names = None
        if self._regex is not None:
            records, names = apply_labels(records, label_values)
        return Scan(unique_keys(records), sorted(skipped), names, hidden_note(hidden))

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.root, "label_pattern": self.label_pattern}
