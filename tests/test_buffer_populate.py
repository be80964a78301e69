"""A worker's fresh batch buffer gets its pages in one madvise call (MADV_POPULATE_WRITE), not a fault each."""

from __future__ import annotations

import ctypes
import errno
import mmap
import sys

import pytest
import torch

from shardpipe import workermemory
from shardpipe.stages.batch import empty_uint8
from shardpipe.stages.buffers import BatchBuffers, shared_storage
from shardpipe.workermemory import MADV_POPULATE_WRITE, PAGE, populate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise advice is Linux's")

NBYTES = 64 * 224 * 224 * 3  # a batch of 64 RGB 224x224 images
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def resident(address: int, nbytes: int) -> list[int]:
    """1 or 0 for each page of the mapping from ``address`` (page-aligned) on: in memory or not (mincore(2))."""
    pages = (nbytes + PAGE - 1) // PAGE
    vec = ctypes.create_string_buffer(pages)
    assert _libc.mincore(address, pages * PAGE, vec) == 0, ctypes.get_errno()
    return [b & 1 for b in vec.raw]


def kernel_populates() -> bool:
    """Asked of the kernel directly (not through the code under test): Linux 5.14+ takes the advice."""
    probe = mmap.mmap(-1, PAGE)
    view = ctypes.c_char.from_buffer(probe)
    try:
        return _libc.madvise(ctypes.addressof(view), PAGE, MADV_POPULATE_WRITE) == 0
    finally:
        del view
        probe.close()


needs_kernel = pytest.mark.skipif(not kernel_populates(), reason="this kernel has no MADV_POPULATE_WRITE (< 5.14)")


@pytest.fixture(autouse=True)
def fresh_lookup():
    workermemory._madvise = None  # each test looks madvise up again (a fake or a refusal must not stick)
    yield
    workermemory._madvise = None


@needs_kernel
def test_a_fresh_segment_has_no_pages_until_populated():
    storage = torch.UntypedStorage._new_shared(NBYTES)
    address = storage.data_ptr()
    assert sum(resident(address, NBYTES)) <= 1  # the measure sees missing pages (torch may touch the first one)
    assert populate(address, NBYTES) is True
    assert resident(address, NBYTES) == [1] * (NBYTES // PAGE)


@needs_kernel
def test_an_unaligned_range_populates_exactly_the_pages_it_touches():
    storage = torch.UntypedStorage._new_shared(8 * PAGE)
    base = storage.data_ptr()
    assert base % PAGE == 0
    assert populate(base + 2 * PAGE + 100, PAGE) is True  # bytes in pages 2 and 3
    assert resident(base + 2 * PAGE, 6 * PAGE) == [1, 1, 0, 0, 0, 0]


@needs_kernel
def test_shared_storage_and_the_pool_hand_out_populated_segments():
    storage = shared_storage(NBYTES)
    assert resident(storage.data_ptr(), NBYTES) == [1] * (NBYTES // PAGE)
    batch = BatchBuffers().take((64, 224, 224, 3), worker=0)
    assert batch.is_shared()
    assert resident(batch.data_ptr(), NBYTES) == [1] * (NBYTES // PAGE)


@needs_kernel
def test_an_unpooled_worker_batch_is_populated_too(monkeypatch):
    monkeypatch.setattr("shardpipe.stages.batch.get_worker_info", lambda: object())  # as inside a worker
    batch = empty_uint8((8, 32, 32, 3))
    assert batch.is_shared() and batch.shape == (8, 32, 32, 3)
    assert resident(batch.data_ptr(), batch.nbytes) == [1] * ((batch.nbytes + PAGE - 1) // PAGE)


@needs_kernel
def test_an_unmapped_range_is_refused_quietly_and_later_calls_still_work():
    probe = mmap.mmap(-1, 4 * PAGE)
    view = ctypes.c_char.from_buffer(probe)
    gone = ctypes.addressof(view)
    del view
    probe.close()  # nothing is mapped there now: ENOMEM, no exception
    assert populate(gone, PAGE) is False
    storage = torch.UntypedStorage._new_shared(4 * PAGE)
    assert populate(storage.data_ptr(), 4 * PAGE) is True


def fake_madvise(errno: int, calls: list[tuple[int, int, int]]):
    def madvise(address: int, length: int, advice: int) -> int:
        calls.append((address, length, advice))
        if errno:
            ctypes.set_errno(errno)
            return -1
        return 0

    return madvise


def test_the_call_asks_for_whole_pages_from_the_page_the_range_starts_in():
    calls: list[tuple[int, int, int]] = []
    workermemory._madvise = fake_madvise(0, calls)
    assert populate(10 * PAGE + 7, 100) is True
    assert populate(3 * PAGE, 2 * PAGE) is True
    assert populate(5 * PAGE, 1) is True  # a single byte is a page to fault in
    assert calls == [
        (10 * PAGE, 107, MADV_POPULATE_WRITE),
        (3 * PAGE, 2 * PAGE, MADV_POPULATE_WRITE),
        (5 * PAGE, 1, MADV_POPULATE_WRITE),
    ]


def test_nothing_is_asked_for_an_empty_range():
    calls: list[tuple[int, int, int]] = []
    workermemory._madvise = fake_madvise(0, calls)
    assert populate(PAGE, 0) is False
    assert populate(PAGE, -1) is False
    assert calls == []


def test_a_kernel_without_the_advice_is_asked_once():
    calls: list[tuple[int, int, int]] = []
    workermemory._madvise = fake_madvise(22, calls)  # EINVAL: Linux < 5.14
    assert populate(PAGE, PAGE) is False
    assert populate(2 * PAGE, PAGE) is False
    assert len(calls) == 1 and workermemory._madvise is False


def test_other_refusals_keep_asking():
    calls: list[tuple[int, int, int]] = []
    workermemory._madvise = fake_madvise(12, calls)  # ENOMEM: a range not mapped, this time
    assert populate(PAGE, PAGE) is False
    assert populate(2 * PAGE, PAGE) is False
    assert len(calls) == 2


def test_no_madvise_is_looked_up_off_linux(monkeypatch):
    monkeypatch.setattr(workermemory.sys, "platform", "darwin")
    assert workermemory._lookup_madvise() is False
    assert populate(PAGE, PAGE) is False
    assert workermemory._madvise is False


def test_madvise_takes_full_width_addresses_and_reports_its_errno():
    fn = workermemory._lookup_madvise()
    assert callable(fn)
    assert fn.argtypes == (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    assert fn.restype is ctypes.c_int
    ctypes.set_errno(0)
    assert fn(0, 0, 9999) == -1  # no such advice
    assert ctypes.get_errno() == errno.EINVAL  # what populate reads to stop asking an older kernel


def test_no_madvise_without_a_c_library(monkeypatch):
    def no_library(*args, **kwargs):
        raise OSError("no C library here")

    monkeypatch.setattr(workermemory.ctypes, "CDLL", no_library)
    assert workermemory._lookup_madvise() is False
    assert populate(PAGE, PAGE) is False
