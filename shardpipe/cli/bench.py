"""``shardpipe bench``: the side-by-side loader benchmark (see ``shardpipe.devtools.bench``)."""

from __future__ import annotations

from shardpipe.devtools.bench import add_arguments, run

__all__ = ["add_arguments", "run"]
