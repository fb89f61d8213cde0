"""Every decision about a certificate, in one place: is what is live fine (READY), must or when
should a new one be ordered (TRIGGER), and what holds an order back (the gates). cert-manager's
trigger and readiness policy chains are the model: each check looks at the observed facts and
either passes or returns a Verdict with a stable reason token and a message; a chain's answer is
its first verdict.

Pure: facts in (what live/ holds, the configuration, the state file, what the front door
presents, a time), verdicts out. Read by the loop (maintain.py), /healthz (Service.health),
`run --once`, `acmebox status` and `acmebox check`. The tokens are stable (scripts read them from
`status --json`); the messages are for people.

- REPLACE: the certificate must be replaced now: Missing, Placeholder, Revoked, OtherDirectory,
  NamesChanged, KeyTypeChanged, ProfileChanged, Expired.
- TRIGGER: REPLACE, else the renewal time: ARIWindow (RFC 9773), LastCall (the last 1/20 of the
  lifetime, before a later ARI window) or RenewalDue (the lifetime rule); ProfileWithdrawn when
  the CA no longer offers the configured profile: that time, but before the last tenth of the
  lifetime, and with the CA's default profile (issuance.py).
- READY: Revoked, WindowPassed (the CA's ARI window for it ended), Failing, Missing,
  Placeholder, OtherDirectory, NamesChanged, KeyTypeChanged, ProfileChanged, Expired,
  ProfileWithdrawn, Expiring (its last 1/20), NotServed, else Ready.
- RENEWABLE (/readyz, compose's health check): CannotRenew for a real certificate in its last
  tenth whose renewal fails, or whose CA cannot be reached.
- Gates, before TRIGGER: Pending (a received certificate waits to be stored), Resuming (an
  order placed earlier is fetched again from the CA, resume.py), Forced (an operator's
  --force), BackingOff (after failures); after it: Spacing (no loop of orders).

The configuration-dependent checks (directory, names, key type, profile) need the configuration,
which only the service has: it records its READY verdict in the state file (state.py), and
`status`, in another process, passes that record in as `recorded` instead of the configuration.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from acmebox import renewal
from acmebox.clock import iso
from acmebox.config import CertSpec
from acmebox.state import AriCache, CertState, VerdictRecord
from acmebox.store import StoredCert

MIN_SPACING = dt.timedelta(minutes=5)  # between two scheduled renewals of one certificate


class Reason(StrEnum):
    """The stable reason tokens."""

    MISSING = "Missing"
    PLACEHOLDER = "Placeholder"
    REVOKED = "Revoked"
    OTHER_DIRECTORY = "OtherDirectory"
    NAMES_CHANGED = "NamesChanged"
    KEY_TYPE_CHANGED = "KeyTypeChanged"
    PROFILE_CHANGED = "ProfileChanged"
    PROFILE_WITHDRAWN = "ProfileWithdrawn"
    CANNOT_RENEW = "CannotRenew"
    EXPIRED = "Expired"
    EXPIRING = "Expiring"
    FAILING = "Failing"
    NOT_SERVED = "NotServed"
    WINDOW_PASSED = "WindowPassed"
    READY = "Ready"
    RENEWAL_DUE = "RenewalDue"
    ARI_WINDOW = "ARIWindow"
    LAST_CALL = "LastCall"
    PENDING = "Pending"
    RESUMING = "Resuming"
    FORCED = "Forced"
    BACKING_OFF = "BackingOff"
    SPACING = "Spacing"


# The words `acmebox status` has always shown in its CONDITION column (and `condition` in --json).
CONDITIONS = {
    Reason.READY: "ok",
    Reason.MISSING: "missing",
    Reason.PLACEHOLDER: "placeholder",
    Reason.REVOKED: "revoked",
    Reason.FAILING: "failing",
    Reason.EXPIRED: "expired",
    Reason.EXPIRING: "expiring",
    Reason.NOT_SERVED: "not served",
    Reason.WINDOW_PASSED: "window passed",
    Reason.OTHER_DIRECTORY: "other directory",
    Reason.NAMES_CHANGED: "names changed",
    Reason.KEY_TYPE_CHANGED: "key type changed",
    Reason.PROFILE_CHANGED: "profile changed",
    Reason.PROFILE_WITHDRAWN: "profile withdrawn",
}
SPEC_REASONS = frozenset({Reason.OTHER_DIRECTORY, Reason.NAMES_CHANGED, Reason.KEY_TYPE_CHANGED,
                          Reason.PROFILE_CHANGED, Reason.PROFILE_WITHDRAWN})
# Replacing does not end these by itself (a CA or clock that makes every certificate due or
# expired at once, something deleting live/): they are spaced. The others end with the new
# certificate, so they cannot loop.
LOOP_PRONE = frozenset({Reason.MISSING, Reason.PLACEHOLDER, Reason.EXPIRED, Reason.RENEWAL_DUE,
                        Reason.ARI_WINDOW, Reason.LAST_CALL, Reason.PROFILE_WITHDRAWN})
LAST_TENTH = 0.9  # of the lifetime: a withdrawn profile's certificate is renewed before it; /readyz fails in it


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    message: str

    @property
    def ready(self) -> bool:
        return self.reason is Reason.READY

    @property
    def condition(self) -> str:
        """The word `status` shows for a READY verdict."""
        return CONDITIONS.get(self.reason, str(self.reason))

    def record(self, serial: str | None, now: dt.datetime, before: VerdictRecord | None) -> VerdictRecord:
        """This verdict as the state file keeps it; `since` stays while the reason does."""
        same = before is not None and before.reason == self.reason and before.serial == serial
        return VerdictRecord(self.reason, self.message, serial, before.since if same and before else now)

    @classmethod
    def from_record(cls, record: VerdictRecord) -> Verdict | None:
        try:
            return cls(Reason(record.reason), record.message)
        except ValueError:  # a token from a newer acmebox
            return None


# -- the facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """What live/<name>/ holds, as far as the decisions go."""

    serial: str  # hex
    names: tuple[str, ...]
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    placeholder: bool = False
    directory: str | None = None  # the CA directory that issued it; None: not recorded (certbot's)
    profile: str | None = None

    @classmethod
    def of(cls, stored: StoredCert | None) -> Live | None:
        if stored is None:
            return None
        return cls(f"{stored.serial:x}", tuple(stored.names), stored.key_type, stored.not_before, stored.not_after,
                   stored.placeholder, stored.meta.directory, stored.meta.profile)


@dataclass(frozen=True)
class Wanted:
    """What the configuration asks for."""

    spec: CertSpec
    directory: str


@dataclass(frozen=True)
class Presented:
    """What the front door presented for the certificate's first name at the last look."""

    serial: str | None  # hex; None: no answer
    error: str | None = None
    door: str = "the server"


@dataclass(frozen=True)
class Observed:
    now: dt.datetime
    live: Live | None
    wanted: Wanted | None = None  # None where the configuration is not known (`status`)
    recorded: Verdict | None = None  # the service's READY verdict for this live serial, in place of `wanted`
    revoked: frozenset[str] = frozenset()  # hex serials `acmebox revoke` revoked
    state: CertState | None = None  # failures and the next attempt
    presented: Presented | None = None  # None: not looked at
    offered: frozenset[str] | None = None  # the profiles the CA offers; None: not known (not connected, none announced)

    @property
    def withdrawn(self) -> str | None:
        """The configured profile, when the CA does not offer it (orders then go without one)."""
        profile = self.wanted.spec.profile if self.wanted is not None else None
        return profile if profile and self.offered is not None and profile not in self.offered else None


Check = Callable[[Observed], Verdict | None]


def _spec_check(reason: Reason, differs: Callable[[Live, Wanted], str | None]) -> Check:
    """A check of the live certificate against the configuration, or, without the
    configuration, the service's recorded verdict for it."""

    def check(o: Observed) -> Verdict | None:
        if o.live is None:
            return None
        if o.wanted is None:
            return o.recorded if o.recorded is not None and o.recorded.reason is reason else None
        message = differs(o.live, o.wanted)
        return Verdict(reason, message) if message is not None else None

    return check


def missing(o: Observed) -> Verdict | None:
    return Verdict(Reason.MISSING, "no certificate yet") if o.live is None else None


def placeholder(o: Observed) -> Verdict | None:
    if o.live is not None and o.live.placeholder:
        return Verdict(Reason.PLACEHOLDER, "only a placeholder is in place")
    return None


def revoked(o: Observed) -> Verdict | None:
    if o.live is not None and o.live.serial in o.revoked:
        return Verdict(Reason.REVOKED, f"serial {o.live.serial} revoked (acmebox revoke)")
    return None


def _other_directory(live: Live, wanted: Wanted) -> str | None:
    # One without a recorded directory (taken over from certbot) is kept until its renewal.
    if live.directory is not None and live.directory != wanted.directory:
        return f"issued by another CA directory ({live.directory})"
    return None


def _names(live: Live, wanted: Wanted) -> str | None:
    if sorted(live.names) != sorted(wanted.spec.names):
        return f"names changed (on disk: {', '.join(live.names)})"
    return None


def _key_type(live: Live, wanted: Wanted) -> str | None:
    return f"key type changed (on disk: {live.key_type})" if live.key_type != wanted.spec.key_type else None


def _profile(live: Live, wanted: Wanted) -> str | None:
    if wanted.spec.profile and live.profile != wanted.spec.profile:
        return f"profile changed (on disk: {live.profile or 'none'})"
    return None


other_directory = _spec_check(Reason.OTHER_DIRECTORY, _other_directory)
names_changed = _spec_check(Reason.NAMES_CHANGED, _names)
key_type_changed = _spec_check(Reason.KEY_TYPE_CHANGED, _key_type)
_profile_changed = _spec_check(Reason.PROFILE_CHANGED, _profile)


def last_tenth(live: Live) -> dt.datetime:
    return live.not_before + (live.not_after - live.not_before) * LAST_TENTH


def profile_changed(o: Observed) -> Verdict | None:
    # A withdrawn profile cannot be had: the certificate the CA's default gave is not "changed".
    return None if o.withdrawn else _profile_changed(o)


def profile_withdrawn(o: Observed) -> Verdict | None:
    """The CA no longer offers the configured profile (or never did: a service keeps going with
    the CA's default rather than with no certificate)."""
    if o.live is None:
        return None
    if o.wanted is None:
        return o.recorded if o.recorded is not None and o.recorded.reason is Reason.PROFILE_WITHDRAWN else None
    profile = o.withdrawn
    if profile is None:
        return None
    offered = ", ".join(sorted(o.offered or ())) or "none"
    if o.live.profile == profile:
        return Verdict(Reason.PROFILE_WITHDRAWN, f"the CA no longer offers profile {profile!r} (it offers: {offered}); "
                       f"renewing with its default profile by {iso(last_tenth(o.live))}")
    return Verdict(Reason.PROFILE_WITHDRAWN, f"the CA does not offer profile {profile!r} (it offers: {offered}); "
                   "issued with its default profile, renewed with it until the CA offers the profile again")


def expired(o: Observed) -> Verdict | None:
    if o.live is not None and o.live.not_after <= o.now:
        return Verdict(Reason.EXPIRED, f"expired at {iso(o.live.not_after)}")
    return None


def expiring(o: Observed) -> Verdict | None:
    if o.live is not None and o.now >= renewal.last_call(o.live.not_before, o.live.not_after):
        return Verdict(Reason.EXPIRING, f"expiring {o.live.not_after.isoformat()}")
    return None


def failing(o: Observed) -> Verdict | None:
    """The last attempt failed (or was held back) and another is scheduled."""
    s = o.state
    if s is not None and s.last_error is not None and s.next_attempt is not None:
        return Verdict(Reason.FAILING, f"failing: {s.last_error[:200]} (next attempt {s.next_attempt.isoformat()})")
    return None


def ari_window(o: Observed) -> AriCache | None:
    """The CA's renewal window (as last fetched) for the live certificate; None for another serial."""
    ari = o.state.ari if o.state is not None else None
    return ari if ari is not None and o.live is not None and ari.serial == o.live.serial else None


def window_passed(o: Observed) -> Verdict | None:
    """The CA's window for the live certificate ended and it is still in place: it must be
    replaced now (a mass-revocation drill, or a real one, moves windows into the past)."""
    ari = ari_window(o)
    if ari is not None and o.live is not None and not o.live.placeholder and ari.end <= o.now:
        return Verdict(Reason.WINDOW_PASSED, f"the CA's renewal window ended {iso(ari.end)}")
    return None


def not_served(o: Observed) -> Verdict | None:
    p = o.presented
    if o.live is None or p is None or p.serial == o.live.serial:
        return None
    if p.serial is None:
        return Verdict(Reason.NOT_SERVED, f"{p.door} does not answer ({p.error})")
    return Verdict(Reason.NOT_SERVED, f"{p.door} serves serial {p.serial}, not {o.live.serial}")


REPLACE: tuple[Check, ...] = (missing, placeholder, revoked, other_directory, names_changed, key_type_changed,
                              profile_changed, expired)
READY: tuple[Check, ...] = (revoked, window_passed, failing, missing, placeholder, other_directory, names_changed,
                            key_type_changed, profile_changed, expired, profile_withdrawn, expiring, not_served)


def first(chain: tuple[Check, ...], o: Observed) -> Verdict | None:
    for check in chain:
        verdict = check(o)
        if verdict is not None:
            return verdict
    return None


def replace(o: Observed) -> Verdict | None:
    """Why the live certificate cannot be kept as it is, or None when it serves the configuration."""
    return first(REPLACE, o)


def ready(o: Observed) -> Verdict:
    """Whether what is live (and served) is fine: Ready, or the first thing that is not."""
    found = first(READY, o)
    if found is not None:
        return found
    assert o.live is not None  # `missing` passed
    return Verdict(Reason.READY, f"valid until {o.live.not_after.isoformat()}")


def renewable(o: Observed, ca_error: str | None = None) -> Verdict | None:
    """CannotRenew when a real certificate is in its last tenth and its renewal fails (or its
    CA cannot be reached: `ca_error`); None otherwise. What compose's health check (/readyz)
    reports: not a passing failure, but a certificate that is running out."""
    live = o.live
    if live is None or live.placeholder or o.now < last_tenth(live):
        return None
    s = o.state
    why = s.last_error if s is not None and s.last_error is not None and s.next_attempt is not None else ca_error
    if why is None:
        return None
    why = f"in its last tenth (expires {iso(live.not_after)}) and not renewed: {why[:200]}"
    return Verdict(Reason.CANNOT_RENEW, why)


# -- the trigger and the gates ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """When to order (or install) next, why, and when to look again at the latest."""

    verdict: Verdict
    at: dt.datetime
    wake: dt.datetime

    @property
    def reason(self) -> str:
        return self.verdict.message


@dataclass(frozen=True)
class Request:
    """What an operator asked for, if anything (`acmebox renew`, SIGHUP, `run --force-renew`)."""

    pending: bool = False  # a request waits for an answer: it is not a loop
    forced: bool = False
    eager: bool = False  # `run --once`: install a received certificate whatever the wait


def gate(o: Observed, state: CertState, request: Request, kept: bool, in_flight: str | None = None) -> Plan | None:
    """The gates before the trigger: a plan, or None when the trigger decides. `kept`: a
    received certificate waits to be stored; `in_flight`: the URL of an order placed earlier
    whose certificate never arrived (it is fetched before anything new is ordered)."""
    now = o.now
    retry = state.next_attempt
    waits = retry is not None and now < retry and not request.pending and not request.eager
    if kept:
        if waits and retry is not None:
            why = f"a received certificate waits to be stored ({state.last_error})"
            return Plan(Verdict(Reason.PENDING, why), retry, retry)
        return Plan(Verdict(Reason.PENDING, "a certificate already received waits to be stored"), now, now)
    if in_flight is not None:
        why = f"order {in_flight}, placed earlier, is fetched again from the CA"
        # It costs no order, but it asks the CA: after a failure, only an operator's request is sooner.
        if retry is not None and now < retry and not request.pending:
            return Plan(Verdict(Reason.RESUMING, f"{why} ({state.last_error})"), retry, retry)
        return Plan(Verdict(Reason.RESUMING, why), now, now)
    if request.forced:
        return Plan(Verdict(Reason.FORCED, "renewal requested (--force)"), now, now)
    if state.next_attempt is not None and now < state.next_attempt:
        why = f"backoff after {state.failures} failure(s): {state.last_error}"
        return Plan(Verdict(Reason.BACKING_OFF, why), state.next_attempt, state.next_attempt)
    return None


def trigger(o: Observed, ari: AriCache | None = None, ari_retry_at: dt.datetime | None = None) -> Plan:
    """When a new certificate is wanted: now for a REPLACE reason, else by the renewal rules
    (`ari`: the cached window, when the CA has ARI; `ari_retry_at`: when to ask for it again)."""
    now = o.now
    must = replace(o)
    if must is not None or o.live is None:
        return Plan(must or Verdict(Reason.MISSING, "no certificate yet"), now, now)
    live = o.live
    if ari is not None:
        decision = renewal.decide(live.not_before, live.not_after, ari.chosen, (ari.start, ari.end))
        early = ari.chosen <= renewal.last_call(live.not_before, live.not_after)
        reason = Reason.ARI_WINDOW if early else Reason.LAST_CALL
        wake = min(decision.at, ari.next_fetch)
    else:
        decision = renewal.decide(live.not_before, live.not_after)
        reason = Reason.RENEWAL_DUE
        wake = min(decision.at, ari_retry_at) if ari_retry_at else decision.at
    profile = o.withdrawn
    if profile is not None and live.profile == profile:
        at = min(decision.at, last_tenth(live))
        why = f"{decision.reason}; profile {profile!r} is withdrawn by the CA: renewing with its default profile"
        return Plan(Verdict(Reason.PROFILE_WITHDRAWN, why), at, min(wake, at))
    return Plan(Verdict(reason, decision.reason), decision.at, wake)


def spaced(plan: Plan, state: CertState, request: Request) -> Plan:
    """The gate after the trigger: a loop-prone reason waits MIN_SPACING after the last
    renewal. A CA (or clock) that makes each fresh certificate due at once, or expired on
    arrival, must not cause a loop of orders; an operator's request is not a loop and goes
    through. The ledger bounds what gets past this."""
    recent = state.last_success
    if request.pending or plan.verdict.reason not in LOOP_PRONE or recent is None:
        return plan
    if plan.at >= recent + MIN_SPACING:
        return plan
    at = recent + MIN_SPACING
    return Plan(Verdict(Reason.SPACING, f"{plan.reason}, spaced from the last renewal"), at, at)


def plan(o: Observed, state: CertState, request: Request = Request(), kept: bool = False,
         ari: AriCache | None = None, ari_retry_at: dt.datetime | None = None, in_flight: str | None = None) -> Plan:
    """The whole chain: gates, trigger, spacing (the loop runs the parts, fetching ARI between)."""
    return gate(o, state, request, kept, in_flight) or spaced(trigger(o, ari, ari_retry_at), state, request)
