"""The order ledger's counting, by itself: windows, per CA directory, damaged lines."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from acmebox.ledger import FAILED_VALIDATIONS_PER_HOUR, ISSUED_PER_WEEK, Ledger, LedgerRefusal

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
NAMES = ("a.test", "www.a.test")
STAGING, PRODUCTION = "https://staging.test/dir", "https://production.test/dir"


def issue(ledger: Ledger, at: dt.datetime, outcome: str = "issued", invalid: tuple[str, ...] = ()) -> None:
    ledger.ended(ledger.ordered(NAMES, at), outcome, at, invalid)


def test_issued_certificates_per_week(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "a.test", PRODUCTION)
    for i in range(ISSUED_PER_WEEK):
        issue(ledger, NOW + dt.timedelta(hours=i))
    last = NOW + dt.timedelta(hours=ISSUED_PER_WEEK)
    with pytest.raises(LedgerRefusal) as refused:
        ledger.check(NAMES, last)
    assert refused.value.until == NOW + dt.timedelta(days=7)
    ledger.check(NAMES, NOW + dt.timedelta(days=7, seconds=1))  # the oldest left the window
    ledger.check(("b.test",), last)  # another set of names is another count


def test_an_order_without_an_end_counts_as_issued(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "a.test", PRODUCTION)
    for i in range(ISSUED_PER_WEEK):
        ledger.ordered(NAMES, NOW + dt.timedelta(minutes=i))  # crashed before the outcome was written
    with pytest.raises(LedgerRefusal):
        ledger.check(NAMES, NOW + dt.timedelta(hours=1))


def test_staging_orders_do_not_count_against_production(tmp_path: Path) -> None:
    staging = Ledger(tmp_path, "a.test", STAGING)
    for i in range(ISSUED_PER_WEEK):
        issue(staging, NOW + dt.timedelta(minutes=i))
    with pytest.raises(LedgerRefusal):
        staging.check(NAMES, NOW + dt.timedelta(hours=1))
    Ledger(tmp_path, "a.test", PRODUCTION).check(NAMES, NOW + dt.timedelta(hours=1))


def test_failed_validations_per_hour(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "a.test", PRODUCTION)
    for i in range(FAILED_VALIDATIONS_PER_HOUR):
        issue(ledger, NOW + dt.timedelta(minutes=i), "failed", ("www.a.test",))
    with pytest.raises(LedgerRefusal, match=r"www\.a\.test: 3 failed validations"):
        ledger.check(NAMES, NOW + dt.timedelta(minutes=10))
    ledger.check(NAMES, NOW + dt.timedelta(minutes=2, hours=1, seconds=1))


def test_a_damaged_line_counts_on_the_safe_side(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "a.test", PRODUCTION)
    for i in range(ISSUED_PER_WEEK - 1):
        issue(ledger, NOW + dt.timedelta(minutes=i))
    with ledger.path.open("ab") as f:
        f.write(b'{"at": "2026-11-29T12:3\n')  # a torn write
    with pytest.raises(LedgerRefusal):
        ledger.check(NAMES, NOW + dt.timedelta(hours=1))
    issue(ledger, NOW + dt.timedelta(hours=2), "failed")  # rewriting turns it into a dated order
    assert b"unreadable-" in ledger.path.read_bytes()
    with pytest.raises(LedgerRefusal):
        ledger.check(NAMES, NOW + dt.timedelta(hours=3))
