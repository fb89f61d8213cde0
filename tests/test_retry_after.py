"""Retry-After parsing is right in any timezone (the acme library's is not off UTC)."""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import subprocess
import sys

import pytest

from acmebox.client import parse_retry_after

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)


def test_seconds_and_dates() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(email.utils.format_datetime(NOW + dt.timedelta(seconds=5), usegmt=True), NOW) == 5.0
    assert parse_retry_after("Fri, 27 Nov 2026 11:00:00 GMT", NOW) == 0.0  # in the past: now
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None


@pytest.mark.parametrize("tz", ["America/New_York", "Europe/Berlin", "Asia/Kolkata"])
def test_http_date_off_utc(tz: str) -> None:
    code = (
        "import datetime as dt, email.utils, time\n"
        "from acmebox.client import parse_retry_after\n"
        "assert time.tzname[0] != 'UTC', time.tzname\n"
        "when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)\n"
        "print(parse_retry_after(email.utils.format_datetime(when, usegmt=True)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TZ": tz},
                         capture_output=True, text=True, check=True)
    assert 28.0 <= float(out.stdout) <= 30.0
