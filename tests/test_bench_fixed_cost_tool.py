"""tools/bench_fixed_cost.py: each reference row split into a fixed cost per run and a cost per image."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.dataset import ShardDataset
from shardpipe.devtools.synth import make_dataset
from shardpipe.write.shard_writer import ShardWriter

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_fixed_cost.py"


def _tool():
    spec = importlib.util.spec_from_file_location("bench_fixed_cost", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shards(folder: Path, n: int = 32, per_shard: int = 4) -> Path:
    with ShardWriter(str(folder / "train-%06d.tar"), maxcount=per_shard) as w:
        for key, data, label in make_dataset(n, 2):
            w.write({"__key__": key, "jpg": data, "cls": label})
    return folder / "manifest.json"


def test_split_solves_a_fixed_cost_and_a_cost_per_image():
    fixed, marginal = _tool().split((0.1 + 2000 * 0.0011, 2000), (0.1 + 500 * 0.0011, 500))
    assert fixed == pytest.approx(0.1) and marginal == pytest.approx(0.0011)
    with pytest.raises(ValueError, match="differ in size"):
        _tool().split((1.0, 10), (0.5, 10))


def test_the_quarter_manifest_reads_the_first_quarter_of_the_shards(tmp_path: Path):
    (tmp_path / "all").mkdir()
    (tmp_path / "part").mkdir()
    manifest = _shards(tmp_path / "all", 32, 4)
    part = _tool().quarter_manifest(str(manifest), str(tmp_path / "part"))
    doc = json.loads(Path(part).read_text())
    assert [s["name"] for s in doc["shards"]] == ["train-000000.tar", "train-000001.tar"]  # 8 shards -> 2
    keys = [s["__key__"] for s in ShardDataset(part, decode=None)]
    assert keys == [s["__key__"] for s in ShardDataset(str(manifest), decode=None)][:8] and doc["samples"] == 8


def test_the_tool_runs_every_row_and_prints_its_split(tmp_path: Path):
    manifest = _shards(tmp_path)
    cmd = [sys.executable, str(TOOL), str(manifest), "--rounds", "1", "--batch", "4", "--buffer", "8"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("shardpipe", "kernel", "floor"):
        assert re.search(rf"^{row} +\d+\.\d{{3}} +\d+\.\d{{3}} +-?\d+ +-?\d+\.\d{{3}}$", out.stdout, re.M), (
            row,
            out.stdout,
        )
    for ratio in ("kernel / floor", "kernel / shardpipe", "floor / shardpipe"):
        assert re.search(rf"^marginal: {ratio} = -?\d+\.\d{{3}}$", out.stdout, re.M), (ratio, out.stdout)
