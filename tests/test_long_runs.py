"""Persistent workers in long runs, as training-loop programs run in subprocesses: loops that leave
each epoch early, and workers that die between epochs."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

from shardpipe.devtools.synth import make_image

from .helpers import run_in_group, write_manifest_dataset

ROOT = Path(__file__).resolve().parent.parent
COUNTS = [8, 4, 12, 1, 7, 9, 5]

PRELUDE = """
import json, os, signal, sys, threading, time
import torch
from shardpipe import ShardDataset, ShardLoader
from shardpipe.augment import RandomResizedCrop

MANIFEST = {manifest!r}


def dataset():
    return ShardDataset(MANIFEST, shuffle=6, seed=11, batch_size=2, transform=RandomResizedCrop(16))


def pixels(epoch):
    \"\"\"Each sample's augmented pixels in ``epoch``, from a pass in this process.\"\"\"
    ds = dataset()
    ds.set_epoch(epoch)
    return {{k: img.clone() for b in ds for k, img in zip(b["__key__"], b["jpg"])}}


def same(batch, ref):
    return all(torch.equal(img, ref[k]) for k, img in zip(batch["__key__"], batch["jpg"]))


def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    samples = []
    for i in range(sum(COUNTS)):
        buf = io.BytesIO()
        make_image(i, size=(64, 48)).save(buf, "JPEG", quality=90)
        samples.append({"__key__": f"sample{i:05d}", "jpg": buf.getvalue(), "cls": i % 5})
    return write_manifest_dataset(tmp_path_factory.mktemp("long-runs"), samples, COUNTS)


def run_program(tmp_path: Path, manifest: str, body: str) -> tuple[dict, str]:
    """Run the prelude and ``body`` as a script; (its RESULT values, its stderr)."""
    script = tmp_path / "train.py"
    script.write_text(PRELUDE.format(manifest=manifest) + body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = run_in_group([sys.executable, str(script)], timeout=240, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = [json.loads(line[7:]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, run.stdout
    return results[0], run.stderr


LEAVES_EARLY = """
from shardpipe.stages.buffers import SLOTS, _segment_id

loader = ShardLoader(dataset(), num_workers=2, persistent_workers=True, prefetch_factor=2)
kept = []
for epoch in range(4):  # a loop of fewer steps than the epoch has batches leaves each pass early
    for step, batch in enumerate(loader):
        if step == 1:
            kept.append((epoch, batch))
            break
batch = None
segments, batches, keys, right = set(), 0, [], True
ref = pixels(4)
for batch in loader:  # a whole epoch
    segments.add(_segment_id(batch["jpg"].untyped_storage()))
    batches += 1
    keys += batch["__key__"]
    right = right and same(batch, ref)
report(segments=len(segments), batches=batches, slots=2 * SLOTS, right=right, keys=sorted(keys),
       kept=[same(b, pixels(e)) for e, b in kept])
"""


def test_a_loop_that_leaves_each_epoch_early_keeps_recycling_batch_buffers(tmp_path, manifest):
    """torch drops the batches persistent workers had in flight when the next pass starts; their
    buffers go back to the pool (they stayed busy for good: after two such epochs every batch took a
    fresh segment), and the batches the loop kept are never overwritten."""
    r, _ = run_program(tmp_path, manifest, LEAVES_EARLY)
    assert r["right"] and r["kept"] == [True] * 4
    assert r["keys"] == [f"sample{i:05d}" for i in range(sum(COUNTS))]
    assert r["segments"] <= r["slots"] < r["batches"], r  # recycled: at most SLOTS per worker


KILLED_BETWEEN_EPOCHS = """
if sys.argv[1] == "forkserver":  # a thread beside the loop (a progress bar's): workers come from the forkserver
    threading.Thread(target=threading.Event().wait, daemon=True).start()
fresh = ShardLoader(dataset(), num_workers=2)
expected = [[tuple(b["__key__"]) for b in fresh] for _ in range(3)]
loader = ShardLoader(dataset(), num_workers=2, persistent_workers=True)
epochs = [[tuple(b["__key__"]) for b in loader]]
victim = loader._iterator._workers[1].pid
os.kill(victim, signal.SIGKILL)  # the OOM killer, while the program validates or saves a checkpoint
for _ in range(3000):  # until it is gone (a zombie, for a forked worker)
    try:
        if open(f"/proc/{{victim}}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            break
    except FileNotFoundError:
        break
    time.sleep(0.01)
time.sleep(0.5)  # the program goes on with its own work
right = True
for epoch in (1, 2):
    ref, keys = pixels(epoch), []
    for b in loader:
        keys.append(tuple(b["__key__"]))
        right = right and same(b, ref)
    epochs.append(keys)
report(same_order=epochs == expected, right=right, victim=victim)
"""


@pytest.mark.parametrize("context", ["fork", "forkserver"])
def test_a_persistent_worker_killed_between_epochs_is_replaced_and_the_next_epochs_are_exact(
    tmp_path, manifest, context
):
    """A forked worker's death was raised by torch's SIGCHLD handler in the program's own code between
    epochs; a forkserver worker's made the next epoch a WorkerDiedError and every later one 'Queue is
    closed'. Now the next pass starts new workers, with a warning, and the epochs come out exactly as
    with fresh workers."""
    program = KILLED_BETWEEN_EPOCHS.replace("sys.argv[1]", repr(context))
    r, err = run_program(tmp_path, manifest, program)
    assert r["same_order"] and r["right"], r
    assert re.search(
        rf"^DataLoader worker 1 \(pid {r['victim']}\) was killed by SIGKILL between passes; the others were "
        r"stopped, and new workers start epoch 1$",
        err,
        re.M,
    ), err


@pytest.mark.parametrize("persistent", [False, True])
def test_a_forked_worker_killed_mid_epoch_is_raised_where_the_loop_asks_not_in_its_training_step(
    tmp_path, manifest, persistent
):
    """torch's SIGCHLD handler raised a forked worker's death as a RuntimeError inside whatever the program
    ran (here a training step that sleeps); now the step finishes and the loop's next batch raises
    WorkerDiedError naming the worker, as with forkserver workers."""
    program = f"""
loader = ShardLoader(dataset(), num_workers=2, multiprocessing_context="fork", persistent_workers={persistent})
it = iter(loader)
next(it)
victim = it.gi_frame.f_locals["it"]._workers[1].pid  # torch's iterator, inside the loader's pass
step_done, error = False, None
os.kill(victim, signal.SIGKILL)
try:
    time.sleep(1.5)  # the training step: the worker's SIGCHLD arrives meanwhile
    step_done = True
    for _ in it:
        pass
except Exception as e:
    error = f"{{type(e).__name__}}: {{e}}"
report(step_done=step_done, error=error, victim=victim)
"""
    r, _ = run_program(tmp_path, manifest, program)
    assert r["step_done"], r
    assert r["error"].startswith(f"WorkerDiedError: DataLoader worker 1 (pid {r['victim']}) was killed by SIGKILL"), r


CTRL_C_DURING_THE_FORKS = """
forks, epoch = [], 0


def ctrl_c_at_the_first_fork_of_epoch_1():
    forks.append(epoch)
    if forks.count(1) == 1 and epoch == 1:
        os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C that lands while the workers are forked


os.register_at_fork(after_in_parent=ctrl_c_at_the_first_fork_of_epoch_1)
loader = ShardLoader(dataset(), num_workers=2, multiprocessing_context="fork")
try:
    for epoch in range(3):
        for batch in loader:
            pass
    report(interrupted=None, epoch=epoch)
except KeyboardInterrupt:
    report(interrupted=True, epoch=epoch)
"""


def test_a_ctrl_c_that_comes_while_workers_are_forked_stops_the_program(tmp_path, manifest):
    """Python ran the KeyboardInterrupt inside an at-fork callback (logging's), which prints it as
    "Exception ignored" and drops it: the program went on training (about one Ctrl-C in three at an
    epoch's start). Now it is raised once the workers are forked."""
    r, err = run_program(tmp_path, manifest, CTRL_C_DURING_THE_FORKS)
    assert r == {"interrupted": True, "epoch": 1}, (r, err[-2000:])
    assert "Exception ignored" not in err, err[-2000:]


DIES_AS_TORCH_STARTS_THE_PASS = """
import gc


def die_at_start(worker_id):
    time.sleep(0.05)  # well inside torch's start of the pass: queueing its prefetch below takes longer
    os.kill(os.getpid(), signal.SIGKILL)


def children():
    return open(f"/proc/self/task/{os.getpid()}/children").read().split()


def fds():
    return len(os.listdir("/proc/self/fd"))


keys = [k for b in ShardLoader(dataset(), num_workers=1, multiprocessing_context="fork") for k in b["__key__"]]
gc.collect()
before = fds()
loader = ShardLoader(dataset(), num_workers=1, multiprocessing_context="fork", prefetch_factor=200_000,
                     worker_init_fn=die_at_start)
error = None
try:
    next(iter(loader))
except Exception as e:
    error = f"{type(e).__name__}: {e}"
del loader  # (it holds its dataset's shared tables)
gc.collect()
left = dict(children=children(), fds=fds() - before)
again = [k for b in ShardLoader(dataset(), num_workers=1, multiprocessing_context="fork") for k in b["__key__"]]
report(error=error, left=left, again=sorted(again) == sorted(keys))
"""


def test_a_forked_worker_that_dies_while_torch_starts_the_pass_is_a_worker_died_error(tmp_path, manifest):
    """A worker that died while torch had it registered with its SIGCHLD handler (torch starts the pass,
    before shardpipe unregisters it) came out of the first next() as torch's bare RuntimeError, raised
    wherever torch's start was (possibly holding a queue's lock). Now it is a WorkerDiedError, the
    workers are stopped (no child, no open fd left) and the next loader runs."""
    r, _ = run_program(tmp_path, manifest, DIES_AS_TORCH_STARTS_THE_PASS)
    assert re.match(r"WorkerDiedError: DataLoader worker 0 \(pid \d+\) was killed by SIGKILL", r["error"]), r
    assert r["left"] == {"children": [], "fds": 0}, r
    assert r["again"], r
