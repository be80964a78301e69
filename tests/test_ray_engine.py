"""``write_shards(engine="ray")`` on a local Ray cluster started here: same bytes as the local engine,
a killed worker retried, resume after the driver stopped, shards written straight to S3."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe.cli import main
from shardpipe.devtools.synth import make_jpeg
from shardpipe.write import outfiles, planned
from shardpipe.write.engines import write_engine
from shardpipe.write.job import PROGRESS, write_shards
from shardpipe.write.plan import ShardTaskError
from shardpipe.write.sources import Loaded, Record
from shardpipe.write.sources.folder import FolderSource

OPTIONS = {"maxcount": 4, "shuffle": True, "seed": 5, "presize": 40, "quality": 80}


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def ray_cluster():
    """A two-CPU Ray cluster on 127.0.0.1 for this module, shut down at its end."""
    ray = pytest.importorskip("ray")
    # the sources below are defined in this module: workers get them by value, not by import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """26 small photo-like JPEGs (some larger than the presize) and one broken file."""
    root = tmp_path_factory.mktemp("ray-src")
    for i in range(26):
        (root / f"im{i:03d}.jpg").write_bytes(make_jpeg(i, plain=True))
    (root / "im007b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture(scope="module")
def local_out(images: Path, tmp_path_factory) -> Path:
    """The local engine's shards and manifest: what every Ray run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ray-local")
    summary = write_shards(str(images), str(out / "s-%03d.tar"), workers=2, **OPTIONS)
    assert summary.shards == 7 and summary.written == 26 and summary.presized > 0
    assert [s.name for s in summary.skipped] == ["im007b.jpg"]
    return out


class DyingSource(FolderSource):
    """Kills the worker process loading ``victim``: once (a marker file remembers) or every time."""

    def __init__(self, root: Path, victim: str, marker: Path, always: bool = False):
        super().__init__(root)
        self.victim, self.marker, self.always = victim, marker, always

    def load(self, record: Record) -> Loaded:
        if record.name == self.victim and (self.always or not self.marker.exists()):
            self.marker.write_text(str(os.getpid()))
            os._exit(9)  # the worker dies as if killed: no exception reaches Ray
        return super().load(record)


def test_ray_writes_the_local_engines_bytes(ray_cluster, images: Path, local_out: Path, tmp_path: Path, capsys):
    argv = ["--maxcount", "4", "--shuffle", "--seed", "5", "--presize", "40", "--quality", "80"]
    assert main(["write", str(images), str(tmp_path / "s-%03d.tar"), *argv, "--engine", "ray", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert files(tmp_path) == files(local_out)  # 7 shards, the manifest and its index sidecar, byte for byte
    assert "wrote 26 samples into 7 shards" in text and "im007b.jpg: unreadable image" in text
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    # shard 0 holds the first 4 inputs of the shuffled listing whatever was skipped: counts are planned
    assert sum(s["samples"] for s in manifest["shards"]) == 26 and len(manifest["shards"]) == 7
    assert manifest["options"]["maxsize"] is None and manifest["options"]["maxcount"] == 4


def test_a_killed_worker_is_retried_and_the_output_is_unchanged(
    ray_cluster, images: Path, local_out: Path, tmp_path: Path
):
    marker = tmp_path / "killed-once"
    out = tmp_path / "out"
    source = DyingSource(images, "im011.jpg", marker)
    summary = write_shards(source, str(out / "s-%03d.tar"), engine="ray", **OPTIONS)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker process died, not us
    assert files(out) == files(local_out)
    assert summary.written_now == 26


def test_a_task_that_keeps_failing_is_reported_and_the_rest_resumes(
    ray_cluster, images: Path, local_out: Path, tmp_path: Path, monkeypatch
):
    from shardpipe.write.engines import ray as ray_engine

    monkeypatch.setattr(ray_engine, "MAX_RETRIES", 1)
    monkeypatch.setattr(planned, "SAVE_INTERVAL", 0.0)
    out = tmp_path / "out"
    source = DyingSource(images, "im011.jpg", tmp_path / "marker", always=True)
    with pytest.raises(ShardTaskError, match=r"shard \d \(inputs \d+-\d+\) failed after 1 retries: .*--resume"):
        write_shards(source, str(out / "s-%03d.tar"), engine="ray", **OPTIONS)
    progress = json.loads((out / PROGRESS).read_text())
    assert not (out / "manifest.json").exists() and 1 <= len(progress["shards"]) < 7
    # the local engine finishes the job from the progress file the Ray driver left
    summary = write_shards(str(images), str(out / "s-%03d.tar"), resume=True, **OPTIONS)
    assert summary.resumed_shards == len(progress["shards"])
    assert files(out) == files(local_out)


def test_resume_after_the_driver_stopped_writes_only_missing_shards(
    ray_cluster, images: Path, local_out: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setattr(planned, "SAVE_INTERVAL", 0.0)
    real = outfiles.write_json

    def driver_dies_after_three_shards(url, value, storage_options):
        real(url, value, storage_options)
        if len(value["shards"]) >= 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(outfiles, "write_json", driver_dies_after_three_shards)
    with pytest.raises(KeyboardInterrupt):
        write_shards(str(images), str(tmp_path / "s-%03d.tar"), engine="ray", **OPTIONS)
    monkeypatch.undo()
    recorded = json.loads((tmp_path / PROGRESS).read_text())["shards"]
    assert len(recorded) >= 3 and not (tmp_path / "manifest.json").exists()
    names = sorted(e["name"] for e in recorded.values())
    (tmp_path / names[0]).unlink()  # a recorded shard lost since: written again
    kept = {n: (tmp_path / n).stat().st_mtime_ns for n in names[1:]}

    summary = write_shards(str(images), str(tmp_path / "s-%03d.tar"), engine="ray", resume=True, **OPTIONS)
    assert summary.resumed_shards == len(names) - 1
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in kept} == kept  # kept shards were not rewritten
    assert summary.written_now == 26 - sum(recorded[i]["samples"] for i in recorded if recorded[i]["name"] in kept)
    assert files(tmp_path) == files(local_out)


def test_index_engine_ray_gives_the_local_index(ray_cluster, local_out: Path, tmp_path: Path, capsys):
    from shardpipe.write.index_job import index_shards

    urls = str(local_out / "s-{000..006}.tar")
    index_shards(urls, str(tmp_path / "local" / "manifest.json"), workers=2)
    (tmp_path / "ray").mkdir()
    assert main(["index", urls, "-o", str(tmp_path / "ray" / "manifest.json"), "--engine", "ray", "--no-progress"]) == 0
    assert "indexed 26 samples in 7 shards" in capsys.readouterr().out
    assert files(tmp_path / "ray") == files(tmp_path / "local")  # manifest and index sidecar, byte for byte
    # and the sidecar the Ray writer's driver wrote from its tasks' indexes is the same index
    assert (tmp_path / "ray" / "manifest.index").read_bytes() == (local_out / "manifest.index").read_bytes()


@pytest.mark.servers
def test_ray_tasks_write_straight_to_s3(ray_cluster, s3_server, images: Path, local_out: Path):
    import fsspec.core

    opts = s3_server.storage_options()
    summary = write_shards(
        str(images), "s3://shards/ray-engine/s-%03d.tar", engine="ray", storage_options=opts, **OPTIONS
    )
    assert summary.manifest == "s3://shards/ray-engine/manifest.json"
    fs, _ = fsspec.core.url_to_fs("s3://shards", **opts)
    stored = {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.ls("shards/ray-engine", detail=False)}
    assert stored == files(local_out)


def test_planned_shards_keep_their_inputs_when_some_are_skipped(tmp_path: Path):
    """No Ray needed: the local engine follows the same plan (skips never move later inputs)."""
    import shardpipe

    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate("abe"):
        (src / f"{name}.jpg").write_bytes(make_jpeg(i, plain=True))
    for name in "cd":
        (src / f"{name}.jpg").write_bytes(b"broken")
    out = tmp_path / "out"
    summary = write_shards(str(src), str(out / "p-%02d.tar"), maxcount=2)
    assert [s.name for s in summary.skipped] == ["c.jpg", "d.jpg"]
    manifest = json.loads((out / "manifest.json").read_text())
    # shard 1 held c and d: it is written empty (a valid tar), and e stays in shard 2
    assert [(s["name"], s["samples"]) for s in manifest["shards"]] == [
        ("p-00.tar", 2),
        ("p-01.tar", 0),
        ("p-02.tar", 1),
    ]
    assert (out / "p-01.tar").read_bytes() == bytes(10240)
    keys = [s["__key__"] for s in shardpipe.ShardDataset(str(out / "manifest.json"), decode=None)]
    assert keys == ["a", "b", "e"]


def test_ray_engine_refuses_maxsize(images: Path, tmp_path: Path, capsys):
    with pytest.raises(ValueError, match="only the local engine can do.*pick maxcount"):
        write_shards(str(images), str(tmp_path / "s-%03d.tar"), engine="ray", maxsize=1 << 20)
    rc = main(["write", str(images), str(tmp_path / "s-%03d.tar"), "--engine", "ray", "--maxsize", "1M"])
    assert rc == 2 and "only the local engine can do" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown engine 'spark': choose one of \['local', 'ray'\]"):
        write_engine("spark")


def cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``shardpipe ARGS`` in its own process (no Ray started in it yet) with ``env``."""
    env = {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


def test_relative_paths_are_the_drivers_on_a_cluster_started_elsewhere(
    ray_cluster, images: Path, local_out: Path, tmp_path: Path
):
    """A driver joining a cluster started in another folder (as `ray start` is): the workers ran in that folder,
    so relative paths named other files there: every input 'cannot read', the shards written there and not
    beside the manifest, and `index` found no shard. Tasks now run in the driver's folder."""
    shutil.copytree(images, tmp_path / "src")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    assert Path.cwd() != tmp_path  # the cluster's workers run in this process's folder
    argv = ["--maxcount", "4", "--shuffle", "--seed", "5", "--presize", "40", "--quality", "80"]
    write = cli("write", "src", "out/s-%03d.tar", *argv, "--engine", "ray", "--no-progress", env=env, cwd=tmp_path)
    assert write.returncode == 0, write.stderr
    assert "wrote 26 samples into 7 shards" in write.stdout and "im007b.jpg: unreadable image" in write.stdout
    written = files(tmp_path / "out")
    assert {n: b for n, b in written.items() if n != "manifest.json"} == {
        n: b for n, b in files(local_out).items() if n != "manifest.json"
    }  # the shards and their index (the manifest records the source's path as given)
    index = cli("index", "out/s-{000..006}.tar", "-o", "again/manifest.json", "--engine", "ray", "--no-progress",
                env=env, cwd=tmp_path)  # fmt: skip
    assert index.returncode == 0, index.stderr
    assert "indexed 26 samples in 7 shards" in index.stdout
    assert (tmp_path / "again" / "manifest.index").read_bytes() == written["manifest.index"]


def test_an_address_nothing_answers_at_is_named(images: Path, local_out: Path, tmp_path: Path):
    """RAY_ADDRESS or --ray-address naming a port nothing listens on: Ray retried for many minutes, printing
    only its own warnings (a 300 s run was cut off with no error); now the command fails naming it."""
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with socket.socket() as held:  # bound, not listening: refused, and no other process gets the port
        held.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{held.getsockname()[1]}"
        out = tmp_path / "out"
        write = cli("write", str(images), str(out / "s-%03d.tar"), "--engine", "ray", "--no-progress",
                    env={**env, "RAY_ADDRESS": addr})  # fmt: skip
        assert write.returncode == 2, write.stderr
        assert (
            f"shardpipe write: error: no Ray cluster answers at {addr} (RAY_ADDRESS): Connection refused; "
            "start one there (`ray start --head`), fix the address, or unset RAY_ADDRESS" in write.stderr
        )
        assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))
        urls = str(local_out / "s-{000..006}.tar")
        index = cli("index", urls, "-o", str(tmp_path / "manifest.json"), "--engine", "ray", "--ray-address", addr,
                    "--no-progress", env=env)  # fmt: skip
        assert index.returncode == 2, index.stderr
        assert (
            f"shardpipe index: error: no Ray cluster answers at {addr} (the Ray address given): Connection refused;"
            in index.stderr
        )
        assert "or leave the address out to run a local cluster for this job" in index.stderr


def test_without_ray_the_engine_says_how_to_install_it(images: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    monkeypatch.delitem(sys.modules, "shardpipe.write.engines.ray", raising=False)
    with pytest.raises(
        ImportError, match=r"engine 'ray' needs a package that is not installed .* pip install \"shardpipe\[ray\]\""
    ):
        write_engine("ray")
    rc = main(["write", str(images), str(tmp_path / "s-%03d.tar"), "--engine", "ray", "--no-progress"])
    assert rc == 2 and 'pip install "shardpipe[ray]"' in capsys.readouterr().err
    assert not tmp_path.joinpath("manifest.json").exists()
