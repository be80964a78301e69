"""``MemoryBudget`` and ``LinkStats`` (io/budget.py) on their own: the bookkeeping every remote
stream of a process shares, and the link measurements a stream sizes its window from.

The streams' tests (tests/test_stream_units.py, tests/test_remote_window.py) run them under real
reads, whose timings vary; here each figure is given, so each result is exact.
"""

from __future__ import annotations

import pytest

from shardpipe.io.budget import LinkStats, MemoryBudget, MiB

KiB = 1 << 10


# -- MemoryBudget --------------------------------------------------------------------------------


def test_a_new_budget_has_nothing_reserved_and_no_peak():
    budget = MemoryBudget(10)
    assert (budget.used, budget.peak, budget.streams, budget.available()) == (0, 0, 0, 10)


def test_a_budget_needs_a_positive_limit():
    with pytest.raises(ValueError, match=r"^memory_limit must be a positive number of bytes, not 0$"):
        MemoryBudget(0)


def test_available_is_what_is_left_under_the_limit():
    budget = MemoryBudget(10)
    assert budget.try_acquire(3)
    assert budget.available() == 7
    assert not budget.try_acquire(8)  # more than is left: refused, nothing reserved
    assert budget.try_acquire(7)
    assert (budget.used, budget.available()) == (10, 0)


def test_a_single_byte_released_is_given_back():
    budget = MemoryBudget(10)
    assert budget.try_acquire(1)
    budget.release(1)
    assert (budget.used, budget.peak) == (0, 1)
    budget.release(0)  # nothing to give back: a no-op
    assert budget.used == 0


def test_releasing_more_than_was_reserved_is_refused_by_message():
    budget = MemoryBudget(10)
    assert budget.try_acquire(2)
    with pytest.raises(AssertionError, match=r"^released more than was reserved$"):
        budget.release(3)


def test_each_closed_stream_grows_the_others_share_by_one_stream():
    budget = MemoryBudget(12)
    for _ in range(3):
        budget.register()
    assert budget.share() == 4
    budget.unregister()
    assert (budget.streams, budget.share()) == (2, 6)
    budget.unregister()
    budget.unregister()
    budget.unregister()  # one more than were open: stays at none
    assert (budget.streams, budget.share()) == (0, 12)


# -- LinkStats ------------------------------------------------------------------------------------


def test_the_first_request_replaces_the_starting_guesses():
    stats = LinkStats()
    stats.observe(4 * MiB, 0.5, 2.5)  # first byte after 0.5 s, then 4 MiB in 2 s
    assert stats.requests == 1
    assert stats.latency == 0.5
    assert stats.conn_rate == 2 * MiB


def test_later_requests_move_the_averages_by_a_fifth():
    stats = LinkStats()
    stats.observe(4 * MiB, 0.5, 2.5)
    stats.observe(MiB, 1.5, 2.5)  # latency 1.5 s, 1 MiB/s
    assert stats.requests == 2
    assert stats.latency == pytest.approx(0.5 + 0.2 * (1.5 - 0.5))
    assert stats.conn_rate == pytest.approx(2 * MiB + 0.2 * (MiB - 2 * MiB))
    stats.observe(MiB, None, 0.5)  # one figure for the whole request: all of it transfer
    assert stats.requests == 3
    assert stats.latency == pytest.approx(0.7)  # not measured: unchanged
    assert stats.conn_rate == pytest.approx(1.8 * MiB + 0.2 * (2 * MiB - 1.8 * MiB))


def test_a_request_whose_bytes_all_came_with_the_first_counts_a_tenth_of_a_millisecond():
    stats = LinkStats()
    stats.observe(MiB, 0.25, 0.25)
    assert stats.latency == 0.25
    assert stats.conn_rate == pytest.approx(MiB / 1e-4)


def test_small_bodies_say_nothing_about_throughput():
    stats = LinkStats()
    start = stats.conn_rate
    stats.observe(256 * KiB - 1, 0.1, 0.2)
    assert (stats.requests, stats.latency, stats.conn_rate) == (1, 0.1, start)
    stats.observe(256 * KiB, None, 0.5)  # from 256 KiB on they do
    assert stats.conn_rate == pytest.approx(start + 0.2 * (512 * KiB - start))


@pytest.mark.parametrize("total", [0.0, -1.0])
def test_a_request_timed_at_no_time_is_not_counted(total):
    stats = LinkStats()
    stats.observe(MiB, None, total)
    assert (stats.requests, stats.latency, stats.conn_rate) == (0, 0.02, 50 * MiB)


def test_a_slow_request_is_counted():
    stats = LinkStats()
    stats.observe(MiB, None, 0.5)  # under a second
    assert (stats.requests, stats.conn_rate) == (1, 2 * MiB)


def test_a_request_takes_the_latency_plus_its_bytes_at_the_connection_rate():
    stats = LinkStats()
    stats.observe(4 * MiB, 0.5, 2.5)  # 0.5 s, 2 MiB/s
    assert stats.request_time(MiB) == pytest.approx(1.0)
    assert stats.request_time(0) == pytest.approx(0.5)


def test_a_connection_rate_below_one_byte_a_second_counts_as_one():
    stats = LinkStats()
    stats.latency, stats.conn_rate = 0.0, 0.0
    assert stats.request_time(3) == 3.0
    stats.conn_rate = 1.5
    assert stats.request_time(3) == 2.0
