"""The loader benchmark's clock: importing torch is not charged to the loader being measured."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = r"""
import sys
from shardpipe.devtools.bench import loaders
assert "torch" not in sys.modules  # `import shardpipe` is light: measure() must import it itself
seen = []
real = loaders._cpu_seconds
def clock():
    seen.append("torch.utils.data" in sys.modules)
    return real()
def fake_loader(cfg, data):
    import torch
    return [(torch.zeros((4, 3, 8, 8), dtype=torch.uint8), torch.zeros(4))], None
loaders._cpu_seconds = clock
loaders._loader = fake_loader
out = loaders.measure({"kind": "fake", "size": 8, "data": {}})
print(seen[0], out["images"])
"""


def test_measure_starts_its_clock_after_torch_is_imported():
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "4"]
