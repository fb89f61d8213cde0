"""What one certificate's loop reports (the last of maintain.py's phases): its metrics, from the
live certificate, the ARI window the plan used and the persisted state, and one log line each
time the plan changes."""

from __future__ import annotations

import datetime as dt
import logging

from acmebox.clock import iso
from acmebox.metrics import Metrics
from acmebox.policies import Plan
from acmebox.state import AriCache, CertState
from acmebox.store import StoredCert

log = logging.getLogger("acmebox.maintain")  # the loop's own log lines, as before the split


class Reporter:
    """The metrics and plan log of certificate `name`."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics
        self._last_logged: tuple[dt.datetime, str] | None = None

    def cert(self, stored: StoredCert | None) -> None:
        self.metrics.set_time(self.metrics.expiry, self.name, stored.not_after if stored else None)
        self.metrics.set_time(self.metrics.not_before, self.name, stored.not_before if stored else None)
        self.metrics.placeholder.labels(self.name).set(1 if stored is None or stored.placeholder else 0)

    def ari(self, ari: AriCache | None) -> None:
        """The window the plan used: none once the certificate it was for is replaced."""
        self.metrics.set_time(self.metrics.ari_start, self.name, ari.start if ari else None)
        self.metrics.set_time(self.metrics.ari_end, self.name, ari.end if ari else None)

    def plan(self, plan: Plan, state: CertState) -> None:
        """Records the plan in `state` (saved by the loop) and says it once per change."""
        state.next_renewal, state.renewal_reason = plan.at, plan.reason
        self.metrics.set_time(self.metrics.next_renewal, self.name, plan.at)
        # From the persisted state, so a restart does not hide failures from the alerts.
        self.metrics.consecutive_failures.labels(self.name).set(state.failures)
        self.metrics.set_time(self.metrics.last_success, self.name, state.last_success)
        self.metrics.set_time(self.metrics.last_failure, self.name, state.last_failure)
        if self._last_logged != (plan.at, plan.reason):
            self._last_logged = (plan.at, plan.reason)
            log.info("%s: renewal scheduled for %s because of %s", self.name, iso(plan.at), plan.reason)
