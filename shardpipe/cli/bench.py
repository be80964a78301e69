"""``shardpipe bench``: the side-by-side loader benchmark (see ``shardpipe.bench``)."""

from __future__ import annotations

from ..bench import add_arguments, run

__all__ = ["add_arguments", "run"]
