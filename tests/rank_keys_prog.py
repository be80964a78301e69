"""Print, as JSON, the keys this process reads of a manifest's epoch 0 (no process group: ranks from the env)."""

from __future__ import annotations

import json
import sys

from shardpipe import ShardDataset

if __name__ == "__main__":
    try:
        dataset = ShardDataset(sys.argv[1], shuffle=5, seed=1, decode=None)
        print(json.dumps({"rank": list(dataset.rank_and_world()), "keys": [s["__key__"] for s in dataset]}))
    except Exception as e:  # the test reads the error's type and message
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
