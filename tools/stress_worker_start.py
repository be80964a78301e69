"""Stress the worker start-up: run each user-style program N times; count hangs and failures.

Each program (``shardpipe.devtools.worker_programs``: 2 workers beside busy torch/numpy/logging
threads, a transform class defined in the program, every epoch's keys checked) runs as its
own process with a hard timeout. Prints per program: runs that ended well, failed (an
error, e.g. a worker that died or stalled) or hung (killed at the hard timeout), and the
median first-batch latency of the first fresh pass (includes starting a forkserver), of a
later fresh pass, and of a later persistent-workers pass.

    python tools/stress_worker_start.py [--rounds 20] [--code /work/main] [--context auto|fork]

``--code`` picks the shardpipe checkout on PYTHONPATH (compare before/after in one run with
two invocations); ``--context`` is passed as ``multiprocessing_context``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: (name, launcher, program kind, main guard)
PROGRAMS = [
    ("script-no-guard", "script", "epochs", False),
    ("script-guarded", "script", "epochs", True),
    ("stdin", "stdin", "persistent", False),
    ("python-c", "dash_c", "epochs", False),
    ("exec", "exec", "epochs", False),
    ("notebook", "notebook", "persistent", False),
    ("torchrun", "torchrun", "torchrun", True),
]


def write_data(root: Path) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT))
    from tests.helpers import make_samples, write_manifest_dataset

    samples = make_samples(24)
    manifest = write_manifest_dataset(root, samples, [6, 6, 6, 6])
    keys = root / "keys.json"
    keys.write_text(json.dumps([s["__key__"] for s in samples]))
    return manifest, str(keys)


def run_once(argv: list[str], stdin: bytes | None, env: dict[str, str], timeout: float, cwd: Path) -> tuple[str, str]:
    """('ok' | 'failed: <last error line>' | 'hung', stdout)."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        return "hung", (e.stdout or b"").decode(errors="replace")
    out = done.stdout.decode(errors="replace")
    if done.returncode == 0 and out.rstrip().endswith("DONE"):
        return "ok", out
    lines = [ln for ln in (done.stderr.decode(errors="replace") + out).splitlines() if "Error" in ln]
    return "failed: " + (lines[-1][:160] if lines else f"exit {done.returncode}"), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--code", default=str(ROOT), help="the shardpipe checkout to run (PYTHONPATH)")
    ap.add_argument("--context", default="auto", help="multiprocessing_context for the programs' loaders")
    ap.add_argument("--programs", default=",".join(p[0] for p in PROGRAMS))
    ap.add_argument("--timeout", type=float, default=120, help="hard seconds per run (then: hung)")
    ap.add_argument("--stall-timeout", type=float, default=60, help="the loaders' stall_timeout")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from shardpipe.devtools.worker_programs import command, parse_results, source

    chosen = [p for p in PROGRAMS if p[0] in args.programs.split(",")]
    env = {
        **os.environ,
        "PYTHONPATH": args.code,
        "WORKER_CONTEXT": args.context,
        "WORKER_STALL_TIMEOUT": str(args.stall_timeout),
    }
    print(f"code {args.code}, context {args.context}, {args.rounds} rounds, load average {os.getloadavg()}")
    print(f"{'program':<16} {'ok':>3} {'failed':>6} {'hung':>4} {'first pass s':>12} {'fresh s':>8} {'persist s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest, keys = write_data(work)
        for name, launcher, kind, guard in chosen:
            program = work / f"{name}.py"
            program.write_text(source(kind, manifest, keys, guard=guard))
            argv, stdin = command(launcher, program)
            outcomes: list[str] = []
            first, fresh, persist = [], [], []
            t0 = time.monotonic()
            for _ in range(args.rounds):
                outcome, out = run_once(argv, stdin, env, args.timeout, work)
                outcomes.append(outcome)
                for r in parse_results(out) if outcome == "ok" else []:
                    if r.get("first_batch_s") is None:
                        continue
                    if r["label"] == "fresh":
                        (first if r["epoch"] == 0 else fresh).append(r["first_batch_s"])
                    elif r["label"] == "persistent" and r["epoch"] > 0:
                        persist.append(r["first_batch_s"])
            failed = [o for o in outcomes if o.startswith("failed")]
            print(
                f"{name:<16} {outcomes.count('ok'):>3} {len(failed):>6} {outcomes.count('hung'):>4} "
                f"{_median(first):>12} {_median(fresh):>8} {_median(persist):>9}   ({time.monotonic() - t0:.0f} s)"
            )
            for o in sorted(set(failed)):
                print(f"    {failed.count(o)}x {o}")
    print(f"load average at the end {os.getloadavg()}")


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


if __name__ == "__main__":
    main()
