"""``python -m shardpipe.cli``: the same as the ``shardpipe`` command."""

from . import main

raise SystemExit(main())
