"""The renewal loop of one certificate: plan when to renew, sleep until then, renew, and on
failure back off (persisted, so a restart cannot reset it). One CertMaintainer per
certificate; they run concurrently and one's failure never delays another.

Each step: observe (the state file, the live certificate, a received one, the ARI window),
evaluate (policies.py: the gates, the trigger, spacing, and the READY verdict), act (install,
or order through issuance.py and store), report (state file with the verdict, log, metrics).

An attempt goes: a certificate already received but not yet stored is installed first, and
nothing is ordered while one is (pending.py); an order placed earlier whose certificate never
arrived (a crash, SIGKILL) is fetched again from the CA and carried on (resume.py). Otherwise
the preflight checks that the certs and state dirs can take a certificate and that the local
clock agrees with the CA's; the ledger (ledger.py) allows the order (forced ones too, unless
--ignore-ledger); the order is placed and recorded as in flight; what it brings is kept in the
state dir, checked against the clock, and only then written to the store. Whatever fails along the
way, from the CA, the network, the disk or the clock, becomes this certificate's recorded
failure with a persisted next attempt, never the end of the process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable

from acmebox import control, placeholder, policies, renewal
from acmebox.ari import ari_cert_id
from acmebox.client import AcmeClient
from acmebox.clock import Clock, iso
from acmebox.config import CertSpec
from acmebox.errors import (
    AccountRefused,
    AcmeboxError,
    CAProblem,
    CAUnreachable,
    ClockError,
    ConfigError,
    Deferred,
    DiskError,
    ReplacesRefused,
)
from acmebox.issuance import CLOCK_RECHECK, DISK_RECHECK, MAX_CLOCK_SKEW, Issuer
from acmebox.ledger import Ledger, LedgerRefusal
from acmebox.metrics import Metrics
from acmebox.pending import PendingStore, Received
from acmebox.policies import Observed, Plan, Wanted
from acmebox.report import Reporter
from acmebox.resume import InFlight
from acmebox.state import AriCache, CertState, StateStore
from acmebox.store import CertMeta, CertStore, StoredCert, split_chain

log = logging.getLogger(__name__)

ARI_RETRY_ON_ERROR = dt.timedelta(hours=1)


class CertMaintainer:
    """One certificate's loop. Its collaborators are given: the `issuer` (and through it the
    CA connection), its `ledger` and `pending` store, the shared `store` and `states`, and
    `on_renewed`, which tells the reloader about a new certificate and says what came of it."""

    def __init__(
        self,
        spec: CertSpec,
        *,
        store: CertStore,
        states: StateStore,
        issuer: Issuer,
        ledger: Ledger,
        pending: PendingStore,
        on_renewed: Callable[[StoredCert, bool], Awaitable[str]],
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
        self.issuer = issuer
        self._on_renewed = on_renewed
        self.metrics = metrics
        self.clock = clock
        self.directory = directory
        self.use_ari = use_ari
        self.rng = rng or random.Random()
        self.pending = pending
        self.inflight = issuer.inflight
        self.ledger = ledger
        self.wake = asyncio.Event()
        self._state: CertState | None = None  # loaded once; the file is its persisted copy
        self._unsaved: Received | None = None  # received, and not even the pending copy could be written
        self._request: tuple[str, bool, bool] | None = None  # (request id, force, past the ledger)
        self._refresh_ari = False
        self.report = Reporter(self.name, metrics)
        self._ari_retry_at: dt.datetime | None = None

    @property
    def state(self) -> CertState | None:
        """The state as this maintainer holds it (None before its first step)."""
        return self._state

    # -- requests from outside (SIGHUP, `acmebox renew`) ----------------------------------------

    def request(self, request_id: str | None, force: bool, ignore_ledger: bool = False) -> None:
        """Check now, asking the CA for fresh renewal information; with `force`, renew now (and
        with `ignore_ledger`, even past the order ledger's limits). The outcome is recorded in
        the state under `request_id` (the latest one; force sticks)."""
        if request_id is not None:
            before = self._request
            self._request = (request_id, force or (before is not None and before[1]),
                             ignore_ledger or (before is not None and before[2]))
        self._refresh_ari = True
        self.wake.set()

    # -- planning ------------------------------------------------------------------------------

    def observe(self, stored: StoredCert | None, state: CertState | None = None,
                presented: policies.Presented | None = None) -> Observed:
        """The facts the policies decide on, as this maintainer sees them now (what the front
        door presents comes from the reloader's side: serving.py)."""
        return Observed(self.clock.now(), policies.Live.of(stored), Wanted(self.spec, self.directory),
                        revoked=frozenset(self.states.revoked()), state=state, presented=presented,
                        offered=self.issuer.ca.offered)

    def _asked(self, eager: bool = False) -> policies.Request:
        r = self._request
        return policies.Request(pending=r is not None, forced=r is not None and r[1], eager=eager)

    async def plan(self, state: CertState, stored: StoredCert | None, kept: bool = False, eager: bool = False,
                   in_flight: InFlight | None = None) -> Plan:
        """Evaluate: the gates, then the trigger (with the ARI window fetched when it decides), then spacing."""
        await self.issuer.ca.refresh()  # what the CA offers (profiles), looked at again now and then
        seen = self.observe(stored, state)
        self.report.cert(stored)
        asked = self._asked(eager)
        gated = policies.gate(seen, state, asked, kept, in_flight.url if in_flight is not None else None)
        if gated is not None:
            return gated
        ari = None
        if stored is not None and policies.replace(seen) is None:
            ari = await self._ari(stored, state, seen.now)
        self.report.ari(ari)
        return policies.spaced(policies.trigger(seen, ari, self._ari_retry_at), state, asked)

    def record_verdict(self, stored: StoredCert | None = None, save: bool = True) -> policies.Verdict:
        """Evaluate READY for the live certificate and keep it in the state file, for `status`
        in another process (it cannot see the configuration). Served-or-not is not part of it:
        that is recorded apart (control.write_served)."""
        if self._state is None:
            self._state = self.states.load(self.name, self.clock.now())
        if stored is None:
            stored = self.store.current(self.name)
        seen = self.observe(stored, self._state)
        verdict = policies.ready(seen)
        serial = seen.live.serial if seen.live is not None else None
        before = self._state.verdict
        self._state.verdict = verdict.record(serial, seen.now, before)
        if save and self._state.verdict != before:
            self._save(self._state)
        return verdict

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
            client = await self.issuer.ca.client()
            info = await client.renewal_info(stored.cert)
        except AcmeboxError as e:
            self._ari_retry_at = now + ARI_RETRY_ON_ERROR
            log.warning("%s: renewal info unavailable (%s); asking again at %s", self.name, e, iso(self._ari_retry_at))
            return cache
        self._ari_retry_at = None
        if info is None:
            return None  # the CA has no ARI
        same_window = cache is not None and (cache.start, cache.end) == (info.start, info.end)
        chosen = cache.chosen if same_window and cache is not None else renewal.ari_pick(info.start, info.end, self.rng)
        cache = AriCache(serial, info.start, info.end, chosen, renewal.ari_next_fetch(now, info.retry_after),
                         info.explanation_url)
        state.ari = cache
        self._save(state)
        return cache

    # -- acting --------------------------------------------------------------------------------

    async def step(self, eager: bool = False) -> Plan | None:
        """One pass: observe (state, live and kept certificates), evaluate (policies.py), act
        (install or order) when due, report (state file, log, metrics). Returns the plan when
        nothing was due, None after an attempt. Raises the attempt's error after recording it
        (the loop goes on, --once reports it). `eager` (`run --once`): a certificate already
        received is installed now, whatever the wait after the last failure to store it (that
        costs no order)."""
        # observe
        if self._state is None:
            self._state = self.states.load(self.name, self.clock.now())
        state = self._state
        stored = self.store.current(self.name)
        kept = self._unsaved or self.pending.load(self.name)
        in_flight = self.inflight.load(self.name) if kept is None and self.inflight is not None else None
        # evaluate
        plan = await self.plan(state, stored, kept=kept is not None, eager=eager, in_flight=in_flight)
        # report
        self.report.plan(plan, state)
        self.record_verdict(stored, save=False)
        now = self.clock.now()
        if plan.at > now:
            self._finish_request(state, f"not due: next renewal {iso(plan.at)} because of {plan.reason}")
            self._save(state)
            return plan
        # act
        log.info("%s: %s now (%s)", self.name, "installing" if kept else "resuming" if in_flight else "renewing",
                 plan.reason)
        try:
            new: StoredCert | None
            if kept is not None:
                new = self._install(kept)
            elif in_flight is not None:
                new = await self._resume(in_flight)
            else:
                new = await self._attempt(stored)
        except (ConfigError, AccountRefused):
            raise  # bad input (--once: no CA at that URL, EAB missing): nothing to back off from once fixed
        except AcmeboxError as e:
            self._failed(state, e)
            await self._record_next_plan(state)
            raise
        except Exception as e:  # a bug must not become a loop of orders: it backs off like any failure
            log.exception("%s: internal error", self.name)
            error = AcmeboxError(f"internal error: {type(e).__name__}: {e}")
            self._failed(state, error)
            await self._record_next_plan(state)
            raise error from None
        if new is None:  # the order in flight is gone at the CA: decide again without it
            return await self.step(eager)
        await self._succeeded(state, new)
        await self._record_next_plan(state)
        return None

    async def _record_next_plan(self, state: CertState) -> None:
        """After an attempt, what comes next, so that `status` shows the plan held now (also
        after `run --once`), not the one that led to the attempt."""
        stored = self.store.current(self.name)
        try:
            plan = await self.plan(state, stored)
        except AcmeboxError as e:  # the plan is recorded at the next step instead
            log.debug("%s: no plan recorded after the attempt: %s", self.name, e)
            self.record_verdict(stored)
            return
        self.report.plan(plan, state)
        self.record_verdict(stored, save=False)
        self._save(state)

    async def _attempt(self, stored: StoredCert | None) -> StoredCert:
        client = await self.issuer.ca.client()
        await self.issuer.preflight(client)
        replaces = await self._replaces(client, stored)
        try:
            received = await self._order(client, replaces)
        except ReplacesRefused as e:  # raised only when replaces was sent: this retry is the one
            log.warning("%s: the CA refused replaces=%s (%s); ordering again without it", self.name, replaces, e)
            received = await self._order(client, None)
        self._keep(received)
        return self._install(received)

    async def _resume(self, order: InFlight) -> StoredCert | None:
        """Carry on an order in flight (issuance.Issuer.resume); None when it is gone, its
        record dropped and its end recorded in the ledger."""
        client = await self.issuer.ca.client()
        received = await self.issuer.resume(client, self.spec, order)
        self._ledger_end(order.ledger_order, "issued" if received is not None else "failed")
        if received is None:
            self._drop_in_flight()
            return None
        self._keep(received)
        return self._install(received)

    def _drop_in_flight(self) -> None:
        if self.inflight is not None:
            self.inflight.drop(self.name)

    async def _replaces(self, client: AcmeClient, stored: StoredCert | None) -> str | None:
        """The ARI CertID to send as `replaces`: only for an issued certificate of this CA
        directory whose renewalInfo the CA answers. A CA that answers it with an error does not
        know the certificate (e.g. after losing its issuer) and would refuse the order."""
        if not (self.use_ari and client.has_ari and stored is not None and not stored.placeholder
                and stored.meta.directory == self.directory and self._state is not None):
            return None
        await self._ari(stored, self._state, self.clock.now())  # the cached answer, or a fresh one
        if self._ari_retry_at is not None:  # the latest renewalInfo request for it failed
            log.info("%s: ordering without replaces: the CA's renewalInfo for it failed", self.name)
            return None
        return ari_cert_id(stored.cert)

    async def _order(self, client: AcmeClient, replaces: str | None) -> Received:
        """One order, through the ledger: forced requests too; only an explicit
        `--ignore-ledger` passes a refusal. An order that cannot be recorded is not placed."""
        now = self.clock.now()
        if not (self._request is not None and self._request[2]):
            self.ledger.check(self.spec.names, now)
        try:
            order_id = self.ledger.ordered(self.spec.names, now)
        except OSError as e:
            why = f"cannot write the order ledger ({e.strerror or e}); not ordering"
            raise DiskError(why, now + DISK_RECHECK) from e
        self.metrics.orders.labels(self.name).inc()
        try:
            received = await self.issuer.issue(client, self.spec, replaces, order_id)
        except AcmeboxError as e:
            self._ledger_end(order_id, "failed", e.invalid if isinstance(e, CAProblem) else ())
            raise
        self._ledger_end(order_id, "issued")
        return received

    def _ledger_end(self, order_id: str, outcome: str, invalid: tuple[str, ...] = ()) -> None:
        try:
            self.ledger.ended(order_id, outcome, self.clock.now(), invalid)
        except OSError as e:  # the open entry then counts as issued: on the safe side
            log.warning("%s: cannot record the end of order %s in the ledger (%s)", self.name, order_id, e)

    def _keep(self, received: Received) -> None:
        try:
            self.pending.keep(self.name, received)
            self._drop_in_flight()  # the kept copy has the key and the certificate
        except OSError as e:
            self._unsaved = received
            log.error("%s: cannot keep the new certificate in %s (%s); holding it in memory until it is stored",
                      self.name, self.pending.dir, e.strerror or e)

    def _install(self, received: Received) -> StoredCert:
        """Store a received certificate and make it live; DiskError (kept for another try, no
        new order) when the certs volume cannot take it, ClockError when it is not valid now."""
        now = self.clock.now()
        try:
            cert = split_chain(received.fullchain_pem)[0]
        except ValueError as e:
            self._discard(f"unreadable ({e})")
            raise AcmeboxError(f"the CA's certificate for {self.name} is unreadable: {e}") from None
        if sorted(received.meta.names or ()) != sorted(self.spec.names):
            self._discard("for other names than configured")
            raise AcmeboxError(f"{self.name}: the certificate received earlier is for other names; ordering anew")
        valid_from, valid_to = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not valid_from - MAX_CLOCK_SKEW <= now < valid_to:
            self._discard("not valid by the local clock")
            raise ClockError(
                f"the certificate received is valid from {iso(valid_from)} to {iso(valid_to)}, but the local clock "
                f"says {iso(now)}: the local clock or the CA is wrong; "
                f"not ordering again before {iso(now + CLOCK_RECHECK)}",
                now + CLOCK_RECHECK,
            )
        try:
            stored = self.store.save(self.name, received.key_pem, received.fullchain_pem, received.meta)
        except ValueError as e:  # e.g. the chain does not match the key: storing it again cannot help
            self._discard(f"not storable ({e})")
            raise AcmeboxError(f"{self.name}: the certificate received cannot be stored: {e}") from None
        except OSError as e:
            where = "in memory" if self._unsaved is not None else f"in {self.pending.path(self.name)}"
            raise DiskError(
                f"the new certificate cannot be written to {self.store.root} ({e.strerror or e}); it is kept {where} "
                f"and installed from there once the disk takes it, with no new order",
                now + dt.timedelta(minutes=1),
            ) from None
        self._unsaved = None
        self._drop_in_flight()
        try:
            self.pending.drop(self.name)
        except OSError as e:
            log.warning("%s: cannot remove the kept copy (%s); it is installed again at the next step", self.name, e)
        log.info("%s: certificate stored: serial %x, valid until %s, version %s",
                 self.name, stored.serial, iso(stored.not_after), stored.version)
        return stored

    def _discard(self, why: str) -> None:
        self._unsaved = None
        self.pending.set_aside(self.name, why)

    def _save(self, state: CertState) -> None:
        try:
            self.states.save(self.name, state)
        except OSError as e:  # held in memory meanwhile; a restart would re-read the older file
            log.error("%s: cannot save its state in %s (%s)", self.name, self.states.dir, e.strerror or e)

    def _failed(self, state: CertState, e: AcmeboxError) -> None:
        now = self.clock.now()
        state.failures += 1
        if isinstance(e, Deferred):  # acmebox held the order back itself, and says until when
            problem = {LedgerRefusal: "ledger", ClockError: "clock", DiskError: "disk"}.get(type(e), "held")
            state.next_attempt = e.until
            self.metrics.held(self.name, problem, e.until)
        else:
            problem = (
                e.short_type if isinstance(e, CAProblem) else "connection" if isinstance(e, CAUnreachable) else "other"
            )
            retry_after = e.retry_after if isinstance(e, CAProblem) else None
            state.next_attempt = now + renewal.backoff(state.failures, retry_after, self.rng)
        state.last_failure = now
        state.last_error = str(e)
        self._finish_request(state, f"failed: {e}")
        self._save(state)
        self.metrics.failures.labels(self.name, problem).inc()
        self.metrics.set_time(self.metrics.last_failure, self.name, now)
        log.error("%s: %s (%s); next attempt %s (problem %s, %d failure(s) in a row)",
                  self.name, "held back" if isinstance(e, Deferred) else "renewal failed", e,
                  iso(state.next_attempt), problem, state.failures)

    async def _succeeded(self, state: CertState, new: StoredCert) -> None:
        now = self.clock.now()
        state.failures, state.next_attempt, state.last_error = 0, None, None
        state.last_success = now
        state.ari = None
        self._save(state)
        self.metrics.set_time(self.metrics.last_success, self.name, now)
        self.metrics.held(self.name, "", None)
        self.report.cert(new)
        # An operator waiting in `acmebox renew` hears what nginx made of it, not just the order.
        served = await self._on_renewed(new, self._request is not None)
        self._finish_request(state, f"renewed: serial {new.serial:x}, valid until {iso(new.not_after)}; {served}")
        self._save(state)

    def _finish_request(self, state: CertState, result: str) -> None:
        if self._request is not None:
            state.handled_request, state.request_result = self._request[0], result
            control.answer(self.states.statedir, self._request[0], self.name, result)  # heard even if not saved
            self._request = None

    async def step_once(self, force: bool, ignore_ledger: bool = False) -> AcmeboxError | None:
        """`run --once`: one eager step; the error when this certificate is not in place after it."""
        if force:
            self.request("run --force-renew", force=True, ignore_ledger=ignore_ledger)
        try:
            plan = await self.step(eager=True)
        except AcmeboxError as e:  # step() logged and recorded it
            return e
        stored = self.store.current(self.name)
        missing = policies.replace(self.observe(stored))
        if plan is not None and stored is not None and missing is None:
            log.info("%s: certificate on disk is valid until %s (serial %x); nothing ordered",
                     self.name, stored.not_after.isoformat(), stored.serial)
        if missing is not None and plan is not None:
            error = AcmeboxError(
                f"{self.name}: {missing.message}; next attempt {plan.at:%Y-%m-%dT%H:%M:%SZ} because of {plan.reason} "
                f"(--force-renew tries now)"
            )
            log.error("%s", error)
            return error
        return None

    def write_placeholder(self) -> None:
        """A self-signed placeholder where nginx would find no certificate (placeholder.py)."""
        if self.store.current(self.name) is not None:
            return
        key_pem, cert_pem = placeholder.make(self.spec.names, self.spec.key_type, self.clock.now())
        try:
            self.store.save(self.name, key_pem, cert_pem, CertMeta(names=self.spec.names, placeholder=True))
        except OSError as e:
            log.error("%s: cannot write a placeholder to %s (%s); nginx may not start until it can",
                      self.name, self.store.root, e.strerror or e)
            return
        log.info("%s: wrote a self-signed placeholder so nginx can start", self.name)

    async def run_forever(self) -> None:
        # A (re)started service asks the CA for renewal information at once instead of trusting
        # the cached window until its Retry-After: the CA may have moved it meanwhile (a
        # mass-revocation drill pulls windows into the past).
        self._refresh_ari = True
        while True:
            self.wake.clear()
            try:
                plan = await self.step()
            except AcmeboxError:
                continue  # recorded and logged by step(); the next plan is the backoff
            except Exception:  # in recording a failure: the state in memory still has no backoff
                log.exception("%s: unexpected error in the renewal loop; retrying in 10 minutes", self.name)
                await self.clock.sleep_until(self.clock.now() + dt.timedelta(minutes=10), self.wake)
                continue
            if plan is not None:
                await self.clock.sleep_until(plan.wake, self.wake)
