"""The scheduling rules and the backoff, with time given, never waited for."""

from __future__ import annotations

import datetime as dt
import random

from acmebox import renewal

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_lifetime_rule() -> None:
    assert renewal.lifetime_rule(T0, T0 + dt.timedelta(days=90)) == T0 + dt.timedelta(days=60)
    assert renewal.lifetime_rule(T0, T0 + dt.timedelta(days=6)) == T0 + dt.timedelta(days=3)
    d = renewal.decide(T0, T0 + dt.timedelta(days=6))
    assert d.at == T0 + dt.timedelta(days=3) and "half" in d.reason
    d = renewal.decide(T0, T0 + dt.timedelta(days=90))
    assert d.at == T0 + dt.timedelta(days=60) and "a third" in d.reason


def test_ari_first_but_never_past_the_last_twentieth() -> None:
    nb, na = T0, T0 + dt.timedelta(days=90)
    window = (T0 + dt.timedelta(days=10), T0 + dt.timedelta(days=12))
    choice = renewal.ari_pick(*window, rng=random.Random(3))
    assert window[0] <= choice <= window[1]
    d = renewal.decide(nb, na, choice, window)
    assert d.at == choice and d.reason.startswith("ARI window [2026-01-11T00:00:00Z, 2026-01-13T00:00:00Z]")
    late = (na - dt.timedelta(days=1), na + dt.timedelta(days=1))
    d = renewal.decide(nb, na, late[0], late)
    assert d.at == na - dt.timedelta(days=4.5) and "last 1/20" in d.reason
    past = (T0 - dt.timedelta(days=2), T0 - dt.timedelta(days=1))
    assert renewal.decide(nb, na, past[0], past).at == past[0]


def test_ari_pick_is_uniform_inside_the_window() -> None:
    rng = random.Random(7)
    start, end = T0, T0 + dt.timedelta(hours=10)
    picks = [renewal.ari_pick(start, end, rng) for _ in range(2000)]
    assert all(start <= p <= end for p in picks)
    first_half = sum(p < start + dt.timedelta(hours=5) for p in picks)
    assert 900 < first_half < 1100  # not bunched at either end


def test_backoff_schedule_with_jitter_and_retry_after() -> None:
    rng = random.Random(1)
    expected = [60, 600, 6000, 86400, 86400, 86400]
    for failures, base in enumerate(expected, start=1):
        for _ in range(50):
            delay = renewal.backoff(failures, rng=rng).total_seconds()
            assert 0.9 * base <= delay <= 1.1 * base, (failures, delay)
    assert renewal.backoff(1, retry_after=3600, rng=rng) == dt.timedelta(seconds=3600)
    assert renewal.backoff(4, retry_after=10, rng=rng) > dt.timedelta(hours=21)


def test_ari_refetch_bounds() -> None:
    assert renewal.ari_next_fetch(T0, 21600) == T0 + dt.timedelta(hours=6)
    assert renewal.ari_next_fetch(T0, 10 * 86400) == T0 + dt.timedelta(hours=12)  # at least twice a day
    assert renewal.ari_next_fetch(T0, 0) == T0 + dt.timedelta(minutes=1)  # never a burst
    assert renewal.ari_next_fetch(T0, None) == T0 + dt.timedelta(hours=6)
