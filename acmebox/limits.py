"""Limits on what strangers can make acmebox spend: token buckets keyed by client or user (with
a bounded number of keys), a rate limit for log lines about bad requests, and the process's
file-descriptor limit.

Everything here takes its time from a `now()` callable (monotonic seconds), so tests count
answers instead of measuring time.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

Now = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class KeyedBuckets:
    """One token bucket per key (a client address, a user name): `burst` tokens, refilled at
    `rate` tokens per second. At most `max_keys` keys are remembered; when a new key comes and
    the table is full, the least recently used key is forgotten, so memory stays bounded
    whatever the number of addresses or names an attacker uses."""

    burst: float
    rate: float
    max_keys: int = 10_000
    now: Now = time.monotonic
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def _refilled(self, key: str) -> _Bucket:
        t = self.now()
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(self.burst, t)
            self._buckets[key] = b
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(self.burst, b.tokens + (t - b.stamp) * self.rate)
            b.stamp = t
        return b

    def wait(self, key: str) -> float:
        """Seconds until `key` has a whole token again (0 when it has one now)."""
        b = self._refilled(key)
        return 0.0 if b.tokens >= 1 else (1 - b.tokens) / self.rate

    def take(self, key: str) -> None:
        self._refilled(key).tokens -= 1

    def give_back(self, key: str) -> None:
        b = self._refilled(key)
        b.tokens = min(self.burst, b.tokens + 1)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A Retry-After header value (RFC 9110 10.2.3): whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class LogLimiter:
    """At most `burst` lines per `per` seconds for one kind of message; what is dropped is
    counted and the count is added to the next line that gets through. Bad requests from the
    internet must not be able to fill the disk through the log."""

    def __init__(self, log: logging.Logger, burst: int = 10, per: float = 60.0, now: Now = time.monotonic) -> None:
        self.log, self.burst, self.per, self.now = log, burst, per, now
        self._window = -math.inf
        self._count = 0
        self.suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> bool:
        """Log `msg % args` at `level` unless over the limit; True when it was logged."""
        t = self.now()
        if t - self._window >= self.per:
            self._window, self._count = t, 0
        if self._count >= self.burst:
            self.suppressed += 1
            return False
        self._count += 1
        if self.suppressed:
            msg += f" ({self.suppressed} similar message(s) suppressed)"
            self.suppressed = 0
        self.log.log(level, msg, *args)
        return True


# Descriptors kept free for everything that is not a client connection: the CA session, the
# docker socket, state and certificate files, the log.
FD_RESERVE = 64
FD_WANTED = 65536


def raise_fd_limit(wanted: int = FD_WANTED) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most `wanted`); returns the
    (soft, hard) limits in force afterwards. Python, unlike Go, leaves the soft limit where the
    container runtime put it, often 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def connection_cap(soft_limit: int, configured: int, in_flight: int) -> int:
    """How many client connections the HTTP server may hold: `configured`, but never so many
    that accepting more could run out of descriptors: `in_flight` (accepted, not yet counted
    or not yet closed) and FD_RESERVE are kept free."""
    if soft_limit == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft_limit - in_flight - FD_RESERVE))
