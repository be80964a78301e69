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
    make_key,
    strip_suffix,
    suffix_of,
    unique_keys,
    walk,
)


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
        self._regex = re.compile(label_pattern) if label_pattern else None
        if self._regex is not None and self._regex.groups < 1:
            raise ValueError(f"label pattern {label_pattern!r} needs a group, e.g. r'^([a-z]+)_\\d+'")

    def scan(self) -> Scan:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"source folder not found: {self.root}")
        files = walk(self.root)
        present = set(files)
        records: list[Record] = []
        skipped: list[Skip] = []
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
                m = self._regex.search(rel)
                if m is None:
                    skipped.append(Skip(rel, f"label pattern {self.label_pattern!r} does not match"))
                    continue
                value = m.group("label") if "label" in self._regex.groupindex else m.group(1)
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
        return Scan(unique_keys(records), sorted(skipped), names)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.root, "label_pattern": self.label_pattern}
