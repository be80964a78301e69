"""tools/bench_pipeline_gap.py runs as a program on a few generated JPEGs and prints its breakdown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_pipeline_gap.py"


def test_the_breakdown_tool_writes_shards_and_prints_every_row(tmp_path: Path):
    cmd = [sys.executable, str(TOOL), "--make", str(tmp_path / "shards"), "--n", "32", "--rounds", "1"]
    cmd += [
        "--batch",
        "8",
        "--buffer",
        "10",
        "--only",
        "kernel",
        "floor",
        "floor/loader",
        "untar",
        "+batch",
        "loader",
        "loader/4",
        "loader/steady",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for row in ("kernel", "floor", "floor/loader", "untar", "+batch", "loader", "loader/4", "loader/steady"):
        assert re.search(rf"^{re.escape(row)} +\d+\.\d{{3}} ", text, re.M), (row, text)
    floor_row = r"^floor +\d+\.\d{3} +\d+\.\d{3}- *\d+\.\d{3} *$"  # no step: not built on the kernel row
    assert re.search(floor_row, text, re.M), text
    assert re.search(r"^kernel / floor \(read \+ kernel into batch rows, no stages\) = \d+\.\d{3}$", text, re.M), text
    assert re.search(
        r"^kernel / floor/loader \(no per-sample Python, in DataLoader workers\) = \d+\.\d{3}$", text, re.M
    )
    assert re.search(r"^floor/loader / loader = \d+\.\d{3} \(what the stages cost in workers\)$", text, re.M), text
    assert re.search(r"^floor / in-process pipeline = \d+\.\d{3} \(what the stages cost\)$", text, re.M), text
    assert re.search(r"^loader: fixed -?\d+ CPU ms per run \+ -?\d+\.\d{3} CPU ms/img", text, re.M), text
    assert re.search(r"^kernel / loader, paired by round: median \d+\.\d{3} \(range ", text, re.M), text
    assert re.search(r"^kernel / loader in epochs 2-3 \(persistent workers\) = \d+\.\d{3}$", text, re.M), text
    assert re.search(r"^loader/steady .* page faults/img \d+\.\d$", text, re.M), text
    assert "load average before" in text and "load average after" in text
    assert re.search(r"^loader .* main process \d+\.\d{3}  page faults/img \d+\.\d$", text, re.M), text
    assert len(list((tmp_path / "shards").glob("train-*.tar"))) == 8  # 4 per shard: loader/4 reads two


def test_versus_runs_each_variant_on_both_checkouts_and_prints_both_tables(tmp_path: Path):
    """Side by side: here the other checkout is this one, so both tables have the same rows."""
    cmd = [sys.executable, str(TOOL), "--make", str(tmp_path / "shards"), "--n", "16", "--rounds", "2"]
    cmd += [
        "--batch",
        "4",
        "--buffer",
        "4",
        "--only",
        "untar",
        "+batch",
        "--versus",
        str(TOOL.parent.parent),
        "--nchw",
        "--decode",
        "torchrgb8",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert f"versus: {TOOL.parent.parent}" in text
    assert re.search(r"^variant +CPU ms/img", text, re.M) and re.search(r"^variant \(versus\) +CPU ms/img", text, re.M)
    assert len(re.findall(r"^untar +\d+\.\d{3} ", text, re.M)) == 2
    assert len(re.findall(r"^\+batch +\d+\.\d{3} ", text, re.M)) == 2
    assert re.findall(r"kernel / in-process pipeline", text) == []  # no kernel row asked for


def test_versus_copy_interleaves_the_ablation_and_prints_paired_differences(tmp_path: Path):
    cmd = [sys.executable, str(TOOL), "--make", str(tmp_path / "shards"), "--n", "16", "--rounds", "2"]
    cmd += ["--batch", "4", "--buffer", "4", "--only", "+decode", "+batch", "--versus-copy"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert re.search(r"^variant +CPU ms/img", text, re.M) and re.search(r"^variant \(copy\) +CPU ms/img", text, re.M)
    assert "versus:" not in text  # no other checkout
    for row in ("+decode", "+batch"):
        assert len(re.findall(rf"^{re.escape(row)} +\d+\.\d{{3}} ", text, re.M)) == 2
        assert re.search(
            rf"^{re.escape(row)}: this minus \(copy\), paired by round: median [+-]\d+\.\d{{3}}", text, re.M
        )


AB_TOOL = TOOL.parent / "bench_ab.py"


def _gap_shards(root: Path, n: int) -> str:
    out = subprocess.run(
        [sys.executable, str(TOOL), "--make", str(root), "--n", str(n), "--rounds", "1", "--only", "kernel"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return str(root / "manifest.json")


def test_the_ab_tool_alternates_a_swapped_function_in_fresh_workers(tmp_path: Path):
    """Variant B swaps the tar checksum for a counting stand-in that records, in a file, each
    process that called it: the workers of B's passes did, those of A's did not."""
    manifest = _gap_shards(tmp_path / "shards", 16)
    (tmp_path / "spy.py").write_text(
        "import os\n"
        "def byte_sum(block):\n"
        f"    with open({str(tmp_path / 'calls')!r}, 'a') as f:\n"
        "        f.write(f'{os.getpid()}\\n')\n"
        "    return sum(block)\n"
    )
    cmd = [sys.executable, str(AB_TOOL), manifest, "--pairs", "2", "--batch", "4", "--buffer", "4"]
    cmd += ["--swap", "shardpipe.format.tar.reader:header_sum", "spy:byte_sum"]
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert re.search(r"^A  CPU ms/img median \d+\.\d{4}  range \d+\.\d{3}-\d+\.\d{3}$", text, re.M), text
    assert re.search(r"^B  CPU ms/img median \d+\.\d{4}", text, re.M), text
    assert re.search(r"^B - A, paired by pass pair: median [+-]\d+\.\d{4} CPU ms/img  \([+-]\d", text, re.M), text
    assert "2 workers, fresh each pass; 2 pass pairs" in text
    callers = set((tmp_path / "calls").read_text().split())
    # B ran 3 passes (a warm-up and 2 measured), 2 fresh workers each; A's 6 workers never called it
    assert len(callers) == 6, callers


def test_the_ab_tool_refuses_a_name_it_cannot_find(tmp_path: Path):
    manifest = _gap_shards(tmp_path / "shards", 8)
    for swap, message in [
        (["shardpipe.format.tar.reader:no_such", "builtins:sum"], "has no attribute 'no_such'"),
        (["shardpipe.format.tar.reader", "builtins:sum"], "look like module:attribute"),
    ]:
        out = subprocess.run([sys.executable, str(AB_TOOL), manifest, "--swap", *swap], capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]


def test_the_ab_tools_swaps_are_undone_even_for_inherited_attributes(monkeypatch):
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("bench_ab", AB_TOOL)
    bench_ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_ab)

    class Base:
        def name(self):
            return "base"

    class Child(Base):
        pass

    module = types.ModuleType("ab_swap_targets")
    module.Child, module.other, module.value = Child, lambda self: "other", 1
    monkeypatch.setitem(sys.modules, "ab_swap_targets", module)
    with bench_ab.swapped([("ab_swap_targets:Child.name", "ab_swap_targets:other"),
                           ("ab_swap_targets:value", "builtins:len")]):  # fmt: skip
        assert Child().name() == "other" and module.value is len
    assert Child().name() == "base" and "name" not in vars(Child) and module.value == 1
    try:
        with bench_ab.swapped([("ab_swap_targets:value", "builtins:len")]):
            raise KeyError("a pass failed")
    except KeyError:
        pass
    assert module.value == 1


def test_the_floor_reads_and_decodes_every_image_of_the_shards(tmp_path: Path):
    """``floor`` finds each JPEG by its tar header and puts all of them through the kernel."""
    sys.path.insert(0, str(TOOL.parent))
    try:
        import bench_pipeline_gap as tool

        manifest = tool._make(str(tmp_path / "shards"), 12)
        out = tool._floor(manifest, 4)
    finally:
        sys.path.remove(str(TOOL.parent))
    assert out["n"] == 12
    assert out["ms"] > 0
