"""When to renew: the rules, as pure functions of a certificate, an ARI window and a clock.

- ARI (RFC 9773) first: a uniformly random moment inside the CA's suggested window.
- Without ARI: when a third of the lifetime is left (half, for certificates under 10 days).
- Whatever ARI says, renew in the last 1/20 of the lifetime.
- A placeholder, a certificate for other names or key type, or an expired one: now.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

SHORT_LIFETIME = dt.timedelta(days=10)


@dataclass(frozen=True)
class Decision:
    at: dt.datetime
    reason: str


def lifetime_rule(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    lifetime = not_after - not_before
    left = lifetime / 2 if lifetime < SHORT_LIFETIME else lifetime / 3
    return not_after - left


def last_call(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    return not_after - (not_after - not_before) / 20


def ari_pick(start: dt.datetime, end: dt.datetime, rng: random.Random | None = None) -> dt.datetime:
    if end <= start:
        return start
    return start + (end - start) * (rng or random).random()


def decide(
    not_before: dt.datetime,
    not_after: dt.datetime,
    ari_choice: dt.datetime | None = None,
    ari_window: tuple[dt.datetime, dt.datetime] | None = None,
) -> Decision:
    """The renewal time of a real certificate whose names and key type are as configured."""
    deadline = last_call(not_before, not_after)
    if ari_choice is not None and ari_window is not None:
        start, end = ari_window
        if ari_choice <= deadline:
            return Decision(ari_choice, f"ARI window [{start:%Y-%m-%dT%H:%M:%SZ}, {end:%Y-%m-%dT%H:%M:%SZ}]")
        return Decision(deadline, "last 1/20 of the lifetime (ARI window ends later)")
    share = "half" if not_after - not_before < SHORT_LIFETIME else "a third"
    return Decision(lifetime_rule(not_before, not_after), f"lifetime rule ({share} of the lifetime left)")


# Let's Encrypt's integration guide: about 1 min, 10 min, 100 min, then once a day.
BACKOFF = (dt.timedelta(minutes=1), dt.timedelta(minutes=10), dt.timedelta(minutes=100), dt.timedelta(days=1))


def backoff(failures: int, retry_after: float | None = None, rng: random.Random | None = None) -> dt.timedelta:
    """How long to wait after the `failures`-th failure in a row (1-based), with +-10% jitter,
    and never less than the CA's Retry-After."""
    base = BACKOFF[min(max(failures, 1), len(BACKOFF)) - 1]
    delay = base * (0.9 + 0.2 * (rng or random).random())
    if retry_after is not None:
        delay = max(delay, dt.timedelta(seconds=retry_after))
    return delay


ARI_REFETCH_MAX = dt.timedelta(hours=12)  # ask again at least twice a day
ARI_REFETCH_MIN = dt.timedelta(minutes=1)  # and never in a burst


def ari_next_fetch(now: dt.datetime, retry_after: float | None) -> dt.datetime:
    wait = dt.timedelta(seconds=retry_after) if retry_after is not None else dt.timedelta(hours=6)
    return now + min(max(wait, ARI_REFETCH_MIN), ARI_REFETCH_MAX)
