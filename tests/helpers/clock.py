"""Clocks a test moves by hand."""

from __future__ import annotations

import asyncio
import datetime as dt

from acmebox.clock import Clock


class FakeClock(Clock):
    """Real time plus an offset that a test moves forward; sleeps notice the move."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, delta: dt.timedelta) -> None:
        self.offset += delta

    async def sleep_until(self, when: dt.datetime, wake: asyncio.Event) -> None:
        while self.now() < when and not wake.is_set():
            await asyncio.sleep(0.02)


class FakeSeconds:
    """A monotonic seconds clock (a `() -> float`) that stands still until a test sets `t`."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
