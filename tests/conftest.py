"""Shared fixtures: tiny deterministic JPEG datasets written into shards in tmp_path."""

from __future__ import annotations

import faulthandler
import gc
import os
import sys
from pathlib import Path

import pytest

from .helpers import make_samples, write_shards

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _worker_crash_stacks() -> None:
    """A forked DataLoader worker that crashes in native code (SIGSEGV, SIGBUS, ...) prints every
    thread's Python stack to the test's stderr: torch replaces the handler pytest's faulthandler
    installed, so without this a crash in CI says only which worker died. (The main process still
    reports the worker killed by its signal.)"""
    from torch.utils.data._utils import signal_handling

    original = getattr(signal_handling, "_set_worker_signal_handlers", None)  # torch's private name
    if original is None:
        return

    def set_handlers(*args: object) -> None:
        original(*args)
        faulthandler.disable()  # enable() alone keeps the inherited state and torch's handler
        faulthandler.enable(file=sys.__stderr__, all_threads=True)

    signal_handling._set_worker_signal_handlers = set_handlers


_worker_crash_stacks()

_PYTEST_PID = os.getpid()


def _collect_before_fork() -> None:
    """Free the garbage earlier tests left before this process forks (DataLoader workers): a child
    inherits it, and its first collection there runs the finalizers of objects it never owned (a
    DALI pipeline's crashed a worker; a dropped loader's pipes and shared memory). A user's program
    has no other tests' garbage; this keeps one test's leftovers out of the next one's workers."""
    if os.getpid() == _PYTEST_PID:
        gc.collect()


os.register_at_fork(before=_collect_before_fork)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> tuple[list[str], list[dict]]:
    """Seven uneven shards (59 samples) of small JPEGs with labels and JSON."""
    samples = make_samples(59)
    urls = write_shards(tmp_path, samples, [10, 3, 12, 9, 1, 16, 8])
    return urls, samples


@pytest.fixture(scope="session")
def bench_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `shardpipe bench --data` directory for the bench tests: its data is generated once."""
    return tmp_path_factory.mktemp("bench-data")


# real S3/GCS/HTTP servers and fault proxies for the object-storage tests (issue 5)
pytest_plugins = ["tests.servers.fixtures"]
