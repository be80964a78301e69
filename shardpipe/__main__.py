"""``python -m shardpipe``: the same as the ``shardpipe`` command (where its script is not on PATH)."""

from shardpipe.cli import entry

entry()
