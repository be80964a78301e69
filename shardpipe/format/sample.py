"""The webdataset sample format: how tar member names split into key and extension.

A sample is the run of consecutive tar members that share a key. The key and the
extension split at the first dot of the member's basename:

    dir/n0144.cls   -> key "dir/n0144", ext "cls"
    a.b/c.d.jpg     -> key "a.b/c",     ext "d.jpg"   (dots in directories are kept)

Extensions are lower-cased. Members whose basename is ``__*__`` (with or without an
extension) are metadata, not samples. Members whose basename has no dot belong to
no sample and are skipped (webdataset does the same).
"""

from __future__ import annotations

import logging
from typing import Any

from shardpipe.format.fields import last_extension

log = logging.getLogger("shardpipe")

#: Extensions decoded as images by the decode stage.
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif"})

Sample = dict[str, Any]
"""A sample: ``{"__key__": str, "__url__": str, ext: value, ...}``."""


def is_image_field(ext: str) -> bool:
    """True for a field the decode stage decodes as an image (``jpg``, ``left.png``...)."""
    return last_extension(ext) in IMAGE_EXTENSIONS


def split_name(name: str) -> tuple[str, str] | None:
    """Split a member name into ``(key, ext)``; ``None`` for members outside any sample."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    base = name[slash + 1 : dot if dot >= 0 else len(name)]
    if base.startswith("__") and base.endswith("__") and len(base) >= 4:
        return None  # metadata member such as __index__ or __meta__.json
    if dot < 0 or dot == slash + 1:
        return None  # no extension, or a hidden file such as ".DS_Store"
    return name[:dot], name[dot + 1 :].lower()


def control_character(text: str) -> str | None:
    """The first control character in ``text`` (C0, DEL or C1), which tar tools and readers treat
    differently; ``None`` if it has none."""
    return next((c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)


def check_key(key: str) -> None:
    """Reject keys that would not read back as written (see the module docstring), and keys
    whose member names would escape the folder that ``tar -x`` extracts into (absolute,
    ``..``), or that tar tools and webdataset readers read differently (empty or ``.``
    path components, backslashes, NUL and control characters)."""
    if not key:
        raise ValueError("sample key must not be empty")
    bad = control_character(key)
    if bad is not None:
        raise ValueError(f"sample key {key!r} contains the control character {bad!r}")
    if "\\" in key:
        raise ValueError(f"sample key {key!r} contains a backslash: Windows tools read it as a path separator")
    if key.startswith("/"):
        raise ValueError(f"sample key {key!r} is an absolute path: tar would extract it outside its folder")
    parts = key.split("/")
    if ".." in parts:
        raise ValueError(f"sample key {key!r} contains a '..' component: tar would extract it outside its folder")
    if "" in parts or "." in parts:
        raise ValueError(f"sample key {key!r} has an empty or '.' path component")
    base = key.rsplit("/", 1)[-1]
    if "." in base:
        raise ValueError(
            f"sample key {key!r} has a dot in its basename: readers split at the first "
            "dot, so it would read back as another key; replace the dot (e.g. with '_')"
        )
    if base.startswith("__") and base.endswith("__"):
        raise ValueError(f"sample key {key!r} is reserved for metadata (__*__)")


_warned_dotted = False


def warn_dotted_extension(name: str, key: str, ext: str) -> None:
    """Log once per process when a multi-dot basename splits in a surprising place."""
    global _warned_dotted
    if not _warned_dotted:
        _warned_dotted = True
        log.warning(
            "tar member %r reads as key %r with extension %r: keys end at the first dot "
            "of the file name; rename files with dots in their names if this is not meant",
            name,
            key,
            ext,
        )
