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

from shardpipe.cli.common import InputError, json_object
from shardpipe.io.read_options import ReadOptionError, ReadOptions

#: the commands' defaults: each request within 20 s, 3 tries, at most 2 s between them
CLI_READ_OPTIONS = ReadOptions(block_size=4 << 20, retries=2, max_backoff=2.0, timeout=20.0)


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
    given = json_object(text, "--read-options", ', such as \'{"timeout": 5, "retries": 1}\'')
    fields = [f.name for f in dataclasses.fields(ReadOptions)]
    for name in given:
        if name not in fields:
            near = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise InputError(f"--read-options: unknown field {name!r} ({hint}the fields: {', '.join(fields)})")
    try:
        return dataclasses.replace(CLI_READ_OPTIONS, **given)
    except ReadOptionError as e:  # (the dataclass checks each field: said here in JSON's words)
        wanted = e.requirement.replace(" or None", " or null")
        raise InputError(f"--read-options: {e.field} {wanted}, got {json.dumps(e.value)}") from e
