"""Helpers shared by the tests: tiny deterministic JPEGs and shard writing."""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import shardpipe


def small_jpeg(index: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small textured JPEG whose content depends on ``index`` (fast to make and decode)."""
    rng = np.random.default_rng(index)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 5 + index * 7) % 256, (yy * 5 + index * 13) % 256, np.full_like(xx, index * 29 % 256)], -1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_samples(n: int, prefix: str = "sample", classes: int = 5) -> list[dict]:
    return [
        {"__key__": f"{prefix}{i:05d}", "jpg": small_jpeg(i), "cls": i % classes, "json": {"index": i}}
        for i in range(n)
    ]


def write_shards(root: Path, samples: list[dict], counts: list[int], compress: str | None = None) -> list[str]:
    """Write ``samples`` into shards of the given sizes (uneven on purpose); return the URLs."""
    assert sum(counts) == len(samples)
    ext = "tar.gz" if compress else "tar"
    urls, pos = [], 0
    for i, c in enumerate(counts):
        path = root / f"shard-{i:04d}.{ext}"
        with open(path, "wb") as f:
            tw = shardpipe.TarWriter(f, compress)
            for s in samples[pos : pos + c]:
                tw.write(s)
            tw.close()
        urls.append(str(path))
        pos += c
    return urls


def write_with_shard_writer(root: Path, n: int, maxcount: int) -> str:
    """``make_samples(n)`` written by ``ShardWriter`` (manifest and index beside the shards) into
    ``root/s-NNN.tar``, ``maxcount`` a shard; returns the manifest path."""
    root.mkdir(parents=True, exist_ok=True)
    with shardpipe.ShardWriter(str(root / "s-%03d.tar"), maxcount=maxcount) as w:
        for s in make_samples(n):
            w.write(s)
    return str(root / "manifest.json")


def write_indexed_dataset(root: Path, counts: list[int]) -> tuple[Path, Path]:
    """Shards of ``make_samples`` (jpg, cls and json members) with a manifest and its index, made by
    ``index_shards``; returns the (manifest, index) paths."""
    from shardpipe import index_shards

    urls = write_shards(root, make_samples(sum(counts)), counts)
    manifest = root / "manifest.json"
    index_shards(urls, str(manifest), workers=1)
    return manifest, root / "manifest.index"


def write_manifest_dataset(root: Path, samples: list[dict], counts: list[int], compress: str | None = None) -> str:
    """Uneven shards plus a manifest.json with their sample counts; returns the manifest path."""
    import hashlib
    import json

    urls = write_shards(root, samples, counts, compress)
    entries = []
    for url, c in zip(urls, counts):
        data = Path(url).read_bytes()
        entries.append(
            {"name": Path(url).name, "samples": c, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"shards": entries, "samples": sum(counts)}))
    return str(manifest)


def _decoder_backends() -> list[str]:
    from shardpipe.image.decoders import decoder_names

    return decoder_names()


#: every registered image decoder backend (from the registry: a new backend is tested without a list to edit)
DECODER_BACKENDS = _decoder_backends()


def decoder_or_skip(name: str):
    """The decoder ``name``, or skip the test when its optional package is not installed."""
    import pytest

    from shardpipe.image.decoders import get_decoder

    try:
        return get_decoder(name)
    except ImportError as e:
        pytest.skip(f"{name} not installed: {e}")


def payload(n: int, seed: int) -> bytes:
    """``n`` deterministic random bytes (incompressible, like JPEG data)."""
    import random

    return random.Random(seed).randbytes(n)


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


# -- child processes: each in its own process group, killed whole ----------------------
def alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie, exited but not reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group (its DataLoader workers, servers and
    other children join it), so :func:`kill_group` can end all of them."""
    return subprocess.Popen(cmd, start_new_session=True, **kwargs)


def kill_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGKILL ``proc``'s whole process group (children that outlived it too) and reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:  # unkillable (D state): leave it, never hang the tests
        pass


@contextlib.contextmanager
def process_groups(*cmds: list[str], **kwargs):
    """Start each of ``cmds`` with :func:`spawn`; on leaving, pass or fail or timeout, kill each
    whole group. Yields the list of Popen objects."""
    procs: list[subprocess.Popen] = []
    try:
        for cmd in cmds:
            procs.append(spawn(cmd, **kwargs))
        yield procs
    finally:
        for p in procs:
            kill_group(p)


def run_in_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)`` whose child and
    all that it started are killed when it times out (TimeoutExpired is raised, as by run) and
    also after it exits (an orphaned grandchild must not outlive the test)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    if kwargs.pop("capture_output"):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    check = kwargs.pop("check", False)
    proc = spawn(cmd, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


class Sleeps:
    """A module's ``time`` for a test: ``sleep`` on the test's own thread is recorded in ``waits``
    and returns at once; any other thread (one an earlier test left running) really sleeps, and
    every other name is the real module's. Patch one module: ``monkeypatch.setattr(mod, "time", Sleeps())``."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._thread = threading.get_ident()

    def sleep(self, seconds: float) -> None:
        if threading.get_ident() == self._thread:
            self.waits.append(seconds)
        else:
            time.sleep(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


def own_records(caplog) -> list:
    """The log records the test's own thread made (not a thread an earlier test left running)."""
    return [r for r in caplog.records if r.thread == threading.get_ident()]


def torchvision_crop_box(height: int, width: int, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple:
    """torchvision's RandomResizedCrop.get_params (v0.17), its torch draws made with ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))  # torch.randint(0, height - h + 1)
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


def strict_cli(*args: str, cwd: Path | None = None, module: str = "shardpipe.cli") -> subprocess.CompletedProcess[str]:
    """``shardpipe ARGS`` (``python -m MODULE ARGS``) in its own process, printing UTF-8 strictly (as under
    an en_US.UTF-8 locale)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        timeout=300,
        cwd=cwd,
        env=env,
    )


def tar_of(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> Path:
    """A tar of ``members`` in this order, as a tool other than shardpipe writes it."""
    with tarfile.open(path, "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
