"""HTTP dates (RFC 9110 section 5.6.7) and Retry-After values, read the same in any timezone.

HTTP-dates are GMT by definition; the acme library's own reading depends on the machine's
timezone, so the client reads Retry-After and the CA's Date header here. Pure functions.
"""

from __future__ import annotations

import datetime as dt
import email.utils


def http_date(value: str | None) -> dt.datetime | None:
    """An aware datetime from an HTTP-date (RFC 9110 section 5.6.7), which is GMT by definition."""
    try:
        when = email.utils.parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    return when.replace(tzinfo=dt.UTC) if when is not None and when.tzinfo is None else when


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), or None.

    HTTP-dates are GMT by definition; they are compared with an aware UTC `now`, so the
    result does not depend on the machine's timezone (the acme library gets this wrong).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = http_date(value)
    if when is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())
