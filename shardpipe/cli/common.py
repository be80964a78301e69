"""What the subcommands share: one exit-status convention and how a URLS argument is checked.

The convention (printed by every ``--help``): 0 success; 1 problems found in the data;
2 the command could not run as asked (usage error or missing input). A command first
resolves its inputs (:func:`resolve_inputs`: exit 2 when that fails), then reads the
data (exit 1 for what it finds there).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardpipe.io.remote import ReadOptions

OK = 0
DATA_PROBLEM = 1
USAGE = 2  # argparse's own status for bad arguments
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what the shell reports for Ctrl-C

EXIT_STATUS = """\
exit status:
  0  success
  1  problems found in the data: a truncated or corrupt shard, a damaged manifest,
     a shard its manifest lists but that is missing or that its store does not serve
     (a 5xx or no answer on each try), a checksum or count mismatch, an undecodable image
  2  usage error or missing input: bad arguments, a mistyped URL (s3:/bucket),
     a source, manifest or shard named on the command line that does not exist,
     or that its store does not serve (a 5xx or no answer on each try), a store
     that cannot be reached, a glob that matches nothing
  130 interrupted (Ctrl-C): a write or restart keeps what it finished (--resume goes on)
  141 the reader of its output went away (shardpipe inspect ... | head): it stops quietly"""


#: what fixes an object whose store answered each try with a 5xx or not at all (the object may be intact)
UNAVAILABLE_FIX = (
    "the store is up but failing or slow: check it, then run again; "
    '--read-options \'{"timeout": 60, "retries": 8}\' waits longer'
)

#: what to do about a file that is not a tar archive (a glob caught it)
NOT_TAR_FIX = (
    "leave it out of URLS (a narrower glob, 'out/train-*.tar', or a brace range names only the shards), "
    "or write it again if it was meant to be one"
)

#: what a terminal must not be sent: C0 and C1 control characters, DEL, and the surrogates
#: that stand for bytes that were not UTF-8 (they cannot be encoded as UTF-8 at all)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` safe to print: each control character as ``\\xNN`` (escape sequences never reach the
    terminal), each byte that was not UTF-8 (a surrogate escape) as ``\\xNN`` of that byte."""
    return _UNPRINTABLE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class InputError(Exception):
    """The inputs named on the command line cannot be used (exit status 2)."""


def fail(command: str, message: object, status: int) -> int:
    """Print ``shardpipe COMMAND: error: MESSAGE`` to stderr (``printable``: the URLs and member names
    in it come from file names) and return ``status``."""
    print(f"shardpipe {command}: error: {printable(str(message))}", file=sys.stderr)
    return status


class PrintableFormatter(logging.Formatter):
    """Log lines safe for a terminal: each line of a message (and traceback) through ``printable``."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(printable(line) for line in super().format(record).split("\n"))


def read_inputs(
    command: str, args: Any, read: Callable[[dict[str, Any] | None, ReadOptions], Any]
) -> tuple[Any, int | None]:
    """Resolve ``args.urls`` (with ``args.storage_options`` and ``args.read_options``) and run
    ``read(storage_options, read_options)``.

    Returns ``(report, None)``, or ``(None, status)`` after printing why: 2 for what the
    command line named, 1 for a problem found in the data.
    """
    from shardpipe.cli.reading import parse_read_options
    from shardpipe.errors import ShardpipeError

    try:
        options = parse_storage_options(args.storage_options)
        reading = parse_read_options(args.read_options)
        resolve_inputs(args.urls, options, reading)
        return read(options, reading), None
    except InputError as e:
        return None, fail(command, e, USAGE)
    except ShardpipeError as e:  # before ValueError: some data errors are ValueErrors too
        return None, fail(command, manifest_message(e) or e, DATA_PROBLEM)
    except (ValueError, OSError) as e:
        return None, fail(command, e, USAGE)


#: what fixes a manifest naming a file outside its folder, on the command line (which reads manifests under
#: the default rule: Python's ``manifest_paths='any'`` is no option there)
MANIFEST_PATH_FIX = (
    "to fix: in the manifest, name the file by its absolute path or URL, or by a path under the manifest's "
    "folder; or make a new manifest with `shardpipe index SHARDS -o MANIFEST`, which does so"
)


def manifest_message(error: BaseException) -> str | None:
    """The message for a damaged manifest, or one naming a file outside its folder, with what fixes it on the
    command line; None for other errors."""
    from shardpipe.format.manifest import ManifestPathError

    if isinstance(error, ManifestPathError):
        return f"{error.problem} ({MANIFEST_PATH_FIX})"
    fix = manifest_fix(error)
    return f"{error}{fix}" if fix else None


def manifest_fix(error: BaseException | None) -> str:
    """`` (to fix: ...)`` for a damaged manifest, else nothing."""
    from shardpipe.format.manifest import DamagedManifestError

    if not isinstance(error, DamagedManifestError):
        return ""
    return (
        " (to fix: restore it from a good copy, or make a new one from its shards with "
        "`shardpipe index SHARDS -o MANIFEST`)"
    )


def add_storage_options(p: argparse.ArgumentParser, what: str = "remote URLs") -> None:
    """The ``--storage-options JSON`` flag every subcommand that reads or writes remote URLs takes."""
    p.add_argument(
        "--storage-options", default=None, metavar="JSON",
        help=f'fsspec options for {what}, e.g. \'{{"endpoint_url": "http://127.0.0.1:9000", "anon": true}}\'',
    )  # fmt: skip


def json_object(text: str, option: str, example: str = "") -> dict[str, Any]:
    """The JSON object ``option`` (``--storage-options``, ...) was given; InputError saying what is wrong
    (``example``: how one looks, for that message)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{option} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object{example}")
    return value


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    return json_object(text, "--storage-options") if text else None


def _missing(urls: list[str], storage_options: dict[str, Any] | None, read_options: ReadOptions) -> list[str]:
    """The URLs in ``urls`` that do not exist (or name a folder): a stat locally, an existence check remotely
    (under ``read_options``: retried, each try within its timeout)."""
    from shardpipe.io.files import is_local, local_path

    local = [u for u in urls if is_local(u)]
    missing = [u for u in local if not os.path.isfile(local_path(u))]
    remote = [u for u in urls if not is_local(u)]
    if remote:
        from shardpipe.io.clients import reading_fs
        from shardpipe.io.remote import call_store
        from shardpipe.pools import thread_pool

        def exists(url: str) -> bool:
            fs, path = reading_fs(url, storage_options)
            try:  # (not fs.isfile: it answers False for any error, a refused request too)
                info = call_store(fs, "info", path, url=url, what="existence check", options=read_options)
            except FileNotFoundError:  # (an unreachable store is StoreUnreachableError, after the retries)
                return False
            return info.get("type") != "directory"

        with thread_pool(16, "shardpipe-exists") as pool:
            missing += [u for u, ok in zip(remote, pool.map(exists, remote)) if not ok]
    return missing


def resolve_inputs(
    urls: str, storage_options: dict[str, Any] | None = None, read_options: ReadOptions | None = None
) -> list[str]:
    """The shard URLs a URLS argument names, as the command will read them (remotely under ``read_options``,
    default the commands' :data:`~shardpipe.cli.reading.CLI_READ_OPTIONS`); InputError when it cannot.

    Refused: a mistyped URL, a manifest that does not exist or that its store does not serve
    (``ShardUnavailableError``: a 5xx or no answer on each try; an unreachable store is
    ``StoreUnreachableError``, an OSError), a glob that matches nothing, a shard named directly
    (or by a brace range) that does not exist or is a folder. A
    manifest that exists but is damaged (``DamagedManifestError``, ``ManifestPathError``) is
    raised as it is: bad data, as is a shard that a manifest lists but that is missing
    (left for the command to report).
    """
    from shardpipe.errors import ShardUnavailableError
    from shardpipe.format.manifest import DamagedManifestError, ManifestPathError
    from shardpipe.io.urls import has_glob, is_manifest, split_patterns
    from shardpipe.stages.shards import expand_urls

    if read_options is None:
        from shardpipe.cli.reading import CLI_READ_OPTIONS

        read_options = CLI_READ_OPTIONS
    shards: list[str] = []
    named: list[str] = []
    try:
        for pattern in split_patterns(urls):
            found = [s.url for s in expand_urls(pattern, storage_options, read_options=read_options)]
            shards += found
            if not is_manifest(pattern) and not has_glob(pattern):
                named += found  # a glob lists files that exist; a manifest's shards are data
        missing = _missing(named, storage_options, read_options)
    except (DamagedManifestError, ManifestPathError):
        raise  # the manifest exists: what is wrong is in the data (exit 1)
    except ShardUnavailableError as e:  # the manifest named cannot be read: no data was read (exit 2)
        raise InputError(f"{e} (to fix: {UNAVAILABLE_FIX})") from e
    except (ValueError, OSError) as e:  # mistyped, not found, unreadable
        raise InputError(str(e)) from e
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        if not os.path.isdir(missing[0]):
            from shardpipe.io.remote import not_found_message

            raise InputError(f"{not_found_message(missing[0])}{more}")
        folder = missing[0].rstrip("/")
        meant = f"{folder}/manifest.json" if os.path.isfile(f"{folder}/manifest.json") else f"'{folder}/*.tar'"
        raise InputError(f"{missing[0]} is a folder, not a shard: did you mean {meant}?")
    return shards
