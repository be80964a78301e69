"""Shard locations as users type them: catch mistyped URLs, expand braces and globs, spot manifests.

Every place that takes a URL or path from a user (``ShardDataset``, ``IndexedDataset``,
``shardpipe write``/``index``/``inspect``/``verify``) goes through these functions, so
one rule decides what a manifest is, what a glob is and what looks like a typo.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from braceexpand import braceexpand

from shardpipe.errors import ShardNotFoundError
from shardpipe.io.files import is_local, local_path

if TYPE_CHECKING:
    from shardpipe.io.remote import ReadOptions

#: storage schemes whose URLs a user may mistype (``s3:/bucket`` for ``s3://bucket``)
KNOWN_SCHEMES = (
    "s3", "s3a", "gs", "gcs", "http", "https", "file", "az", "abfs", "abfss", "adl",
    "hf", "hdfs", "webhdfs", "oss", "oci", "sftp", "ssh", "ftp", "memory",
)  # fmt: skip
_MISTYPED = re.compile(rf"^({'|'.join(KNOWN_SCHEMES)}):(?!//)(.*)$", re.IGNORECASE | re.DOTALL)
_GLOB_CHARS = re.compile(r"[*?\[]")


class MistypedURLError(ValueError):
    """A path that looks like a URL with a typo (``s3:/bucket``): refused, not written as a local folder."""


def check_url(url: str) -> str:
    """Return ``url``, or raise :class:`MistypedURLError` naming the URL it likely meant.

    ``s3:/bucket/x`` and ``s3:bucket/x`` are local paths to the operating system (a
    folder named ``s3:``) but never what a user means; ``./s3:/x`` still names that folder.
    """
    m = _MISTYPED.match(url)
    if m is None:
        return url
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "file":
        meant = f"file://{rest if rest.startswith('/') else '/' + rest}"
    else:
        meant = f"{scheme}://{rest.lstrip('/')}"
    raise MistypedURLError(
        f"{url!r} looks like a mistyped URL: did you mean {meant!r}? "
        f"(for a local folder named '{m.group(1)}:', write './{url}')"
    )


def split_patterns(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The patterns of a URLS argument: a ``::``-joined string or a list; each checked by :func:`check_url`."""
    if isinstance(urls, (str, os.PathLike)):
        patterns = os.fspath(urls).split("::")
    else:
        patterns = [os.fspath(u) for u in urls]
    for pattern in patterns:
        check_url(pattern)
    return patterns


def is_manifest(pattern: str) -> bool:
    """True when ``pattern`` names manifests (``.json``) rather than shards."""
    return pattern.endswith(".json")


def single_manifest(urls: Any) -> str | None:
    """The manifest URL when ``urls`` is exactly one manifest (no list, braces or glob), else ``None``.

    What needs one dataset description (the block shuffle, ``verify``'s totals) asks this.
    """
    if not isinstance(urls, (str, os.PathLike, list, tuple)):
        return None
    patterns = split_patterns(urls)
    if len(patterns) != 1 or not is_manifest(patterns[0]) or "{" in patterns[0] or has_glob(patterns[0]):
        return None
    return patterns[0]


def has_glob(url: str) -> bool:
    """True when ``url`` holds glob characters to expand (a local file of that exact name is taken as is)."""
    if url.startswith("pipe:"):
        return False  # a shell command: its own business
    if url.startswith(("http://", "https://")):
        return "*" in url  # '?' starts a query string there
    if not _GLOB_CHARS.search(url):
        return False
    return not (is_local(url) and os.path.exists(local_path(url)))


def natural_key(url: str) -> list[Any]:
    """Sort key putting ``train-9`` before ``train-10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", url)]


def expand_glob(
    url: str, storage_options: dict[str, Any] | None = None, read_options: ReadOptions | None = None
) -> list[str]:
    """The files matching the glob ``url`` (local or fsspec), in natural order; ShardNotFoundError if none.

    A remote listing is one request under ``read_options``' retry policy (StoreUnreachableError after it).
    """
    if url.startswith(("http://", "https://")):
        raise ValueError(
            f"cannot expand {url!r}: an HTTP server cannot list its files; name the shards with a brace pattern "
            "instead, e.g. https://host/train-{000000..000099}.tar"
        )
    if is_local(url):
        prefix = "file://" if url.startswith("file://") else ""
        found = [prefix + p for p in glob.glob(local_path(url), recursive=True) if os.path.isfile(p)]
    else:
        from shardpipe.io.clients import reading_fs
        from shardpipe.io.remote import ReadOptions, call_store

        scheme = url.split("://", 1)[0]
        fs, path = reading_fs(url, storage_options)
        entries = call_store(
            fs, "glob", path, detail=True, url=url, what="listing", options=read_options or ReadOptions()
        )
        found = [f"{scheme}://{p}" for p, info in entries.items() if info.get("type") != "directory"]
    if not found:
        raise ShardNotFoundError(
            f"no file matches {url!r}: check the folder and the pattern "
            "(or name the shards with a brace pattern, e.g. out/train-{000000..000009}.tar)"
        )
    return sorted(found, key=natural_key)


def expand_pattern(
    pattern: str, storage_options: dict[str, Any] | None = None, read_options: ReadOptions | None = None
) -> list[str]:
    """Brace ranges first (``{000000..000099}``, ``{a,b}``), then globs (``*``, ``?``, ``[..]``, ``**``)."""
    urls: list[str] = []
    for url in braceexpand(check_url(pattern)):
        urls += expand_glob(url, storage_options, read_options) if has_glob(url) else [url]
    return urls
