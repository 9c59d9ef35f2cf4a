"""The broadcaster's pace math (`allowance`): how far the pace clock may lag, and how many
recipients one batch may hand over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from platica.outreach import broadcaster
from platica.outreach.broadcaster import BURST_SECONDS, MAX_BATCH, allowance

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class TestAllowance:
    def test_a_new_broadcast_starts_now_with_one_recipient(self):
        assert allowance(None, NOW, 50.0) == (NOW, 1)

    def test_due_exactly_now_allows_one(self):
        assert allowance(NOW, NOW, 50.0) == (NOW, 1)

    def test_time_since_the_clock_is_paid_at_the_pace(self):
        # 0.1 s behind at 50/s: the 5 due in that time and the one due now.
        start, allowed = allowance(NOW - seconds(0.1), NOW, 50.0)
        assert start == NOW - seconds(0.1)
        assert allowed == 6

    @pytest.mark.parametrize("idle", [1.0, 60.0, 86_400.0])
    def test_idle_time_banks_at_most_burst_seconds(self, idle):
        """A restart, or a long pause: the clock starts again BURST_SECONDS back, so no
        catch-up burst goes over the pace."""
        start, allowed = allowance(NOW - seconds(idle), NOW, 50.0)
        assert start == NOW - seconds(BURST_SECONDS)
        assert allowed == int(BURST_SECONDS * 50.0) + 1

    def test_never_more_than_max_batch(self):
        start, allowed = allowance(NOW - seconds(BURST_SECONDS), NOW, 100_000.0)
        assert start == NOW - seconds(BURST_SECONDS)
        assert allowed == MAX_BATCH

    @pytest.mark.parametrize("ahead", [0.001, 0.5, 3600.0])
    def test_a_clock_in_the_future_gives_nothing(self, ahead):
        paced_at = NOW + seconds(ahead)
        assert allowance(paced_at, NOW, 50.0) == (paced_at, 0)

    def test_a_slow_pace_still_hands_one_when_due(self):
        start, allowed = allowance(NOW - seconds(0.1), NOW, 0.5)
        assert (start, allowed) == (NOW - seconds(0.1), 1)

    def test_the_clock_advanced_by_what_was_handed_over_keeps_the_pace(self):
        """Batches every 0.1 s, the clock moved on by what each handed over (as
        hand_over_batch does): over the 9.9 s from the first to the last, the pace's messages
        and the one due at the start, neither more nor fewer."""
        mps, paced_at, handed = 50.0, None, 0
        tick = NOW
        for _ in range(100):
            start, allowed = allowance(paced_at, tick, mps)
            handed += allowed
            paced_at = start + seconds(allowed / mps)
            tick += seconds(0.1)
        assert handed == 9.9 * mps + 1


def test_the_backlog_allowed_is_a_fraction_of_a_second_at_the_pace() -> None:
    assert broadcaster.in_flight_cap(50) == 15
    assert broadcaster.in_flight_cap(20) == 6
    # Never so small that a slow pace stalls.
    assert broadcaster.in_flight_cap(1) == broadcaster.MIN_IN_FLIGHT
