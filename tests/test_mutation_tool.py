"""tools/mutation.py's bookkeeping (scores, the equivalent list, the docs table), without running mutmut."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_equivalent_mutants_are_left_out_of_the_score(tool):
    r = tool.ModuleScore("format/index.py", ["tests/test_index.py"], total=300)
    r.statuses = {"m.a": "killed", "m.b": "survived", "m.c": "survived", "m.d": "timeout", "m.e": "no tests"}
    assert (r.caught, r.score, r.survivors) == (2, 40.0, ["m.b", "m.c", "m.e"])
    r.equivalent = {"m.b": "same bytes"}
    assert (r.caught, len(r.scored), r.score, r.survivors) == (2, 4, 50.0, ["m.c", "m.e"])


def test_the_equivalent_list_names_modules_of_the_table_each_with_a_reason(tool):
    found = tool.load_equivalent()
    assert found, "tools/mutation_equivalent.txt lists no mutant"
    modules = {"shardpipe." + m.removesuffix(".py").replace("/", ".") for m in tool.MODULES}
    for name, why in found.items():
        assert name.rsplit(".", 1)[0] in modules and "__mutmut_" in name, name
        assert len(why.split()) >= 4, f"{name}: say why it is equivalent"


def test_every_module_has_existing_test_files(tool):
    for module, tests in tool.MODULES.items():
        assert (ROOT / "shardpipe" / module).is_file(), module
        assert any((ROOT / t).is_file() for t in tests), module


def test_the_docs_table_keeps_rows_of_modules_not_run(tool, tmp_path: Path, monkeypatch):
    doc = tmp_path / "mutation.md"
    monkeypatch.setattr(tool, "DOC", doc)
    doc.write_text(f"# Mutation\n\nintro\n\n{tool.BEGIN}\nold\n{tool.END}\n\nafter\n")
    args = argparse.Namespace(sample=60, seed=26)

    def result(module: str, killed: int, survived: int):
        r = tool.ModuleScore(module, ["tests/test_x.py"], total=100)
        r.statuses = {f"shardpipe.x.k{i}": "killed" for i in range(killed)}
        r.statuses |= {f"shardpipe.x.s{i}": "survived" for i in range(survived)}
        return r

    tool.write_doc(tool.render([result("split/plan.py", 9, 1), result("io/files.py", 1, 1)], args), [])
    tool.write_doc(tool.render([result("split/plan.py", 10, 0)], args), [])
    text = doc.read_text()
    assert text.startswith("# Mutation\n\nintro\n\n") and text.endswith(f"{tool.END}\n\nafter\n")
    rows = [line for line in text.splitlines() if line.startswith("| shardpipe/")]
    assert [row.split(" | ")[0] for row in rows] == ["| shardpipe/split/plan.py", "| shardpipe/io/files.py"]
    assert "| 10/10 | 100% | - |" in rows[0] and "| 1/2 | 50% | `s0` |" in rows[1]


def test_a_focused_module_samples_only_its_functions_mutants(tool, tmp_path: Path, monkeypatch):
    meta = tmp_path / "mutants" / "shardpipe" / "loader.py.meta"
    meta.parent.mkdir(parents=True)
    names = [
        "shardpipe.loader.xǁShardLoaderǁstate_dict__mutmut_2",
        "shardpipe.loader.xǁShardLoaderǁload_state_dict__mutmut_1",
        "shardpipe.loader.xǁShardLoaderǁ__iter____mutmut_1",
        "shardpipe.loader.x_refuse__mutmut_1",
    ]
    meta.write_text(json.dumps({"exit_code_by_key": dict.fromkeys(names)}))
    assert tool.mutant_names(tmp_path, "loader.py") == sorted(names[:2])
    monkeypatch.setitem(tool.FOCUS, "loader.py", ())
    assert tool.mutant_names(tmp_path, "loader.py") == sorted(names)


def test_rows_with_a_scope_are_kept_by_module(tool, tmp_path: Path, monkeypatch):
    doc = tmp_path / "mutation.md"
    monkeypatch.setattr(tool, "DOC", doc)
    doc.write_text(f"{tool.BEGIN}\n| shardpipe/stages/epochs.py (then split/policies.py) | t | 1 |\n{tool.END}\n")
    r = tool.ModuleScore("loader.py", ["tests/test_loader_state.py"], total=40)
    r.statuses = {"shardpipe.loader.a": "killed"}
    tool.write_doc(tool.render([r], argparse.Namespace(sample=60, seed=26)), [r])
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| shardpipe/")]
    assert rows[0] == "| shardpipe/stages/epochs.py (then split/policies.py) | t | 1 |"  # in MODULES' order
    assert rows[1].startswith(
        "| shardpipe/loader.py (state_dict, load_state_dict, _pass_buffers) | test_loader_state.py | 40 | 1 |"
    )


def test_the_scratch_copy_leaves_out_the_same_tests_for_every_module(tool, tmp_path: Path):
    import tomllib

    tool.scratch_copy("io/deferred.py", ["tests/test_deferred.py"], tmp_path / "scratch", ROOT)
    config = tomllib.loads((tmp_path / "scratch" / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert config["only_mutate"] == ["shardpipe/io/deferred.py"]
    assert config["pytest_add_cli_args_test_selection"] == ["tests/test_deferred.py"]
    args = config["pytest_add_cli_args"]
    expression = args[args.index("-k") + 1]
    assert expression.split(" and ") == list(tool.LEAVE_OUT)
    assert "not gloo" in tool.LEAVE_OUT
    assert (tmp_path / "scratch" / "shardpipe" / "io" / "deferred.py").read_text() == (
        ROOT / "shardpipe" / "io" / "deferred.py"
    ).read_text()


def test_a_run_that_checked_no_mutant_is_run_again_once(tool, capsys):
    runs: list[int] = []
    answers = [{"m.a": "not checked", "m.b": "not checked"}, {"m.a": "killed", "m.b": "survived"}]
    got = tool.run_checked(lambda: runs.append(1), lambda: answers[len(runs) - 1])
    assert got == {"m.a": "killed", "m.b": "survived"} and len(runs) == 2
    assert "running it again" in capsys.readouterr().out


def test_a_run_that_checked_mutants_is_not_repeated_and_retries_are_bounded(tool):
    runs: list[int] = []
    assert tool.run_checked(lambda: runs.append(1), lambda: {"m.a": "killed", "m.b": "not checked"}) == {
        "m.a": "killed",
        "m.b": "not checked",
    }
    assert len(runs) == 1
    runs.clear()
    assert tool.run_checked(lambda: runs.append(1), lambda: {"m.a": "not checked"}, tries=3) == {"m.a": "not checked"}
    assert len(runs) == 3


def test_the_version_line_needs_no_mutmut_installed(tool, monkeypatch):
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert tool.mutmut_version() == "not installed"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"mutmut": "3.8.1"}[name])
    assert tool.mutmut_version() == "3.8.1"
