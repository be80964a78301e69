"""An ImageFolder tree (``root/<class>/<image>``) as a write source."""

from __future__ import annotations

import os
from typing import Any

from shardpipe.write.sources.base import (
    IMAGE_SUFFIXES,
    Record,
    Scan,
    Skip,
    Source,
    hidden_note,
    make_key,
    strip_suffix,
    suffix_of,
    unique_keys,
    walk,
)


class ImageFolderSource(Source):
    """``root/<class>/**/<image>``: label = index of the class folder in the sorted names."""

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.fspath(root)

    def scan(self) -> Scan:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"source folder not found: {self.root}")
        classes = sorted(
            e.name
            for e in os.scandir(self.root)
            if e.is_dir() and not e.name.startswith(".") and not self._is_output(e)
        )
        if not classes:
            raise ValueError(f"{self.root} has no class folders: an ImageFolder tree is root/<class>/<image>")
        index = {c: i for i, c in enumerate(classes)}
        files, skipped, hidden = walk(self.root, self.outputs)
        records = []
        for rel in files:
            cls, slash, _ = rel.partition("/")
            if not slash:
                skipped.append(Skip(rel, "not in a class folder"))
            elif suffix_of(rel) not in IMAGE_SUFFIXES:
                skipped.append(
                    Skip(rel, f"not an image file (.{suffix_of(rel)})" if suffix_of(rel) else "not an image file")
                )
            else:
                records.append(Record(make_key(strip_suffix(rel)), os.path.join(self.root, rel), index[cls], None, rel))
        return Scan(unique_keys(records), sorted(skipped), classes, hidden_note(hidden))

    def _is_output(self, entry: os.DirEntry[str]) -> bool:
        """Whether ``entry`` is this write's output folder (its shards are no class)."""
        return self.outputs is not None and (entry.stat().st_dev, entry.stat().st_ino) == self.outputs.folder

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.root}
