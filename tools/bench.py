#!/usr/bin/env python
"""Side-by-side loader benchmark: shardpipe vs webdataset, ImageFolder and LMDB loaders.

A thin wrapper around ``shardpipe.devtools.bench`` (also ``shardpipe bench``); see its docstring.

    python tools/bench.py --n 3000 --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from shardpipe.devtools import bench  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(parser)
    raise SystemExit(bench.run(parser.parse_args()))
