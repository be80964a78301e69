"""Launchers and frameworks: ranks from torchrun/SLURM variables, Accelerate and Lightning runs as real programs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.errors import SetupError
from shardpipe.ranks import rank_from_env

from .helpers import make_samples, write_manifest_dataset

ROOT = Path(__file__).resolve().parents[1]
COUNTS = [9, 2, 14, 5, 7]  # 37 samples
LAUNCH_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_LOCALID",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def manifest(tmp_path: Path) -> str:
    return write_manifest_dataset(tmp_path, make_samples(sum(COUNTS)), COUNTS)


# -- ranks from the environment ---------------------------------------------------------------


def test_rank_from_env_reads_each_launcher():
    assert rank_from_env({}) is None
    assert rank_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4)
    assert rank_from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}) == (3, 8)
    # srun's per-step count wins over the job's
    assert rank_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2"}) == (1, 2)
    # torchrun inside a SLURM allocation: torchrun's variables win
    assert rank_from_env({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "5", "SLURM_NTASKS": "6"}) == (0, 2)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "1"}, "RANK is set but WORLD_SIZE is not (torchrun / accelerate launch sets both)"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not"),
        ({"SLURM_PROCID": "0"}, "SLURM_PROCID is set but SLURM_STEP_NUM_TASKS or SLURM_NTASKS is not"),
        ({"SLURM_NTASKS": "4"}, "SLURM_NTASKS is set but SLURM_PROCID is not"),
        ({"RANK": "two", "WORLD_SIZE": "2"}, "environment variable RANK='two' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 and WORLD_SIZE=2 do not describe a process of a job"),
    ],
)
def test_half_set_or_bad_rank_variables_are_refused(env: dict, message: str):
    with pytest.raises(SetupError) as e:
        rank_from_env(env)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "launcher",
    [
        lambda r, n: {"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r)},  # torchrun, accelerate launch
        lambda r, n: {"SLURM_PROCID": str(r), "SLURM_NTASKS": str(n), "SLURM_LOCALID": str(r)},  # srun
    ],
    ids=["torchrun", "srun"],
)
def test_processes_started_by_a_launcher_read_disjoint_equal_shares(manifest: str, launcher):
    world = 2
    runs = [
        subprocess.run(
            [sys.executable, "-m", "tests.rank_keys_prog", manifest],
            cwd=ROOT,
            env=clean_env(**launcher(r, world)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        for r in range(world)
    ]
    results = [json.loads(run.stdout) for run in runs]
    assert [r["rank"] for r in results] == [[0, world], [1, world]]
    keys = [r["keys"] for r in results]
    assert len(keys[0]) == len(keys[1]) == sum(COUNTS) // world
    assert not set(keys[0]) & set(keys[1])


def test_a_half_set_launcher_environment_fails_naming_the_variable(manifest: str):
    run = subprocess.run(
        [sys.executable, "-m", "tests.rank_keys_prog", manifest],
        cwd=ROOT,
        env=clean_env(SLURM_PROCID="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(run.stdout)
    assert result["error"] == "SetupError"
    assert "SLURM_PROCID is set but SLURM_STEP_NUM_TASKS or SLURM_NTASKS is not" in result["message"]


# -- Accelerate -------------------------------------------------------------------------------


def accelerate_run(manifest: str, out: Path, processes: int, *args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("accelerate")
    launcher = shutil.which("accelerate")
    assert launcher, "accelerate is installed but its launcher is not on PATH"
    command = [launcher, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # several processes: torchrun under the hood (gloo on a machine without a GPU)
    command += ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    command += ["-m", "tests.accelerate_prog", manifest, str(out), *args]
    return subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=240)


def read_ranks(out: Path, world: int) -> list[list[list[str]]]:
    return [json.loads(Path(f"{out}.rank{r}.json").read_text())["batches"] for r in range(world)]


@pytest.mark.slow
def test_accelerate_two_processes_exactly_once_equal_batches_and_resume(manifest: str, tmp_path: Path):
    world, epochs = 2, 2
    full = accelerate_run(manifest, tmp_path / "full", world, "--epochs", str(epochs))
    assert full.returncode == 0, full.stderr[-3000:]
    batches = read_ranks(tmp_path / "full", world)
    per_epoch = sum(COUNTS) // world // 3  # drop policy: 18 samples a rank, batches of 3
    assert [len(b) for b in batches] == [per_epoch * epochs] * world
    for epoch in range(epochs):
        keys = [k for rank in batches for b in rank[epoch * per_epoch : (epoch + 1) * per_epoch] for k in b]
        assert len(keys) == len(set(keys)) == sum(COUNTS) - 1  # exactly once; one sample of 37 left out

    ckpt = tmp_path / "ckpt"
    first = accelerate_run(manifest, tmp_path / "first", world, "--stop", "8", "--ckpt", str(ckpt))
    assert first.returncode == 0, first.stderr[-3000:]
    rest = accelerate_run(manifest, tmp_path / "rest", world, "--ckpt", str(ckpt), "--resume", "--epochs", "2")
    assert rest.returncode == 0, rest.stderr[-3000:]
    # the resumed run goes on mid-epoch 1 and its loop's "2 epochs" are epochs 1 and 2: compare what overlaps
    for r, (a, b) in enumerate(zip(read_ranks(tmp_path / "first", world), read_ranks(tmp_path / "rest", world))):
        assert a + b[: len(batches[r]) - len(a)] == batches[r], f"rank {r} did not resume where it stopped"


@pytest.mark.slow
def test_accelerate_state_saved_between_epochs_resumes_with_another_number_of_processes(manifest: str, tmp_path):
    """Two processes save at the end of epoch 0; one process goes on with epoch 1 (it was refused), while a
    state saved mid-epoch stays refused."""
    full = accelerate_run(manifest, tmp_path / "full", 1, "--epochs", "2")
    assert full.returncode == 0, full.stderr[-3000:]
    (alone,) = read_ranks(tmp_path / "full", 1)
    per_epoch = len(alone) // 2  # 37 samples, workers of 19 and 18 in batches of 3: 7 + 6 batches
    assert per_epoch == 13
    ckpt = tmp_path / "ckpt"
    first = accelerate_run(manifest, tmp_path / "first", 2, "--stop", "6", "--ckpt", str(ckpt))  # all of epoch 0
    assert first.returncode == 0, first.stderr[-3000:]
    rest = accelerate_run(manifest, tmp_path / "rest", 1, "--ckpt", str(ckpt), "--resume", "--epochs", "1")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert read_ranks(tmp_path / "rest", 1) == [alone[per_epoch:]]

    mid = accelerate_run(manifest, tmp_path / "mid", 2, "--stop", "4", "--ckpt", str(ckpt))
    assert mid.returncode == 0, mid.stderr[-3000:]
    refused = accelerate_run(manifest, tmp_path / "refused", 1, "--ckpt", str(ckpt), "--resume")
    assert refused.returncode != 0
    assert (
        "SetupError: the checkpoint holds loader states of 2 processes saved mid-epoch but 1 run now: each "
        "process's position only holds for 2; resume with 2 processes (a checkpoint saved between epochs fits "
        "any number)"
    ) in refused.stderr


PLAIN_DATALOADER_PROG = """
import json, torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from shardpipe import ShardDataset
from shardpipe.integrations import accelerate as sp_accelerate
import sys
accelerator = Accelerator(cpu=True)
loader = DataLoader(ShardDataset(sys.argv[1], decode=None), batch_size=4)
try:
    sp_accelerate.prepare(accelerator, torch.nn.Linear(3, 5), loader)
    print(json.dumps({"type": None}))
except Exception as e:
    print(json.dumps({"type": type(e).__name__, "message": str(e)}))
"""


def test_accelerate_prepare_refuses_a_plain_dataloader_over_a_shard_dataset(manifest: str):
    """Accelerate re-shards such a loader: each of 2 processes kept 12 keys of its 18, 10 of them distinct."""
    pytest.importorskip("accelerate")
    run = subprocess.run(
        [sys.executable, "-c", PLAIN_DATALOADER_PROG, manifest],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {
        "type": "SetupError",
        "message": "a DataLoader over a ShardDataset would be split again by Accelerate (each rank would keep "
        "only part of its own share, or rank 0 would read for all): pass ShardLoader(dataset, num_workers=...) "
        "instead, which this prepare keeps whole and resumable",
    }


def test_rank_states_travel_on_the_gpu_under_nccl(monkeypatch):
    """NCCL has no CPU side: gathering the ranks' states as CPU tensors failed at every checkpoint on GPUs."""
    import torch

    from shardpipe.integrations.ranks_state import collective_device

    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "gloo")
    assert collective_device() == torch.device("cpu")


def test_accelerate_refuses_dispatch_batches_and_a_plain_prepare(manifest: str, tmp_path: Path):
    dispatch = accelerate_run(manifest, tmp_path / "d", 1, "--mode", "dispatch")
    assert dispatch.returncode != 0
    assert "SetupError" in dispatch.stderr and "dispatch_batches=True" in dispatch.stderr
    plain = accelerate_run(manifest, tmp_path / "p", 1, "--mode", "plain-prepare")
    assert plain.returncode != 0
    assert "SetupError" in plain.stderr
    assert "shardpipe.integrations.accelerate.prepare(accelerator, model, optimizer, loader)" in plain.stderr


# -- Lightning --------------------------------------------------------------------------------


def lightning_run(
    manifest: str, out: Path, ckpt_dir: Path, max_steps: int, resume: Path | None = None, devices: int = 1,
    *flags: str,
) -> list:  # fmt: skip
    pytest.importorskip("lightning")
    command = [sys.executable, "-m", "tests.lightning_prog", manifest, str(out), str(ckpt_dir), str(max_steps), "2",
               str(devices)]  # fmt: skip
    run = subprocess.run(
        command + ([str(resume)] if resume else []) + list(flags),
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    if devices == 1:
        return json.loads(out.read_text())
    return [json.loads(Path(str(out).replace(".json", f".rank{r}.json")).read_text()) for r in range(devices)]


@pytest.mark.slow
def test_lightning_resumes_mid_epoch_from_its_checkpoint(manifest: str, tmp_path: Path):
    full = lightning_run(manifest, tmp_path / "full.json", tmp_path / "c0", -1)
    assert len(full) == 2 * 10  # 37 samples in batches of 4, one process, 2 epochs
    for epoch in (full[:10], full[10:]):
        keys = [k for b in epoch for k in b]
        assert sorted(keys) == sorted(s["__key__"] for s in make_samples(sum(COUNTS)))
    first = lightning_run(manifest, tmp_path / "a.json", tmp_path / "c1", 13)  # stops 3 batches into epoch 1
    rest = lightning_run(manifest, tmp_path / "b.json", tmp_path / "c2", -1, resume=tmp_path / "c1" / "last.ckpt")
    assert first == full[:13]
    assert rest == full[13:]


@pytest.mark.slow
def test_lightning_ddp_two_processes_resume_each_rank_where_it_stopped(manifest: str, tmp_path: Path):
    """Lightning writes rank 0's checkpoint: it must hold both ranks' positions."""
    full = lightning_run(manifest, tmp_path / "full.json", tmp_path / "c0", -1, devices=2)
    per_epoch = 3  # 18 samples a rank (drop policy), 9 for each of 2 workers: batches of 4, 4, 1
    assert [len(r) for r in full] == [2 * 2 * per_epoch] * 2
    first_epoch = [k for rank in full for b in rank[: 2 * per_epoch] for k in b]
    assert len(first_epoch) == len(set(first_epoch)) == sum(COUNTS) - 1
    first = lightning_run(manifest, tmp_path / "a.json", tmp_path / "c1", 8, devices=2)
    rest = lightning_run(manifest, tmp_path / "b.json", tmp_path / "c2", -1, tmp_path / "c1" / "last.ckpt", devices=2)
    for r in range(2):
        assert first[r] + rest[r] == full[r], f"rank {r} did not resume where it stopped"


@pytest.mark.slow
@pytest.mark.parametrize(
    "devices, per_epoch, checkpoint", [(2, 6, "every step"), (1, 10, "--epoch-end")], ids=["last-step", "epoch-end"]
)
def test_lightning_resumes_a_checkpoint_made_at_an_epochs_end_with_the_next_epoch(
    manifest: str, tmp_path: Path, devices: int, per_epoch: int, checkpoint: str
):
    """After the last step of epoch 0 the loader's state was the end of epoch 0 (the resumed epoch 1 came out
    empty); a checkpoint made at the epoch's end is restored without the loader's state (epoch 0 came again)."""
    flags = [checkpoint] if checkpoint.startswith("--") else []
    full = lightning_run(manifest, tmp_path / "full.json", tmp_path / "c0", -1, None, devices)
    full = full if devices > 1 else [full]
    assert [len(rank) for rank in full] == [2 * per_epoch] * devices
    first = lightning_run(manifest, tmp_path / "a.json", tmp_path / "c1", per_epoch, None, devices, *flags)
    rest = lightning_run(manifest, tmp_path / "b.json", tmp_path / "c2", -1, tmp_path / "c1" / "last.ckpt", devices)
    first, rest = (first, rest) if devices > 1 else ([first], [rest])
    for r in range(devices):
        assert first[r] == full[r][:per_epoch], f"rank {r}"
        assert rest[r] == full[r][per_epoch:], f"rank {r} did not go on with epoch 1"


def test_half_set_variables_are_refused_when_a_pass_starts_not_when_the_dataset_is_built(manifest, monkeypatch):
    """Lightning sets WORLD_SIZE before the process group (and RANK) exist: building a dataset then is fine."""
    from shardpipe import ShardDataset

    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    dataset = ShardDataset(manifest, decode=None)
    with pytest.raises(SetupError, match="WORLD_SIZE is set but RANK is not"):
        next(iter(dataset))
    monkeypatch.setenv("RANK", "1")
    assert len(list(dataset)) == sum(COUNTS) // 2


def test_datamodule_offers_a_validation_loader_only_when_given_one(manifest: str):
    pytest.importorskip("lightning")
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from shardpipe import ShardDataset, ShardLoader
    from shardpipe.integrations.lightning import ShardDataModule

    train = ShardDataset(manifest, decode=None, batch_size=4)
    assert not is_overridden("val_dataloader", ShardDataModule(train=train))
    module = ShardDataModule(train=train, val=ShardDataset(manifest, decode=None, batch_size=5))
    assert is_overridden("val_dataloader", module)
    loader = module.val_dataloader()
    assert isinstance(loader, ShardLoader) and module.val_dataloader() is loader
    keys = [k for batch in loader for k in batch["__key__"]]
    assert sorted(keys) == sorted(s["__key__"] for s in make_samples(sum(COUNTS)))


PLAIN_PREPARE_PROG = """
import json, sys, torch
from accelerate import Accelerator
from shardpipe import ShardDataset, ShardLoader
workers = int(sys.argv[2])
accelerator = Accelerator(cpu=True)
loader = ShardLoader(ShardDataset(sys.argv[1], shuffle=5, seed=2, batch_size=3), num_workers=workers)
model, loader = accelerator.prepare(torch.nn.Linear(3, 5), loader)
try:
    next(iter(loader))
except Exception as e:
    print(json.dumps({"type": type(e).__name__, "message": str(e)}))
"""


def test_a_plain_prepare_is_refused_alike_with_and_without_workers(manifest: str):
    pytest.importorskip("accelerate")
    from shardpipe.collate import REBUILT_LOADER

    for workers in (0, 2):
        run = subprocess.run(
            [sys.executable, "-c", PLAIN_PREPARE_PROG, manifest, str(workers)],
            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        error = json.loads(run.stdout.strip().splitlines()[-1])
        assert error["type"] == "SetupError", (workers, error)
        assert REBUILT_LOADER in error["message"], (workers, error)  # with workers, torch adds the traceback
