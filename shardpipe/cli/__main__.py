"""``python -m shardpipe.cli``: the same as the ``shardpipe`` command."""

from shardpipe.cli import main

raise SystemExit(main())
