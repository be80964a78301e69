"""A worker's fresh batch buffer gets its pages in one madvise call (MADV_POPULATE_WRITE), not a fault each."""

from __future__ import annotations

import ctypes
import mmap
import sys

import pytest
import torch

from shardpipe import workermemory
from shardpipe.stages.batch import empty_uint8
from shardpipe.stages.buffers import BatchBuffers, shared_storage
from shardpipe.workermemory import PAGE, populate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise advice is Linux's")

NBYTES = 64 * 224 * 224 * 3  # a batch of 64 RGB 224x224 images


def resident_pages(address: int, nbytes: int) -> int:
    """How many pages of the mapping at ``address`` are in memory (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    start = address - address % PAGE
    pages = (nbytes + address - start + PAGE - 1) // PAGE
    vec = ctypes.create_string_buffer(pages)
    assert libc.mincore(start, pages * PAGE, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec.raw)


def all_pages(nbytes: int) -> int:
    return (nbytes + PAGE - 1) // PAGE


def kernel_populates() -> bool:
    probe = mmap.mmap(-1, PAGE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(probe))
    try:
        return populate(address, PAGE)
    finally:
        workermemory._madvise = None  # a refusal here must not stick for the tests below


def test_a_fresh_segment_has_no_pages_until_populated():
    if not kernel_populates():
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    storage = torch.UntypedStorage._new_shared(NBYTES)
    address = storage.data_ptr()
    before = resident_pages(address, NBYTES)
    assert before <= 1  # the measure sees missing pages (torch may touch the first one)
    assert populate(address, NBYTES) is True
    assert resident_pages(address, NBYTES) == all_pages(NBYTES)


def test_shared_storage_and_the_pool_hand_out_populated_segments():
    if not kernel_populates():
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    storage = shared_storage(NBYTES)
    assert resident_pages(storage.data_ptr(), NBYTES) == all_pages(NBYTES)
    batch = BatchBuffers().take((64, 224, 224, 3), worker=0)
    assert batch.is_shared()
    assert resident_pages(batch.data_ptr(), NBYTES) == all_pages(NBYTES)


def test_an_unpooled_worker_batch_is_populated_too(monkeypatch):
    if not kernel_populates():
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    monkeypatch.setattr("shardpipe.stages.batch.get_worker_info", lambda: object())  # as inside a worker
    batch = empty_uint8((8, 32, 32, 3))
    assert batch.is_shared() and batch.shape == (8, 32, 32, 3)
    assert resident_pages(batch.data_ptr(), batch.nbytes) == all_pages(batch.nbytes)


def test_populate_refuses_quietly_what_it_cannot_do():
    assert populate(0, 0) is False
    # a range with nothing mapped (one page past a mapping just removed): ENOMEM, no exception
    probe = mmap.mmap(-1, 4 * PAGE)
    view = ctypes.c_char.from_buffer(probe)
    gone = ctypes.addressof(view)
    del view
    probe.close()
    assert populate(gone, PAGE) is False
    if kernel_populates():  # and the refusal did not switch it off for later calls
        storage = torch.UntypedStorage._new_shared(4 * PAGE)
        assert populate(storage.data_ptr(), 4 * PAGE) is True
