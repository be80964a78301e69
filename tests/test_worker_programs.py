"""Workers start the way users' programs run (issue 20): real programs in subprocesses.

Each program (``shardpipe.devtools.worker_programs``) runs a 2-worker ShardLoader beside
busy threads (torch and numpy RNG loops, logging, fsspec's loop) with a transform class
defined in the program itself, and checks every epoch's keys exactly once. Launched as a
script with and without a main guard, from stdin, with ``-c``, through ``exec``, as notebook
cells (nbclient), under torchrun; plus a worker SIGKILLed while idle and workers that fail
at start-up, each reported within seconds rather than after ``stall_timeout``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.devtools.worker_programs import command, parse_results, source

from .helpers import make_samples, write_manifest_dataset

ROOT = Path(__file__).resolve().parent.parent
#: a hard limit per program; far below it, the loader's stall_timeout (so a hang cannot pass as slow)
HARD_TIMEOUT_S = 150
STALL_TIMEOUT_S = 100


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    """(manifest, keys file): 24 samples in 4 shards, written once for every program here."""
    root = tmp_path_factory.mktemp("worker-programs")
    samples = make_samples(24)
    manifest = write_manifest_dataset(root, samples, [6, 6, 6, 6])
    keys = root / "keys.json"
    keys.write_text(json.dumps([s["__key__"] for s in samples]))
    return manifest, str(keys)


def run_program(
    tmp_path: Path, data: tuple[str, str], kind: str, launcher: str, guard: bool = False, **env: str
) -> tuple[str, list[dict]]:
    """Run a program as its own process; return its stdout and RESULT records (asserting it ended well)."""
    program = tmp_path / f"{kind}.py"
    program.write_text(source(kind, *data, guard=guard))
    argv, stdin = command(launcher, program)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "WORKER_STALL_TIMEOUT": str(STALL_TIMEOUT_S),
        **env,
    }
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=HARD_TIMEOUT_S, cwd=tmp_path, env=environment
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{launcher} {kind}: hung (no end within {HARD_TIMEOUT_S} s); output: {e.stdout!r} {e.stderr!r}")
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"{launcher} {kind} exited {done.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
    assert out.rstrip().endswith("DONE"), out[-3000:]
    return out, parse_results(out)


def assert_epochs(out: str, results: list[dict], labels: list[tuple[str, int]]) -> None:
    # the program ran once: a worker that re-ran __main__ would print START again
    assert len(re.findall(r"^START \d+$", out, re.M)) == 1, out
    assert [(r["label"], r["epoch"]) for r in results] == labels
    # busy threads were alive, so "auto" started the workers from shardpipe's forkserver
    assert {r["context"] for r in results} == {"CleanForkServerContext"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher,guard",
    [("script", False), ("script", True), ("dash_c", False), ("exec", False)],
    ids=["script-without-main-guard", "script-with-main-guard", "python-c", "exec"],
)
def test_fresh_workers_every_epoch_beside_busy_threads(tmp_path, data, launcher, guard):
    out, results = run_program(tmp_path, data, "epochs", launcher, guard)
    assert_epochs(out, results, [("fresh", 0), ("fresh", 1)])


@pytest.mark.slow
def test_stdin_program_runs_a_loader_then_a_persistent_one(tmp_path, data):
    """The first loader's queue threads are gone or not counted; the persistent one starts fine."""
    out, results = run_program(tmp_path, data, "persistent", "stdin")
    assert_epochs(out, results, [("fresh", 0), ("persistent", 0), ("persistent", 1)])


@pytest.mark.slow
def test_notebook_with_a_transform_class_defined_in_a_cell(tmp_path, data):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out, results = run_program(tmp_path, data, "persistent", "notebook")
    assert_epochs(out, results, [("fresh", 0), ("persistent", 0), ("persistent", 1)])


@pytest.mark.slow
def test_indexed_dataset_in_a_plain_dataloader_beside_busy_threads(tmp_path, data):
    """Random access through the user's own DataLoader: ``shardpipe.worker_context`` avoids forking beside threads."""
    from shardpipe import index_shards

    shards = sorted(str(p) for p in Path(data[0]).parent.glob("shard-*.tar"))
    index_shards(shards, str(tmp_path / "indexed.json"), workers=2)
    out, results = run_program(tmp_path, (str(tmp_path / "indexed.json"), data[1]), "indexed", "script")
    assert_epochs(out, results, [("indexed", 0), ("indexed", 1)])


@pytest.mark.slow
def test_torchrun_two_ranks_gloo(tmp_path, data):
    out, results = run_program(tmp_path, data, "torchrun", "torchrun", guard=True)
    assert len(re.findall(r"^START \d+$", out, re.M)) == 2, out  # one per rank, none from workers
    assert sorted((r["rank"], r["epoch"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)], out
    assert all(r["keys"] == 12 for r in results)  # each rank half; the ranks together: every key once


@pytest.mark.slow
def test_a_worker_killed_while_idle_is_reported_within_seconds(tmp_path, data):
    pids = tmp_path / "pids"
    pids.mkdir()
    _, results = run_program(tmp_path, data, "kill_idle", "script", WORKER_PID_DIR=str(pids))
    [r] = results
    assert r["error"] == "WorkerDiedError"
    assert re.match(
        rf"DataLoader worker 1 \(pid {r['victim']}\) was killed by SIGKILL in stage '[a-z -]+'.*; the other "
        r"workers were stopped\. A worker killed by SIGKILL was most likely stopped by the kernel's OOM killer",
        r["message"],
    ), r["message"]
    assert r["detect_s"] < 10 < STALL_TIMEOUT_S  # the health check, not the stall timeout


@pytest.mark.slow
def test_a_worker_failing_at_start_up_reports_its_own_error(tmp_path, data):
    _, results = run_program(tmp_path, data, "startup_error", "script")
    assert [r.get("label") for r in results] == ["fresh", None]
    r = results[1]
    assert r["error"] == "WorkerStartError"
    assert re.match(
        r"DataLoader worker [01] \(pid \d+\) exited with code 1 before its pipeline started, under "
        r"multiprocessing_context='auto' \(shardpipe's forkserver\).*; its own error:\n",
        r["message"],
        re.S,
    ), r["message"]
    assert "RuntimeError: NeedsADevice cannot be rebuilt in this process: no device here" in r["message"]
    assert r["detect_s"] < 15  # the server was already up: a second's health check, not stall_timeout


@pytest.mark.slow
def test_explicit_spawn_without_main_guard_fails_fast_with_what_to_do(tmp_path, data):
    _, results = run_program(tmp_path, data, "spawn_unguarded", "script")
    [r] = results
    assert r["error"] == "WorkerStartError"
    assert re.match(
        r"DataLoader worker [01] \(pid \d+\) exited with code 1 before its pipeline started, under "
        r"multiprocessing_context='spawn'.*put the training code under `if __name__ == \"__main__\":`",
        r["message"],
        re.S,
    ), r["message"]
    assert r["detect_s"] < STALL_TIMEOUT_S / 2


TQDM_PROGRAM = """
import sys
import tqdm
from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop

if sys.argv[2] == "off":
    tqdm.tqdm.monitor_interval = 0  # what shardpipe demo does
loader = ShardLoader(ShardDataset(sys.argv[1], transform=RandomResizedCrop(16), batch_size=4), num_workers=2)
n = 0
with tqdm.tqdm(total=24, file=sys.stderr) as bar:  # opened after the loader: no early forkserver
    for batch in loader:
        n += len(batch["cls"])
        bar.update(len(batch["cls"]))
print(type(loader.multiprocessing_context).__name__, n)
"""


@pytest.mark.parametrize("monitor", ["on", "off"])
def test_a_tqdm_bar_sends_workers_to_the_forkserver_unless_its_monitor_is_off(tmp_path, data, monitor):
    """What docs/reference.md says of tqdm: its monitor thread is a thread like any other."""
    program = tmp_path / "bar.py"
    program.write_text(TQDM_PROGRAM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(program), data[0], monitor],
        capture_output=True,
        text=True,
        timeout=HARD_TIMEOUT_S,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    context, n = done.stdout.split()
    assert n == "24"
    assert context == ("CleanForkServerContext" if monitor == "on" else "ForkContext")
