"""``python -m shardpipe.cli``: the same as the ``shardpipe`` command."""

from shardpipe.cli import entry

entry()
