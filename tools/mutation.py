#!/usr/bin/env python3
"""Mutation testing of shardpipe's core modules with mutmut 3; scores go to docs/mutation.md.

Each module is mutated on its own, in a scratch copy of the repository, and only its own test
files run against its mutants (mutmut further narrows that to the tests that call the mutated
function), so a module takes minutes, not the hours of the whole suite against every mutant.
Large modules are sampled: ``--sample`` mutants drawn with a fixed ``--seed`` from the sorted
list of mutant names, so two runs over unchanged code test the same mutants.

Mutants judged equivalent (no behaviour can tell them from the original) are listed with a
one-line reason in tools/mutation_equivalent.txt; they are reported but left out of the score.

    python tools/mutation.py                          # every module in MODULES
    python tools/mutation.py --modules format/index.py split/plan.py --sample 40
    python tools/mutation.py --modules format/index.py --show   # diffs of the survivors
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / "tools" / "mutation_equivalent.txt"
DOC = ROOT / "docs" / "mutation.md"
BEGIN, END = "<!-- mutation-scores:begin -->", "<!-- mutation-scores:end -->"

#: module (under shardpipe/) -> its own test files
MODULES: dict[str, list[str]] = {
    "format/tar/reader.py": ["tests/test_tar.py", "tests/test_integrity.py", "tests/test_tar_reader.py"],
    "format/index.py": ["tests/test_index.py", "tests/test_index_format.py"],
    "format/manifest.py": ["tests/test_index.py", "tests/test_block_shuffle.py", "tests/test_manifest.py"],
    "split/plan.py": ["tests/test_stages.py", "tests/test_split.py", "tests/test_distributed.py"],
    "stages/epochs.py": ["tests/test_stages.py", "tests/test_split.py"],
    "stages/shuffle.py": ["tests/test_stages.py", "tests/test_stage_units.py"],
    "stages/samples.py": ["tests/test_stages.py", "tests/test_stage_units.py", "tests/test_tar.py"],
    "stages/batch.py": [
        "tests/test_stages.py",
        "tests/test_buffers.py",
        "tests/test_batch.py",
        "tests/test_decode_into_rows.py",
    ],
    "stages/shards.py": ["tests/test_stages.py", "tests/test_stage_units.py", "tests/test_split.py"],
    "io/files.py": ["tests/test_io.py", "tests/test_files.py", "tests/test_cache.py"],
    "io/cache.py": ["tests/test_cache.py", "tests/test_cache_local.py"],
    "stages/block.py": ["tests/test_block_reads.py", "tests/test_block_shuffle.py"],
    "io/remote.py": [
        "tests/test_remote_units.py",
        "tests/test_retry_policy.py",
        "tests/test_io.py",
        "tests/test_remote_pin.py",
        "tests/test_remote.py",
    ],
    "io/stream.py": ["tests/test_stream_units.py", "tests/test_remote_window.py", "tests/test_remote.py"],
    "serve/wire.py": ["tests/test_serve_wire.py"],
    "image/decoders/native.py": ["tests/test_native.py"],
    "state.py": ["tests/test_state_checks.py", "tests/test_trust_state.py", "tests/test_resume.py"],
    "loader.py": ["tests/test_loader_state.py", "tests/test_resume.py", "tests/test_buffers.py"],
    "handover.py": ["tests/test_handover.py"],
    "stages/buffers.py": ["tests/test_buffers.py", "tests/test_handover.py", "tests/test_decode_into_rows.py"],
    "stages/untar.py": [
        "tests/test_stages.py",
        "tests/test_stage_units.py",
        "tests/test_tar.py",
        "tests/test_trust_state.py",
        "tests/test_state_checks.py",
        "tests/test_deferred.py",
        "tests/test_integrity.py",
        "tests/test_split.py",
    ],
    "io/deferred.py": ["tests/test_deferred.py", "tests/test_stages.py"],
    "stages/decode.py": [
        "tests/test_decode_stage.py",
        "tests/test_stages.py",
        "tests/test_decode_into_rows.py",
        "tests/test_trust_decode.py",
        "tests/test_dataset.py",
        "tests/test_schedule.py",
    ],
    # (test_workermemory.py's churn test counts page faults of a fresh interpreter, which mutmut's own
    # imports change: only populate's part of the module is measured, by its own tests)
    "workermemory.py": ["tests/test_buffer_populate.py"],
    "stages/parallel.py": [
        "tests/test_parallel_map.py",
        "tests/test_stages.py",
        "tests/test_decode_stage.py",
        "tests/test_dataset.py",
    ],
    "format/tar/writer.py": [
        "tests/test_tar_writer_units.py",
        "tests/test_writer.py",
        "tests/test_writer_edge.py",
        "tests/test_trust_write.py",
        "tests/test_tar.py",
    ],
    "format/sample.py": ["tests/test_sample.py", "tests/test_stage_units.py", "tests/test_tar.py"],
    "io/verify.py": ["tests/test_hashing_reader.py", "tests/test_integrity.py"],
    "write/sources/base.py": [
        "tests/test_sources_units.py",
        "tests/test_write_sources_edge.py",
        "tests/test_sources.py",
        "tests/test_registry.py",
    ],
    "indexed.py": [
        "tests/test_indexed_units.py",
        "tests/test_audit_io_indexed.py",
        "tests/test_index.py",
        "tests/test_trust_index.py",
        "tests/test_block_reads.py",
        "tests/test_block_shuffle.py",
    ],
    "mix.py": ["tests/test_mix_units.py", "tests/test_mix.py", "tests/test_audit_mix.py"],
    # (test_serve_audit.py and test_serve_limits.py reach it only inside `shardpipe serve` processes, where
    # mutmut cannot see which test called it: they would select no mutant's tests)
    "serve/coordination.py": ["tests/test_coordination_units.py", "tests/test_trust_serve.py"],
    "write/shard_writer.py": [
        "tests/test_shard_writer_units.py",
        "tests/test_writer.py",
        "tests/test_writer_edge.py",
        "tests/test_trust_write.py",
        "tests/test_write_options.py",
    ],
    # (test_remote_random.py reads through nginx, and much of it inside DataLoader workers: left out)
    "io/ranged.py": ["tests/test_ranged_units.py", "tests/test_indexed_units.py", "tests/test_block_reads.py"],
    "augment/geometry.py": [
        "tests/test_geometry_units.py",
        "tests/test_augment.py",
        "tests/test_resample_quality.py",
        "tests/test_schedule.py",
    ],
    "augment/color.py": ["tests/test_color_units.py", "tests/test_augment.py"],
    "image/size.py": ["tests/test_size_units.py", "tests/test_decoders.py"],
    "stages/base.py": [
        "tests/test_stage_base_units.py",
        "tests/test_stages.py",
        "tests/test_stage_units.py",
        "tests/test_state_checks.py",
    ],
    "split/block.py": ["tests/test_split_block_units.py", "tests/test_block_shuffle.py", "tests/test_block_reads.py"],
    "io/budget.py": ["tests/test_budget_units.py", "tests/test_stream_units.py", "tests/test_ranged_units.py"],
    "augment/resample.py": [
        "tests/test_resample_units.py",
        "tests/test_resample_quality.py",
        "tests/test_geometry_nocv2.py",
        "tests/test_geometry_units.py",
        "tests/test_fused.py",
    ],
}

#: modules of which only some functions are measured: mutants whose name holds one of these
FOCUS: dict[str, tuple[str, ...]] = {
    "loader.py": ("ǁShardLoaderǁstate_dict__", "ǁShardLoaderǁload_state_dict__", "ǁShardLoaderǁ_pass_buffers__"),
    "workermemory.py": ("x_populate__", "x__lookup_madvise__"),
}

#: tests left out of every run (``-k`` terms): the gloo tests start whole training processes per mutant
#: (minutes each, for code the other tests reach); programs run from another folder cannot find the
#: scratch copy's mutmut settings from their trampolines and fail before any of the module runs
LEAVE_OUT = (
    "not gloo",
    "not test_a_program_reads_every_sample_each_epoch_through_deferred_windows_in_workers",
    "not test_the_writers_refuse_it_before_writing",
    "not test_the_cli_prints_a_brace_range_of_the_shards_with_literal_braces",
    "not test_the_cli_shows_the_warning",
)

CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}

# mutmut's own internals generate the mutants without running anything, so that a sample can be
# drawn from their names first; they are not a public API, hence the pinned version (pyproject)
_GENERATE = """
from mutmut.__main__ import create_mutants
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)
"""


@dataclass
class ModuleScore:
    module: str
    tests: list[str]
    total: int = 0
    statuses: dict[str, str] = field(default_factory=dict)
    equivalent: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def scored(self) -> dict[str, str]:
        return {k: v for k, v in self.statuses.items() if k not in self.equivalent}

    @property
    def caught(self) -> int:
        return sum(s in CAUGHT for s in self.scored.values())

    @property
    def score(self) -> float:
        return 100.0 * self.caught / max(1, len(self.scored))

    @property
    def survivors(self) -> list[str]:
        return sorted(k for k, s in self.scored.items() if s not in CAUGHT)


def load_equivalent() -> dict[str, str]:
    """Mutant name -> why it is equivalent (lines of ``name reason``; ``#`` starts a comment)."""
    if not EQUIVALENT_FILE.exists():
        return {}
    found = {}
    for line in EQUIVALENT_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            found[name] = why.strip()
    return found


def scratch_copy(module: str, tests: list[str], workdir: Path, root: Path) -> None:
    """A copy of the tree at ``root`` whose pyproject tells mutmut to mutate only ``module``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", "mutants", "bench-env", "build", "*.egg-info")
    for name in ("shardpipe", "tests", "configs"):
        if (root / name).exists():
            shutil.copytree(root / name, workdir / name, ignore=ignore)
    pyproject = (root / "pyproject.toml").read_text()
    pytest_args = ["-p", "no:cacheprovider", "-x", "-q", "-k", " and ".join(LEAVE_OUT)]
    pyproject += (
        "\n[tool.mutmut]\n"
        'source_paths = ["shardpipe"]\n'
        f'only_mutate = ["shardpipe/{module}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        f"pytest_add_cli_args = {json.dumps(pytest_args)}\n"
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
    )
    (workdir / "pyproject.toml").write_text(pyproject)


def mutant_names(workdir: Path, module: str) -> list[str]:
    """The module's mutants (only those of its ``FOCUS`` functions, where it has any), sorted."""
    meta = workdir / "mutants" / "shardpipe" / (module + ".meta")
    names = json.loads(meta.read_text())["exit_code_by_key"]
    focus = FOCUS.get(module)
    return sorted(n for n in names if not focus or any(f in n for f in focus))


def run_module(module: str, tests: list[str], args: argparse.Namespace, equivalent: dict[str, str]) -> ModuleScore:
    from mutmut.stats import status_by_exit_code

    start = time.monotonic()
    workdir = Path(args.workdir) / module.replace("/", "_")
    root = Path(args.root).resolve()
    tests = [t for t in tests if (root / t).exists()]
    env = {**os.environ, "PYTHONPATH": str(workdir / "mutants"), "PYTHONDONTWRITEBYTECODE": "1"}
    if not args.report:
        scratch_copy(module, tests, workdir, root)
        log = open(workdir / "mutmut.log", "w")
        subprocess.run([sys.executable, "-c", _GENERATE], cwd=workdir, env=env, check=True, stdout=log, stderr=log)
    names = mutant_names(workdir, module)
    chosen = sorted(random.Random(args.seed).sample(names, min(args.sample, len(names))))
    result = ModuleScore(module, tests, total=len(names))
    meta = workdir / "mutants" / "shardpipe" / (module + ".meta")

    def statuses() -> dict[str, str]:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        return {name: status_by_exit_code[codes.get(name)] for name in chosen}

    if args.report:
        result.statuses = statuses()
    else:
        print(f"{module}: {len(names)} mutants, running {len(chosen)} against {' '.join(tests)}", flush=True)
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *chosen]
        result.statuses = run_checked(
            lambda: subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=log), statuses
        )
    result.equivalent = {name: equivalent[name] for name in chosen if name in equivalent}
    result.seconds = time.monotonic() - start
    if all(s == "not checked" for s in result.statuses.values()):
        raise SystemExit(f"{module}: mutmut checked no mutant; see {workdir / 'mutmut.log'}")
    return result


def run_checked(run: Callable[[], object], statuses: Callable[[], dict[str, str]], tries: int = 2) -> dict[str, str]:
    """``run()`` mutmut and read the statuses; again (up to ``tries`` runs) while it checked no mutant at all.

    mutmut first runs every selected test once in a forked child to learn which tests call which function;
    that child sometimes dies (a segfault in native code after the fork, seen here about one run in four for
    ``stages/untar.py``), and then no mutant is checked. A second run usually goes through."""
    for attempt in range(tries):
        run()
        found = statuses()
        if any(s != "not checked" for s in found.values()):
            break
        if attempt + 1 < tries:
            print("  mutmut checked no mutant (its test-collection run failed); running it again", flush=True)
    return found


def show_survivors(result: ModuleScore, workdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(workdir / "mutants")}
    for name in result.survivors:
        out = subprocess.run(
            [sys.executable, "-m", "mutmut", "show", name], cwd=workdir, env=env, capture_output=True, text=True
        )
        print(f"--- {result.statuses[name]}: {out.stdout.strip()}\n")


def render(results: list[ModuleScore], args: argparse.Namespace) -> str:
    lines = [
        f"Command: `python tools/mutation.py --sample {args.sample} --seed {args.seed}`"
        f" (mutmut {mutmut_version()}, {time.strftime('%Y-%m-%d', time.gmtime())}).",
        "",
        "| module | tests | mutants | sampled | equivalent | caught | score | survivors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        survivors = ", ".join(f"`{n.rsplit('.', 1)[-1]}`" for n in r.survivors) or "-"
        tests = " ".join(Path(t).name for t in r.tests)
        focus = FOCUS.get(r.module)
        scope = f" ({', '.join(f.strip('_').rsplit('ǁ', 1)[-1] for f in focus)})" if focus else ""
        lines.append(
            f"| shardpipe/{r.module}{scope} | {tests} | {r.total} | {len(r.statuses)} | {len(r.equivalent)} "
            f"| {r.caught}/{len(r.scored)} | {r.score:.0f}% | {survivors} |"
        )
    return "\n".join(lines) + "\n"


def mutmut_version() -> str:
    """The installed mutmut's version (the table says which mutmut scored it); "not installed" where it is
    not, so that the bookkeeping runs, and is tested, without the ``mutation`` extra."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mutmut")
    except PackageNotFoundError:
        return "not installed"


def write_doc(table: str, results: list[ModuleScore]) -> None:
    """Replace the modules just run in the score table of docs/mutation.md, keeping the others."""
    text = DOC.read_text() if DOC.exists() else f"# Mutation testing\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    rows = {}
    for line in old.splitlines():
        m = re.match(r"\| shardpipe/(\S+)[^|]*\|", line)
        if m:
            rows[m.group(1)] = line
    new_lines = table.splitlines()
    for line in new_lines:
        m = re.match(r"\| shardpipe/(\S+)[^|]*\|", line)
        if m:
            rows[m.group(1)] = line
    header = [line for line in new_lines if not line.startswith("| shardpipe/")]
    order = [m for m in MODULES if m in rows] + sorted(set(rows) - set(MODULES))
    body = "\n".join(header + [rows[m] for m in order])
    DOC.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="*", default=list(MODULES), help="paths under shardpipe/ (default: all)")
    ap.add_argument("--sample", type=int, default=60, help="mutants per module, drawn with --seed (default 60)")
    ap.add_argument("--seed", type=int, default=26)
    ap.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument("--workdir", default="/tmp/shardpipe-mutation")
    ap.add_argument("--root", default=str(ROOT), help="the tree to mutate and test (e.g. an older commit's export)")
    ap.add_argument("--min-score", type=float, default=85.0, help="exit 1 when a module scores below this")
    ap.add_argument("--no-doc", action="store_true", help="print the table only; leave docs/mutation.md alone")
    ap.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    ap.add_argument("--report", action="store_true", help="score the last run's results in --workdir again (no run)")
    args = ap.parse_args(argv)

    equivalent = load_equivalent()
    results = []
    for module in args.modules:
        module = module.removeprefix("shardpipe/")
        if module not in MODULES:
            ap.error(f"unknown module {module!r}; known: {', '.join(MODULES)}")
        r = run_module(module, MODULES[module], args, equivalent)
        print(
            f"  {r.score:.0f}% ({r.caught}/{len(r.scored)} caught, {len(r.equivalent)} equivalent) "
            f"in {r.seconds:.0f}s; survivors: {' '.join(r.survivors) or '-'}",
            flush=True,
        )
        if args.show:
            show_survivors(r, Path(args.workdir) / module.replace("/", "_"))
        results.append(r)
    table = render(results, args)
    print(table)
    if not args.no_doc:
        write_doc(table, results)
    low = [r.module for r in results if r.score < args.min_score]
    if low:
        print(f"below {args.min_score:.0f}%: {', '.join(low)}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
