"""DataLoader workers: safe start beside busy threads, and the stall watchdog (issue 10)."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
import torch

from shardpipe import ShardDataset, ShardLoader, WorkerStallError
from shardpipe.augment import RandomResizedCrop
from shardpipe.workers import choose_context, other_threads
from shardpipe.workerstart import CLEAN_FORKSERVER


class SleepForever:
    """A transform that never returns (a stand-in for a worker stuck in a library call)."""

    def __call__(self, img, rng=None):
        time.sleep(600)
        return img


class StopSelf:
    """A transform that SIGSTOPs its own worker process: a worker frozen from outside."""

    def __call__(self, img, rng=None):
        os.kill(os.getpid(), signal.SIGSTOP)
        return img


class HoldsALock:
    """A transform that cannot be pickled, even by value."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, img, rng=None):
        return img


@pytest.fixture
def held_numpy_rng_lock():
    """Another thread holds numpy's global RandomState lock, as a thread inside np.random.* does."""
    lock = np.random.mtrand._rand._bit_generator.lock
    taken, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            taken.set()
            release.wait(60)

    t = threading.Thread(target=hold, name="holds-np-random", daemon=True)
    t.start()
    taken.wait(10)
    yield
    release.set()
    t.join(10)


def test_a_stalled_worker_raises_naming_worker_stage_and_shard(dataset_dir):
    urls, _ = dataset_dir
    loader = ShardLoader(
        ShardDataset(urls, transform=SleepForever(), batch_size=4),
        num_workers=2,
        multiprocessing_context="fork",
        stall_timeout=2,
    )
    t0 = time.monotonic()
    with pytest.raises(
        WorkerStallError,
        match=r"worker 0 \(pid \d+\) delivered nothing for 2 s: it is in stage "
        r"'decode' on shard \S+shard-0000\.tar \(entered \d+\.\d s ago\)",
    ):
        list(loader)
    assert time.monotonic() - t0 < 30


def test_a_frozen_worker_raises_instead_of_hanging(dataset_dir):
    urls, _ = dataset_dir
    loader = ShardLoader(ShardDataset(urls, transform=StopSelf(), batch_size=4), num_workers=2, stall_timeout=2)
    with pytest.raises(WorkerStallError, match=r"worker 0 .* stage 'decode' on shard \S+shard-0000\.tar") as e:
        list(loader)
    pid = int(str(e.value).split("(pid ")[1].split(")")[0])
    with pytest.raises(ProcessLookupError):  # stopped workers are killed, not left behind
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_fork_beside_a_thread_holding_a_lock_hangs_a_worker_and_the_watchdog_names_it(dataset_dir, held_numpy_rng_lock):
    """The root cause, made deterministic: DataLoader's worker set-up seeds numpy, whose lock
    another parent thread held at the fork; the child waits forever. Forced fork: an error."""
    urls, _ = dataset_dir
    loader = ShardLoader(
        ShardDataset(urls, batch_size=8), num_workers=2, multiprocessing_context="fork", stall_timeout=2
    )
    with pytest.raises(
        WorkerStallError,
        match=r"worker 0 .* stage 'worker set-up' before reading any shard "
        r"\(its pipeline never started\)",
    ):
        list(loader)


def test_auto_start_is_safe_beside_a_thread_holding_a_lock(dataset_dir, held_numpy_rng_lock):
    urls, samples = dataset_dir
    loader = ShardLoader(ShardDataset(urls, batch_size=8), num_workers=2, stall_timeout=60)
    keys = [k for batch in loader for k in batch["__key__"]]
    assert sorted(keys) == sorted(s["__key__"] for s in samples)


def test_auto_forks_only_without_other_threads(dataset_dir, caplog):
    urls, _ = dataset_dir
    ds = ShardDataset(urls)
    if not other_threads():  # other tests may have left threads (fsspec loop...) in this process
        assert choose_context("auto", ds).get_start_method() == "fork"
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="busy", daemon=True)
    t.start()
    try:
        assert choose_context("auto", ds) is CLEAN_FORKSERVER
        assert choose_context("spawn", ds) == "spawn"
        # a lambda travels by value (cloudpickle): still the forkserver
        assert choose_context("auto", ShardDataset(urls, transform=lambda img: img)) is CLEAN_FORKSERVER
        unpicklable = ShardDataset(urls, transform=HoldsALock())
        before = other_threads()  # "busy", and whatever earlier tests left running (fsspec's loop...)
        with caplog.at_level(logging.WARNING, logger="shardpipe"):
            assert choose_context("auto", unpicklable).get_start_method() == "fork"
        after = other_threads()  # (one of theirs may end or start meanwhile: the warning's list lies between)
        assert "cannot be pickled (TypeError: cannot pickle '_thread.lock' object)" in caplog.text
        # the warning counts the threads and names the first four
        said = re.search(r"this process has (\d+) other threads \((.*)\) and the dataset cannot", caplog.text)
        assert said is not None, caplog.text
        assert min(len(before), len(after)) <= int(said[1]) <= max(len(before), len(after))
        named = said[2].split(", ")
        assert len(named) == min(4, int(said[1])) and set(named) <= set(before) | set(after)
        assert "busy" in named or len(before) > 4  # (the first four: earlier tests' threads may come first)
    finally:
        stop.set()
        t.join()


def test_stall_timeout_must_be_positive(dataset_dir):
    urls, _ = dataset_dir
    with pytest.raises(ValueError, match="stall_timeout must be a positive number of seconds or None, not 0"):
        ShardLoader(ShardDataset(urls), num_workers=2, stall_timeout=0)


@pytest.fixture
def busy_parent():
    """The training-script parent of issue 10: threads looping torch (random tensors, matmul),
    numpy's global RNG, OpenCV resize and logging, plus fsspec's asyncio event-loop thread."""
    cv2 = pytest.importorskip("cv2")
    import asyncio

    from fsspec.asyn import get_loop

    stop = threading.Event()
    log = logging.getLogger("busy-parent")

    def busy(i: int) -> None:
        img = np.zeros((480, 640, 3), np.uint8)
        n = 0
        while not stop.is_set():
            a = torch.randn(192, 192)
            (a @ a).sum()
            np.random.randint(0, 255, (64, 64))
            cv2.resize(img, (320, 240))
            n += 1
            if n % 10 == 0:
                log.info("thread %d step %d", i, n)

    async def tick() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.001)

    future = asyncio.run_coroutine_threadsafe(tick(), get_loop())
    threads = [threading.Thread(target=busy, args=(i,), name=f"busy-{i}", daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join(10)
    future.result(10)


@pytest.mark.slow
def test_many_fresh_loaders_under_a_busy_parent_all_complete(dataset_dir, busy_parent):
    """Issue 10's hang: fresh 2-worker loaders started while the parent's threads are busy.
    Before the fix about 1 start in 5 hung (a worker stuck in torch.manual_seed or
    np.random.seed on a lock inherited held); every epoch must now be complete and correct."""
    urls, samples = dataset_dir
    expected = sorted(s["__key__"] for s in samples)
    for round_ in range(20):
        ds = ShardDataset(urls, transform=RandomResizedCrop(16), batch_size=8, shuffle=8, seed=round_)
        batches = list(ShardLoader(ds, num_workers=2, stall_timeout=60))
        assert sorted(k for b in batches for k in b["__key__"]) == expected, f"round {round_}"
        assert all(b["jpg"].shape[1:] == (3, 16, 16) for b in batches)


def halve(img):
    return img // 2


def test_plain_callable_wrapper_pickles_when_the_callable_does():
    import pickle

    import cloudpickle

    from shardpipe.augment import as_transform

    img = np.full((2, 2, 3), 200, np.uint8)
    wrapped = pickle.loads(pickle.dumps(as_transform(halve)))
    assert repr(wrapped) == f"Plain({halve!r})"
    assert (wrapped(img, None) == 100).all()
    # a lambda: not by plain pickle (it names the lambda, not a wrapper class), but by value
    with pytest.raises((pickle.PicklingError, AttributeError), match="lambda"):
        pickle.dumps(as_transform(lambda x: x + 1))
    assert (cloudpickle.loads(cloudpickle.dumps(as_transform(lambda x: x + 1)))(img, None) == 201).all()


def test_the_loaders_own_queue_threads_are_not_counted_as_other_threads(dataset_dir):
    urls, _ = dataset_dir
    loader = ShardLoader(ShardDataset(urls, batch_size=4), num_workers=2, multiprocessing_context="fork")
    it = iter(loader)
    next(it)  # the index queues' feeder threads are alive now
    feeders = [t for t in threading.enumerate() if t.name == "QueueFeederThread" and t.is_alive()]
    assert feeders
    assert not set(t.name for t in feeders) & set(other_threads())
    for _ in it:
        pass


def test_worker_progress_rows_record_stage_shard_and_time_and_survive_pickling() -> None:
    import pickle

    from shardpipe.workers import STAGES, WorkerProgress

    progress = WorkerProgress(rows=4)
    assert progress.where(1) == ("worker set-up", None, None)
    before = time.monotonic()
    progress.mark(1, "untar", 7)
    progress.mark(2, "decode", 0)
    progress.mark(1, "batch")  # no shard given: the last one stays
    stage, shard, age = progress.where(1)
    assert (stage, shard) == ("batch", 7) and 0 <= age <= time.monotonic() - before
    assert progress.where(2)[:2] == ("decode", 0)
    assert progress.table[1].tolist()[1:] == [STAGES.index("batch"), 8]  # the table's own layout
    progress.mark(6, "read", 3)  # rows wrap: worker 6 of a 4-row table writes row 2
    assert progress.where(2)[:2] == ("read", 3)
    copy = pickle.loads(pickle.dumps(progress))  # the view is made again where the table arrives
    assert copy._view is None and copy.where(2)[:2] == ("read", 3)
    copy.mark(3, "hand-over", 1)
    assert copy.where(3)[:2] == ("hand-over", 1)
    progress.clear()
    assert progress.where(1) == ("worker set-up", None, None)
