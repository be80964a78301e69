"""``import shardpipe`` is light: public names are imported on first use, so the commands that
only read shards (inspect, verify, index, write) start without importing torch."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import shardpipe
import shardpipe.stages

from .helpers import small_jpeg

REPO = Path(__file__).resolve().parents[1]


def type_checking_names(package) -> set[str]:
    """The names the package's ``if TYPE_CHECKING:`` block imports (what editors and type checkers see)."""
    tree = ast.parse(Path(package.__file__).read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    return {a.asname or a.name for node in block.body for a in node.names}


@pytest.mark.parametrize("package", [shardpipe, shardpipe.stages], ids=["shardpipe", "shardpipe.stages"])
def test_every_public_name_resolves_to_its_module(package):
    where = package._WHERE
    assert type_checking_names(package) == set(where)
    assert set(package.__all__) - {"__version__"} == set(where)
    for name, module in where.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), name), name
    assert set(where) <= set(dir(package))
    with pytest.raises(AttributeError, match=rf"module '{package.__name__}' has no attribute 'Nope'"):
        package.Nope  # noqa: B018


def test_from_import_star_gives_every_public_name():
    namespace: dict = {}
    exec("from shardpipe import *", namespace)
    assert set(shardpipe.__all__) <= set(namespace)
    assert namespace["ShardDataset"] is importlib.import_module("shardpipe.dataset").ShardDataset


PROGRAM = """
import json, sys
from shardpipe.cli import main
status = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"status": status, "torch": "torch" in sys.modules}))
"""


def test_commands_that_read_shards_do_not_import_torch(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"im{i}.jpg").write_bytes(small_jpeg(i, (64, 48)))
    out = tmp_path / "out"
    commands = [
        ["write", str(src), str(out / "d-%03d.tar"), "--maxcount", "2", "--no-progress"],
        ["inspect", str(out / "manifest.json")],
        ["verify", str(out / "manifest.json")],
        ["index", str(out / "d-{000..001}.tar"), "-o", str(tmp_path / "again.json"), "--no-progress"],
    ]
    run = subprocess.run([sys.executable, "-c", PROGRAM, json.dumps(commands)], capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"status": [0, 0, 0, 0], "torch": False}
    assert json.loads((tmp_path / "again.json").read_text())["samples"] == 4
