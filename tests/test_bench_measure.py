"""The loader benchmark's clock: importing torch or a loader's modules, compiling them, or finding the
floor's JPEGs is not charged to the loader being measured."""

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
def fake_loader(cfg, data, ready=None):
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


LOADER_MODULES = r"""
import sys
from shardpipe.devtools.bench import floor, loaders
seen, scans, given = [], [], []
real_clock, real_records = loaders._cpu_seconds, floor.jpeg_records
def clock():
    from shardpipe.image.decoders import registry
    resolved = ["decoder"] if registry._INSTANCES else []
    seen.append(sorted(m for m in ("shardpipe.dataset", "shardpipe.loader") if m in sys.modules) + resolved)
    return real_clock()
def records(urls, ext="jpg"):
    scans.append(len(seen))  # clock reads before the scan
    return real_records(urls, ext)
def fake_loader(cfg, data, ready=None):
    import torch
    given.append(len((ready or {}).get("records") or ()))
    return [(torch.zeros((2, 3, 8, 8), dtype=torch.uint8), torch.zeros(2))], None
loaders._cpu_seconds, loaders._loader, floor.jpeg_records = clock, fake_loader, records
kind, outside, manifest = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
out = loaders.measure({"kind": kind, "size": 8, "data": {"full": manifest}, "imports_outside": outside})
print(seen[0], scans, given, out["images"])
"""


def _clock_sees(*args: str) -> str:
    result = subprocess.run([sys.executable, "-c", LOADER_MODULES, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_a_loaders_own_modules_are_imported_before_its_clock():
    """As torch is, and as the kernel's always were (its decoder backend resolved too): a run is 2,000
    images, not an import (``imports_outside=False`` puts them back in the clock, for comparison)."""
    assert _clock_sees("shardpipe", "1", "unused") == "['shardpipe.dataset', 'shardpipe.loader', 'decoder'] [] [0] 2"
    assert _clock_sees("shardpipe", "0", "unused") == "[] [] [0] 2"


def test_the_floor_finds_its_jpegs_before_its_clock(tmp_path):
    """The floor is the kernel fed from the shards: reading the tar headers for offsets is not part of it."""
    from shardpipe.devtools.synth import make_dataset
    from shardpipe.write.shard_writer import ShardWriter

    with ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=2) as w:
        for key, data, label in make_dataset(3, 1):
            w.write({"__key__": key, "jpg": data, "cls": label})
    manifest = tmp_path / "manifest.json"
    assert _clock_sees("floor", "1", str(manifest)) == "['decoder'] [0] [3] 2"


def test_every_measured_row_names_the_modules_its_loader_imports():
    from shardpipe.devtools.bench.loaders import IMPORTS
    from shardpipe.devtools.bench.peers import PEERS

    kinds = {peer.config["kind"] for peer in PEERS} - {"kernel"}  # the kernel measures its own clock
    assert kinds <= set(IMPORTS), kinds - set(IMPORTS)
    assert all(IMPORTS[kind] for kind in kinds)


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
