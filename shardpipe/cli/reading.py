"""``--read-options JSON``: how the commands read remote URLs, and their defaults at a terminal.

The library's ``ReadOptions()`` suit training, which must ride out a store's bad minutes: a
request may take 60 s and is tried 9 times, so a store that accepts connections and never
answers holds a caller ~9.5 minutes, and a 5xx costs ~32 s of back-off a shard. Someone
waiting at a terminal wants the answer: :data:`CLI_READ_OPTIONS` gives up after three tries
of 20 s each (requests of at most 4 MiB, so 20 s asks only ~200 KiB/s of a link).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from typing import Any

from shardpipe.cli.common import InputError
from shardpipe.io.remote import ReadOptions

#: the commands' defaults: each request within 20 s, 3 tries, at most 2 s between them
CLI_READ_OPTIONS = ReadOptions(block_size=4 << 20, retries=2, max_backoff=2.0, timeout=20.0)

#: fields that must be above 0 (the others may be 0)
_POSITIVE = ("block_size", "min_block", "memory_limit", "timeout")


def add_read_options(p: argparse.ArgumentParser) -> None:
    """The ``--read-options JSON`` flag of every subcommand that reads remote URLs."""
    c = CLI_READ_OPTIONS
    p.add_argument(
        "--read-options", default=None, metavar="JSON",
        help=f"how remote URLs are read (shardpipe.io.remote.ReadOptions fields), e.g. '{{\"timeout\": 60, "
        f"\"retries\": 8}}' (default here: timeout {c.timeout:g} s, retries {c.retries}, block_size "
        f"{c.block_size}, max_backoff {c.max_backoff:g} s)",
    )  # fmt: skip


def parse_read_options(text: str | None) -> ReadOptions:
    """``--read-options`` over :data:`CLI_READ_OPTIONS`; InputError naming the field that is wrong."""
    if text is None:
        return CLI_READ_OPTIONS
    try:
        given = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--read-options is not JSON: {e}") from e
    if not isinstance(given, dict):
        raise InputError('--read-options must be a JSON object, such as \'{"timeout": 5, "retries": 1}\'')
    fields = {f.name: str(f.type) for f in dataclasses.fields(ReadOptions)}
    for name, value in given.items():
        if name not in fields:
            near = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise InputError(f"--read-options: unknown field {name!r} ({hint}the fields: {', '.join(fields)})")
        _check(name, fields[name], value)
    return dataclasses.replace(CLI_READ_OPTIONS, **given)


def _check(name: str, kind: str, value: Any) -> None:
    """InputError unless ``value`` fits the field ``name`` of type ``kind`` ("int", "float", "int | None")."""
    if value is None and "None" in kind:
        return
    number = (int, float) if "float" in kind else int
    if isinstance(value, bool) or not isinstance(value, number):
        want = "a number" if "float" in kind else "an integer"
        also = " or null" if "None" in kind else ""
        raise InputError(f"--read-options: {name} must be {want}{also}, got {json.dumps(value)}")
    if value < 0 or (value == 0 and name in _POSITIVE):
        bound = "above 0" if name in _POSITIVE else "0 or more"
        raise InputError(f"--read-options: {name} must be {bound}, got {json.dumps(value)}")
