"""The renewal loop of one certificate: plan when to renew, sleep until then, renew, and on
failure back off (persisted, so a restart cannot reset it). One CertMaintainer per
certificate; they run concurrently and one's failure never delays another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from acmebox import renewal
from acmebox.client import AcmeClient, ari_cert_id
from acmebox.clock import Clock
from acmebox.config import CertSpec
from acmebox.errors import AcmeboxError, CAProblem, CAUnreachable
from acmebox.metrics import Metrics
from acmebox.state import AriCache, CertState, StateStore
from acmebox.store import CertStore, StoredCert

log = logging.getLogger(__name__)

ARI_RETRY_ON_ERROR = dt.timedelta(hours=1)
MIN_SPACING = dt.timedelta(minutes=5)  # between two scheduled renewals of one certificate


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def why_not_reusable(spec: CertSpec, stored: StoredCert | None, now: dt.datetime) -> str | None:
    """None when `stored` serves `spec` as it is; otherwise why a new certificate is needed."""
    if stored is None:
        return "no certificate yet"
    if stored.placeholder:
        return "only a placeholder is in place"
    if sorted(stored.names) != sorted(spec.names):
        return f"names changed (on disk: {', '.join(stored.names)})"
    if stored.key_type != spec.key_type:
        return f"key type changed (on disk: {stored.key_type})"
    if spec.profile and stored.meta.get("profile") != spec.profile:
        return f"profile changed (on disk: {stored.meta.get('profile') or 'none'})"
    if stored.not_after <= now:
        return f"expired at {_iso(stored.not_after)}"
    return None


@dataclass(frozen=True)
class Plan:
    at: dt.datetime  # when to renew
    reason: str
    wake: dt.datetime  # when to plan again at the latest (e.g. the next ARI fetch)


# (client, spec, replaces) -> the new live certificate
Issuer = Callable[[AcmeClient, CertSpec, str | None], Awaitable[StoredCert]]


class CertMaintainer:
    def __init__(
        self,
        spec: CertSpec,
        *,
        store: CertStore,
        states: StateStore,
        client: Callable[[], Awaitable[AcmeClient]],
        issue: Issuer,
        on_renewed: Callable[[StoredCert], None],
        metrics: Metrics,
        clock: Clock,
        directory: str,
        use_ari: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.store = store
        self.states = states
        self._client = client
        self._issue = issue
        self._on_renewed = on_renewed
        self.metrics = metrics
        self.clock = clock
        self.directory = directory
        self.use_ari = use_ari
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        self._request: tuple[str, bool] | None = None  # (request id, force)
        self._refresh_ari = False
        self._last_logged: tuple[dt.datetime, str] | None = None
        self._ari_retry_at: dt.datetime | None = None

    # -- requests from outside (SIGHUP, `acmebox renew`) ----------------------------------------

    def request(self, request_id: str | None, force: bool) -> None:
        """Check now, asking the CA for fresh renewal information; with `force`, renew now.
        The outcome is recorded in the state under `request_id` (the latest one; force sticks)."""
        if request_id is not None:
            pending_force = self._request is not None and self._request[1]
            self._request = (request_id, force or pending_force)
        self._refresh_ari = True
        self.wake.set()

    # -- planning ------------------------------------------------------------------------------

    async def plan(self, state: CertState, stored: StoredCert | None) -> Plan:
        now = self.clock.now()
        self._publish_cert(stored)
        forced = self._request is not None and self._request[1]
        if forced:
            return Plan(now, "renewal requested (--force)", now)
        if state.next_attempt is not None and now < state.next_attempt:
            why = f"backoff after {state.failures} failure(s): {state.last_error}"
            return Plan(state.next_attempt, why, state.next_attempt)
        reason = why_not_reusable(self.spec, stored, now)
        if reason is not None or stored is None:
            return Plan(now, reason or "no certificate yet", now)

        ari = await self._ari(stored, state, now)
        if ari is not None:
            decision = renewal.decide(stored.not_before, stored.not_after, ari.chosen, (ari.start, ari.end))
            wake = min(decision.at, ari.next_fetch)
        else:
            decision = renewal.decide(stored.not_before, stored.not_after)
            wake = min(decision.at, self._ari_retry_at) if self._ari_retry_at else decision.at
        recent = state.last_success
        if self._request is None and recent is not None and decision.at < recent + MIN_SPACING:
            # A CA (or clock) that makes each fresh certificate due at once must not cause a
            # loop of orders; an operator's `acmebox renew` is not a loop and goes through.
            spaced = recent + MIN_SPACING
            return Plan(spaced, f"{decision.reason}, spaced from the last renewal", spaced)
        return Plan(decision.at, decision.reason, wake)

    async def _ari(self, stored: StoredCert, state: CertState, now: dt.datetime) -> AriCache | None:
        """The cached ARI window for this certificate, fetched again when due."""
        if not self.use_ari:
            return None
        serial = f"{stored.serial:x}"
        cache = state.ari if state.ari is not None and state.ari.serial == serial else None
        if cache is not None and now < cache.next_fetch and not self._refresh_ari:
            return cache
        if self._ari_retry_at is not None and now < self._ari_retry_at and not self._refresh_ari:
            return cache
        self._refresh_ari = False
        try:
            client = await self._client()
            info = await client.renewal_info(stored.cert)
        except AcmeboxError as e:
            self._ari_retry_at = now + ARI_RETRY_ON_ERROR
            log.warning("%s: renewal info unavailable (%s); asking again at %s", self.name, e, _iso(self._ari_retry_at))
            return cache
        self._ari_retry_at = None
        if info is None:
            return None  # the CA has no ARI
        same_window = cache is not None and (cache.start, cache.end) == (info.start, info.end)
        chosen = cache.chosen if same_window and cache is not None else renewal.ari_pick(info.start, info.end, self.rng)
        cache = AriCache(serial, info.start, info.end, chosen, renewal.ari_next_fetch(now, info.retry_after),
                         info.explanation_url)  # fmt: skip
        state.ari = cache
        self.states.save(self.name, state)
        self.metrics.set_time(self.metrics.ari_start, self.name, info.start)
        self.metrics.set_time(self.metrics.ari_end, self.name, info.end)
        return cache

    def _publish_cert(self, stored: StoredCert | None) -> None:
        self.metrics.set_time(self.metrics.expiry, self.name, stored.not_after if stored else None)
        self.metrics.placeholder.labels(self.name).set(1 if stored is None or stored.placeholder else 0)

    def _log_plan(self, plan: Plan, state: CertState) -> None:
        state.next_renewal, state.renewal_reason = plan.at, plan.reason
        self.metrics.set_time(self.metrics.next_renewal, self.name, plan.at)
        if self._last_logged != (plan.at, plan.reason):
            self._last_logged = (plan.at, plan.reason)
            log.info("%s: renewal scheduled for %s because of %s", self.name, _iso(plan.at), plan.reason)

    # -- acting --------------------------------------------------------------------------------

    async def step(self) -> Plan | None:
        """Plan; if due now, attempt once. Returns the plan when nothing was due, None after an
        attempt. Raises the attempt's error after recording it (the loop goes on, --once reports it).
        """
        state = self.states.load(self.name)
        stored = self.store.current(self.name)
        plan = await self.plan(state, stored)
        self._log_plan(plan, state)
        now = self.clock.now()
        if plan.at > now:
            self._finish_request(state, f"not due: next renewal {_iso(plan.at)} because of {plan.reason}")
            self.states.save(self.name, state)
            return plan
        log.info("%s: renewing now (%s)", self.name, plan.reason)
        try:
            new = await self._attempt(stored)
        except AcmeboxError as e:
            self._failed(state, e)
            raise
        self._succeeded(state, new)
        return None

    async def _attempt(self, stored: StoredCert | None) -> StoredCert:
        client = await self._client()
        replaces = None
        if (self.use_ari and client.has_ari and stored is not None and not stored.placeholder
                and stored.meta.get("directory") == self.directory):  # fmt: skip
            replaces = ari_cert_id(stored.cert)
        self.metrics.orders.labels(self.name).inc()
        try:
            return await self._issue(client, self.spec, replaces)
        except CAProblem as e:
            refused = e.short_type == "alreadyReplaced" or (
                e.short_type in ("unauthorized", "malformed", "conflict") and "replace" in e.detail.lower()
            )
            if replaces is None or not refused:
                raise
            log.warning("%s: the CA refused replaces=%s (%s); ordering again without it", self.name, replaces, e)
            self.metrics.orders.labels(self.name).inc()
            return await self._issue(client, self.spec, None)

    def _failed(self, state: CertState, e: AcmeboxError) -> None:
        now = self.clock.now()
        problem = (
            e.short_type if isinstance(e, CAProblem) else "connection" if isinstance(e, CAUnreachable) else "other"
        )
        retry_after = e.retry_after if isinstance(e, CAProblem) else None
        state.failures += 1
        state.last_failure = now
        state.last_error = str(e)
        state.next_attempt = now + renewal.backoff(state.failures, retry_after, self.rng)
        self._finish_request(state, f"failed: {e}")
        self.states.save(self.name, state)
        self.metrics.failures.labels(self.name, problem).inc()
        self.metrics.set_time(self.metrics.last_failure, self.name, now)
        log.error("%s: renewal failed (%s); backoff until %s after problem %s (failure %d in a row)",
                  self.name, e, _iso(state.next_attempt), problem, state.failures)  # fmt: skip

    def _succeeded(self, state: CertState, new: StoredCert) -> None:
        now = self.clock.now()
        state.failures, state.next_attempt, state.last_error = 0, None, None
        state.last_success = now
        state.ari = None
        self._finish_request(state, f"renewed: serial {new.serial:x}, valid until {_iso(new.not_after)}")
        self.states.save(self.name, state)
        self.metrics.set_time(self.metrics.last_success, self.name, now)
        self._publish_cert(new)
        self._on_renewed(new)

    def _finish_request(self, state: CertState, result: str) -> None:
        if self._request is not None:
            state.handled_request, state.request_result = self._request[0], result
            self._request = None

    async def run_forever(self) -> None:
        while True:
            self.wake.clear()
            try:
                plan = await self.step()
            except AcmeboxError:
                continue  # recorded and logged by step(); the next plan is the backoff
            except Exception:
                log.exception("%s: unexpected error in the renewal loop; retrying in 10 minutes", self.name)
                await self.clock.sleep_until(self.clock.now() + dt.timedelta(minutes=10), self.wake)
                continue
            if plan is not None:
                await self.clock.sleep_until(plan.wake, self.wake)
