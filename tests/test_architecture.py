"""The layout holds: no import cycles, between subpackages or at import time of any module."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import shardpipe

ROOT = Path(shardpipe.__file__).parent


def module_names() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def unit(module: str) -> str:
    """The part of the layout a module belongs to: ``shardpipe.stages.untar`` -> ``shardpipe.stages``."""
    return ".".join(module.split(".")[:2])


def subpackage_graph() -> dict[str, set[str]]:
    """unit -> the units it imports from, counting imports inside functions too (lazy ones)."""
    modules = module_names()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shardpipe"):
                named = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = named if len(named) == len(node.names) else [node.module, *named]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("shardpipe")]
            else:
                continue
            for target in targets:
                if unit(target) != unit(name):
                    graph[unit(name)].add(unit(target))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


#: known subpackage cycles still to untangle (edge left out of the check, with the reason); none now.
KNOWN_CYCLES: dict[tuple[str, str], str] = {}


def test_no_import_cycle_between_subpackages():
    graph = subpackage_graph()
    for (a, b), _why in KNOWN_CYCLES.items():
        assert b in graph.get(a, set()), f"{a} -> {b} is gone: remove it from KNOWN_CYCLES"
        graph[a].discard(b)
    assert "shardpipe.stages" in graph and "shardpipe.format" in graph["shardpipe.stages"]  # the graph is real
    assert find_cycle(graph) is None, f"import cycle between parts of the layout: {' -> '.join(find_cycle(graph))}"


def test_lower_layers_do_not_import_upper_ones():
    """format and io sit under everything: they import nothing of the pipeline (format may read files)."""
    graph = subpackage_graph()
    allowed = {"shardpipe.format": {"shardpipe.errors", "shardpipe.io"}, "shardpipe.io": {"shardpipe.errors"}}
    for low, ok in allowed.items():
        assert graph.get(low, set()) <= ok, f"{low} imports {sorted(graph[low])}"


def top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """The import statements that run when the module is imported (not in functions, not
    under ``if TYPE_CHECKING``)."""
    out: list[ast.stmt] = []

    def scan(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                scan(node.body)
                scan(node.orelse)
            elif isinstance(node, ast.Try):
                scan(node.body)

    scan(tree.body)
    return out


def module_graph() -> dict[str, set[str]]:
    """module -> the shardpipe modules it imports at import time."""
    modules = module_names()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shardpipe"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycle_between_modules():
    """An import-time cycle between modules works or fails by import order: none at all."""
    graph = module_graph()
    assert "shardpipe.io.opener" in graph["shardpipe.stages.untar"]  # the graph is real
    cycle = find_cycle(graph)
    assert cycle is None, f"import-time cycle: {' -> '.join(cycle)}"


def imports_outside_type_checking(path: Path) -> set[str]:
    """Every shardpipe module ``path`` imports (at import time or inside functions), leaving
    out ``if TYPE_CHECKING`` blocks (annotations only)."""
    modules = module_names()
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shardpipe"):
            named = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            out.update(named or [node.module])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("shardpipe"))
    return out


def test_options_import_no_runtime_module():
    """Settings describe, the builder (ShardDataset) assembles: options.py may read the data
    format's constants and nothing of the pipeline (no opener, stage, policy or decoder)."""
    imported = imports_outside_type_checking(ROOT / "options.py")
    assert "shardpipe.format.tar.reader" in imported  # the scan is real
    runtime = sorted(m for m in imported if not m.startswith(("shardpipe.format", "shardpipe.errors")))
    assert runtime == [], f"options.py imports runtime modules: {runtime}"


def test_split_is_arithmetic_that_imports_no_stage():
    """split/ is plain functions over integers: stages read from it, never the reverse."""
    graph = subpackage_graph()
    assert graph.get("shardpipe.split", set()) <= {"shardpipe.errors"}, sorted(graph["shardpipe.split"])
    assert "shardpipe.split" in graph["shardpipe.stages"]  # stages read the plans from split/


def test_option_name_tables_match_the_runtime():
    """options.py owns the valid names; the runtime registries must offer exactly those."""
    from shardpipe.options import EPOCH_POLICY_NAMES
    from shardpipe.stages.epochs import EPOCH_POLICIES

    assert tuple(EPOCH_POLICIES) == EPOCH_POLICY_NAMES
