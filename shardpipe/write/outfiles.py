"""Small files beside the shards: the progress file of an interrupted write, temp files, a run's lock.

Local paths use ``os``; anything else goes through fsspec, so ``s3://`` and ``gs://``
outputs resume the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from shardpipe.errors import OutputInUseError
from shardpipe.format.index import index_name
from shardpipe.io.files import atomic_write, is_local, join_url, local_path
from shardpipe.write.shard_writer import MANIFEST, shard_file_regex, shard_name
from shardpipe.write.sources.base import Outputs

log = logging.getLogger("shardpipe")

PROGRESS = MANIFEST + ".progress"


def read_json(url: str, storage_options: dict[str, Any] | None) -> Any:
    """A small JSON file, or ``None`` when it does not exist."""
    if is_local(url):
        path = local_path(url)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return json.loads(f.read())
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def write_json(url: str, value: Any, storage_options: dict[str, Any] | None) -> None:
    with atomic_write(url, storage_options=storage_options) as f:
        f.write(json.dumps(value, indent=1, sort_keys=True).encode())


def remove(url: str, storage_options: dict[str, Any] | None) -> None:
    if is_local(url):
        with contextlib.suppress(FileNotFoundError):
            os.remove(local_path(url))
        return
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def size(url: str, storage_options: dict[str, Any] | None) -> int | None:
    if is_local(url):
        path = local_path(url)
        return os.path.getsize(path) if os.path.exists(path) else None
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs.size(path) if fs.exists(path) else None


def remove_stale_temps(pattern: str) -> None:
    """Delete temporary files left by a killed local run (``<shard>.<8 hex>.tmp``)."""
    if not is_local(pattern):
        return
    first = local_path(shard_name(pattern, 0))
    folder = os.path.dirname(first) or "."
    if not os.path.isdir(folder):
        return
    stem = shard_file_regex(pattern).pattern  # literal braces and %% as well
    temp = re.compile(rf"^(?:{stem}|{re.escape(MANIFEST)}|{re.escape(PROGRESS)})\.[0-9a-f]{{8}}\.tmp$")
    for name in os.listdir(folder):
        if temp.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


def own_files(pattern: str) -> Outputs | None:
    """The files a local write with ``pattern`` makes, for a folder source to leave out (None: not local, or
    the output folder does not exist yet): shards, manifest, index, progress file, their temporary names."""
    if not is_local(pattern):
        return None
    folder = os.path.dirname(local_path(shard_name(pattern, 0))) or "."
    try:
        st = os.stat(folder)
    except OSError:
        return None
    fixed = "|".join(re.escape(n) for n in (MANIFEST, index_name(MANIFEST), PROGRESS))
    names = re.compile(rf"(?:{shard_file_regex(pattern).pattern}|{fixed})(?:\.[0-9a-f]{{8}}\.tmp)?")
    return Outputs((st.st_dev, st.st_ino), names)


def read_progress(folder: str, fingerprint: dict[str, Any], storage_options: dict[str, Any] | None) -> Any:
    """The progress file of an interrupted run with this ``fingerprint``, or ``None`` when there is none.

    Raises ``ValueError`` when it belongs to a run with other options or inputs.
    """
    url = join_url(folder, PROGRESS)
    state = read_json(url, storage_options)
    if state is None:
        log.info("no interrupted run to resume at %s: writing from the start", url)
        return None
    old = state.get("fingerprint", {})
    if old != fingerprint:
        diff = [k for k in ("options", "inputs") if old.get(k) != fingerprint[k]]
        raise ValueError(
            f"cannot resume from {url}: the interrupted run had different {' and '.join(diff)}; "
            "rerun with the same source and options, or without --resume to start over"
        )
    return state


def finished_manifest(
    folder: str, fingerprint: dict[str, Any], storage_options: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The manifest of a finished run with this ``fingerprint`` whose shards are all intact, else ``None``."""
    if read_json(join_url(folder, PROGRESS), storage_options) is not None:
        return None
    manifest = read_json(join_url(folder, MANIFEST), storage_options)
    if manifest is None or any(manifest.get(k) != v for k, v in fingerprint.items()):
        return None
    if all(size(join_url(folder, e["name"]), storage_options) == e["bytes"] for e in manifest["shards"]):
        return manifest
    return None


#: a file system that cannot lock (some NFS and FUSE mounts): the run goes on unguarded
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextlib.contextmanager
def folder_lock(folder: str, command: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the local folder itself (nothing is made in it) for the block:
    one ``shardpipe write`` or ``restart`` (``command``) at a time writes into a folder.

    Raises ``OutputInUseError`` at once when another process holds it. The kernel drops the lock
    when its holder dies (and its forked children), so a killed run never blocks the next.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"another shardpipe write or restart is writing into {folder} (it holds a lock on the folder): "
                "wait for it to end, or write into another folder"
            ) from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            log.warning("cannot lock %s (%s): a second run into it would not be stopped (%s)", folder, e, command)
        yield
    finally:
        os.close(fd)  # (releases the lock)
