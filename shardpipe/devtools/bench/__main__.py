"""``python -m shardpipe.devtools.bench``: the benchmark (options as ``shardpipe bench``), or one
measurement with ``--child`` and its JSON config on stdin (what the benchmark runs in
fresh processes)."""

from __future__ import annotations

import argparse
import json
import sys

from shardpipe.devtools.bench import __doc__ as doc
from shardpipe.devtools.bench import add_arguments, run
from shardpipe.devtools.bench.loaders import measure


def main() -> int:
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(measure(json.load(sys.stdin))))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m shardpipe.devtools.bench", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return run(p.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
