"""Time, injectable: the renewal loop asks a Clock for `now` and sleeps through it, so tests
can move time forward instead of waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt


def iso(t: dt.datetime) -> str:
    """`t` in UTC to the second, as the log and the messages write times."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep_until(self, when: dt.datetime, wake: asyncio.Event) -> None:
        """Return at `when`, or earlier when `wake` is set."""
        seconds = (when - self.now()).total_seconds()
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                # Capped so a suspended host (or a changed wall clock) is noticed within an hour.
                await asyncio.wait_for(wake.wait(), timeout=min(seconds, 3600))
