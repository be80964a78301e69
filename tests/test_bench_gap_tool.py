"""tools/bench_pipeline_gap.py runs as a program on a few generated JPEGs and prints its breakdown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_pipeline_gap.py"


def test_the_breakdown_tool_writes_shards_and_prints_every_row(tmp_path: Path):
    cmd = [sys.executable, str(TOOL), "--make", str(tmp_path / "shards"), "--n", "32", "--rounds", "1"]
    cmd += ["--batch", "8", "--buffer", "10", "--only", "kernel", "untar", "+batch", "loader", "loader/4"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for row in ("kernel", "untar", "+batch", "loader", "loader/4"):
        assert re.search(rf"^{re.escape(row)} +\d+\.\d{{3}} ", text, re.M), (row, text)
    assert re.search(r"^loader: fixed -?\d+ CPU ms per run \+ -?\d+\.\d{3} CPU ms/img", text, re.M), text
    assert "load average before" in text and "load average after" in text
    assert len(list((tmp_path / "shards").glob("train-*.tar"))) == 8  # 4 per shard: loader/4 reads two
