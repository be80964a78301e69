"""Every program in examples/ runs as a user runs it: a subprocess on the CPU, on small data made here."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.devtools.synth import make_jpeg

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS")
IMAGES = 48  # 3 shards of at most 20
CLASSES = 10  # more than the 4 outputs the training examples once hard-coded; as the README's data


def run(args: list[str], cwd: Path, timeout: float = 180, **env: str) -> str:
    """Run a program the way a user would (from a folder of their own); return its output, fail with it."""
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    done = subprocess.run(
        args, cwd=cwd, env={**clean, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder with images/ (an ImageFolder) and data/ (its shards), made by the first example."""
    work = tmp_path_factory.mktemp("examples")
    out = run([sys.executable, str(EXAMPLES / "write_imagefolder.py"), "--demo", str(IMAGES), "--maxcount", "20",
               "--classes", str(CLASSES), "images", "data"], work)  # fmt: skip
    assert f"wrote {IMAGES} samples into 3 shards" in out
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    assert manifest["samples"] == IMAGES and len(manifest["class_names"]) == CLASSES
    return work


def epochs_printed(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("epoch ")]


def test_plain_script_trains_and_resumes_from_its_checkpoint(workdir: Path):
    first = run([sys.executable, str(EXAMPLES / "train_plain.py"), "data/manifest.json", "--epochs", "1"], workdir)
    assert [line.split(",")[0] for line in epochs_printed(first)] == [f"epoch 0: {IMAGES} images"]
    # the checkpoint says epoch 0 is done: asked for 2 epochs, it runs only epoch 1
    again = run([sys.executable, str(EXAMPLES / "train_plain.py"), "data/manifest.json", "--epochs", "2"], workdir)
    assert [line.split(",")[0] for line in epochs_printed(again)] == [f"epoch 1: {IMAGES} images"]
    (workdir / "checkpoint.pt").unlink()


def test_training_examples_need_a_class_count_when_the_manifest_names_no_classes(workdir: Path):
    """Integer-labelled lists give a manifest without class_names: the examples then ask for --num-classes."""
    manifest = json.loads((workdir / "data" / "manifest.json").read_text())
    manifest["class_names"] = None
    (workdir / "data" / "unnamed.json").write_text(json.dumps(manifest))
    needs = {"train_plain.py": "torch", "train_ddp.py": "torch", "train_lightning.py": "lightning",
             "train_accelerate.py": "accelerate"}  # fmt: skip
    env = {**{k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}, "PYTHONPATH": str(ROOT)}
    for script in [s for s, module in needs.items() if importlib.util.find_spec(module)]:
        done = subprocess.run([sys.executable, str(EXAMPLES / script), "data/unnamed.json"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2, (script, done.stderr[-2000:])
        assert "the manifest names no classes (integer labels): pass --num-classes" in done.stderr, script
    assert not (workdir / "checkpoint.pt").exists()


def test_torchrun_ddp_gives_every_rank_the_same_batches(workdir: Path):
    torchrun = shutil.which("torchrun")
    assert torchrun, "torch is installed but torchrun is not on PATH"
    out = run([torchrun, "--standalone", "--nproc_per_node", "2", str(EXAMPLES / "train_ddp.py"),
               "data/manifest.json"], workdir)  # fmt: skip
    per_rank = 2  # 24 samples a rank, 12 for each of its 2 workers, batched by each worker: one batch each
    lines = sorted(line for line in out.splitlines() if line.startswith("rank "))
    assert lines == sorted(f"rank {r}: epoch {e}: {per_rank} batches" for r in (0, 1) for e in (0, 1))


def test_lightning_example_stops_mid_epoch_and_resumes(workdir: Path):
    pytest.importorskip("lightning")
    script = str(EXAMPLES / "train_lightning.py")
    first = run([sys.executable, script, "data/manifest.json", "--max-steps", "2"], workdir)
    assert "trained 2 steps" in first
    rest = run([sys.executable, script, "data/manifest.json", "--resume", "ckpt/last.ckpt"], workdir)
    # 2 workers of 24 samples each, batched by each worker: 16 + 8; 4 batches an epoch, 2 epochs
    assert "trained 8 steps; epoch 2" in rest


def test_accelerate_example_saves_state_and_resumes(workdir: Path):
    pytest.importorskip("accelerate")
    launch = [shutil.which("accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", str(EXAMPLES / "train_accelerate.py"),
              "data/manifest.json"]  # fmt: skip
    assert "saved the state after 2 steps (epoch 0)" in run(launch + ["--stop-after", "2"], workdir)
    rest = run(launch + ["--resume"], workdir)
    assert rest.splitlines()[-2:] == ["epoch 0: 2 steps so far", "epoch 1: 6 steps so far"]  # 4 an epoch


def write_img2dataset_folder(folder: Path, shards: int = 2, per_shard: int = 5) -> None:
    """What img2dataset --output_format webdataset leaves: NNNNN.tar (+ .parquet and _stats.json beside)."""
    from shardpipe import TarWriter

    folder.mkdir()
    for s in range(shards):
        with open(folder / f"{s:05d}.tar", "wb") as f:
            writer = TarWriter(f)
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                meta = {"url": f"https://example.com/{key}.jpg", "caption": f"photo {key}", "key": key}
                writer.write(
                    {"__key__": key, "jpg": make_jpeg(s * per_shard + i), "txt": meta["caption"], "json": meta}
                )
            writer.close()
        (folder / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard}))


def test_img2dataset_example_indexes_and_streams_captions(tmp_path: Path):
    write_img2dataset_folder(tmp_path / "out")
    out = run([sys.executable, str(EXAMPLES / "img2dataset_shards.py"), "out"], tmp_path)
    assert "indexed 10 samples in 2 shards" in out
    lines = [line for line in out.splitlines() if line.startswith("(")]
    assert [line.split(" images")[0] for line in lines] == ["(5, 3, 64, 64)"] * 2  # a shard per worker
    assert all("first caption: 'photo 000" in line and "source: https://example.com/000" in line for line in lines)


@pytest.mark.servers
def test_s3_example_writes_and_streams_through_seaweedfs(workdir: Path, s3_server):
    pytest.importorskip("s3fs")
    options = s3_server.storage_options()
    env = {"AWS_ACCESS_KEY_ID": options["key"], "AWS_SECRET_ACCESS_KEY": options["secret"],
           "S3_ENDPOINT_URL": s3_server.endpoint}  # fmt: skip
    out = run([sys.executable, str(EXAMPLES / "read_s3.py"), "s3://shards/examples", "--from-folder", "images"],
              workdir, **env)  # fmt: skip
    assert f"wrote {IMAGES} samples into 1 shards" in out
    assert epochs_printed(out) == [f"epoch {e}: {IMAGES} images from s3://shards/examples" for e in (0, 1)]


def test_notebook_runs_cell_by_cell(workdir: Path):
    """The notebook's code cells, in order, as one program (what Run All does; no Jupyter needed)."""
    notebook = json.loads((EXAMPLES / "notebook.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert cells and not any(line.lstrip().startswith(("!", "%")) for c in cells for line in c.splitlines())
    (workdir / "notebook_cells.py").write_text("\n\n".join(cells))
    out = run([sys.executable, "notebook_cells.py"], workdir)
    assert "batch: jpg (16, 3, 64, 64) torch.uint8" in out
    assert f"one epoch: {IMAGES} images" in out
