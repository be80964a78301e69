"""The loader benchmark's clock: importing torch, or compiling a loader's modules, is not charged to the
loader being measured."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from shardpipe.devtools.bench.loaders import compile_bytecode

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


def test_compile_bytecode_writes_what_an_install_would(tmp_path):
    """Every module of the tree gets its bytecode (counted once); a file that does not compile is left."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    sources = [pkg / "__init__.py", pkg / "a.py", pkg / "sub" / "__init__.py", pkg / "sub" / "b.py"]
    for i, path in enumerate(sources):
        path.write_text(f"VALUE = {i}\n")
    (pkg / "broken.py").write_text("def (:\n")
    (pkg / "notes.txt").write_text("not python")

    assert compile_bytecode(str(pkg)) == len(sources)
    for path in sources:
        assert os.path.exists(importlib.util.cache_from_source(str(path))), path
    assert not os.path.exists(importlib.util.cache_from_source(str(pkg / "broken.py")))
    assert compile_bytecode(str(pkg)) == 0  # up to date: nothing written again

    # a source edited since: compiled again (the bytecode records the source's new time and size)
    (pkg / "a.py").write_text("VALUE = 'changed'\n")
    cached = importlib.util.cache_from_source(str(pkg / "a.py"))
    later = int(os.path.getmtime(cached)) + 10
    os.utime(pkg / "a.py", (later, later))
    assert compile_bytecode(str(pkg)) == 0  # not new, so not counted
    with open(cached, "rb") as f:
        header = f.read(16)
    assert int.from_bytes(header[8:12], "little") == later
    assert int.from_bytes(header[12:16], "little") == len("VALUE = 'changed'\n")


def test_compile_bytecode_defaults_to_shardpipe_itself():
    """With no folder it compiles shardpipe's own package: afterwards every module has its bytecode."""
    import shardpipe

    compile_bytecode()
    root = os.path.dirname(shardpipe.__file__)
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                assert os.path.exists(importlib.util.cache_from_source(path)), path
