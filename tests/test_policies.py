"""The decision chains (policies.py) as tables: facts in, a reason token out, for every reason
and every gate. Pure: no CA, no disk, no clock but the one given."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from acmebox import policies
from acmebox.config import CertSpec
from acmebox.policies import Live, Observed, Plan, Presented, Reason, Request, Verdict, Wanted
from acmebox.state import AriCache, CertState

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
PROD = "https://ca.test/production"
STAGING = "https://ca.test/staging"
DAY = dt.timedelta(days=1)

SHORT = Wanted(CertSpec(("a.test", "www.a.test"), profile="shortlived"), PROD)
DEFAULT_ONLY = frozenset({"default"})
LIVE = Live("1a2b", ("a.test", "www.a.test"), "ec256", T0 - 10 * DAY, T0 + 80 * DAY, directory=PROD)
WANTED = Wanted(CertSpec(("a.test", "www.a.test")), PROD)
FAILED = CertState(failures=2, last_error="CA said no", next_attempt=T0 + dt.timedelta(minutes=10))
# The CA's window for the live serial (1a2b) ended a day ago (a mass-revocation drill).
PASSED = AriCache("1a2b", T0 - 2 * DAY, T0 - DAY, T0 - 1.5 * DAY, T0 + dt.timedelta(hours=6))


def seen(live: Live | None = LIVE, **kw: object) -> Observed:
    return Observed(T0, live, kw.pop("wanted", WANTED), **kw)  # type: ignore[arg-type]


READY_TABLE = [
    ("nothing live", seen(None), Reason.MISSING),
    ("placeholder", seen(replace(LIVE, placeholder=True, directory=None)), Reason.PLACEHOLDER),
    ("revoked", seen(revoked=frozenset({"1a2b"})), Reason.REVOKED),
    ("revoked before failing", seen(revoked=frozenset({"1a2b"}), state=FAILED), Reason.REVOKED),
    ("failing", seen(state=FAILED), Reason.FAILING),
    ("ARI window passed", seen(state=CertState(ari=PASSED)), Reason.WINDOW_PASSED),
    ("window passed before failing", seen(state=replace(FAILED, ari=PASSED)), Reason.WINDOW_PASSED),
    ("revoked before window passed", seen(revoked=frozenset({"1a2b"}), state=CertState(ari=PASSED)), Reason.REVOKED),
    ("passed window of another serial", seen(state=CertState(ari=replace(PASSED, serial="ffff"))), Reason.READY),
    ("a placeholder's passed window", seen(replace(LIVE, placeholder=True, directory=None),
                                           state=CertState(ari=PASSED)), Reason.PLACEHOLDER),
    ("window still open", seen(state=CertState(ari=replace(PASSED, end=T0 + DAY))), Reason.READY),
    ("failing before missing", seen(None, state=FAILED), Reason.FAILING),
    ("staging under production", seen(replace(LIVE, directory=STAGING)), Reason.OTHER_DIRECTORY),
    ("names", seen(replace(LIVE, names=("a.test",))), Reason.NAMES_CHANGED),
    ("key type", seen(replace(LIVE, key_type="rsa2048")), Reason.KEY_TYPE_CHANGED),
    ("profile", seen(wanted=Wanted(CertSpec(WANTED.spec.names, profile="shortlived"), PROD)), Reason.PROFILE_CHANGED),
    ("expired", seen(replace(LIVE, not_after=T0 - DAY)), Reason.EXPIRED),
    ("profile withdrawn", seen(replace(LIVE, profile="shortlived"), wanted=SHORT, offered=DEFAULT_ONLY),
     Reason.PROFILE_WITHDRAWN),
    ("last 1/20", seen(replace(LIVE, not_before=T0 - 89 * DAY, not_after=T0 + 2 * DAY)), Reason.EXPIRING),
    ("other serial served", seen(presented=Presented("ffff", door="127.0.0.1:443")), Reason.NOT_SERVED),
    ("no answer", seen(presented=Presented(None, "refused")), Reason.NOT_SERVED),
    ("served", seen(presented=Presented("1a2b")), Reason.READY),
    ("fine", seen(), Reason.READY),
    ("certbot's, no directory recorded", seen(replace(LIVE, directory=None)), Reason.READY),
    ("no profile asked", seen(replace(LIVE, profile="classic")), Reason.READY),
    ("names in another order", seen(replace(LIVE, names=("www.a.test", "a.test"))), Reason.READY),
]


@pytest.mark.parametrize(("what", "observed", "reason"), READY_TABLE, ids=[r[0] for r in READY_TABLE])
def test_ready_chain(what: str, observed: Observed, reason: Reason) -> None:
    verdict = policies.ready(observed)
    assert verdict.reason is reason
    assert verdict.ready is (reason is Reason.READY)
    assert verdict.message


def test_every_ready_reason_has_a_condition_word() -> None:
    reasons = {r for _, _, r in READY_TABLE}
    assert reasons == set(policies.CONDITIONS)
    assert policies.Verdict(Reason.READY, "").condition == "ok"
    assert policies.Verdict(Reason.NOT_SERVED, "").condition == "not served"


def test_messages_say_what_differs() -> None:
    staging = policies.ready(seen(replace(LIVE, directory=STAGING)))
    assert staging.message == f"issued by another CA directory ({STAGING})"
    assert policies.ready(seen(presented=Presented("ffff", door="d:1"))).message == "d:1 serves serial ffff, not 1a2b"
    assert "revoked (acmebox revoke)" in policies.ready(seen(revoked=frozenset({"1a2b"}))).message
    assert policies.ready(seen()).message.startswith("valid until ")
    passed = policies.ready(seen(state=CertState(ari=PASSED)))
    assert passed.message == "the CA's renewal window ended 2026-02-28T00:00:00Z"
    assert policies.Verdict(Reason.WINDOW_PASSED, "").condition == "window passed"


@pytest.mark.parametrize("reason", sorted(policies.SPEC_REASONS))
def test_without_the_configuration_the_recorded_verdict_stands_in(reason: Reason) -> None:
    """`status` cannot see the configuration: the service's recorded verdict decides those checks."""
    recorded = Verdict(reason, "as the service saw it")
    assert policies.ready(seen(wanted=None, recorded=recorded)) == recorded
    assert policies.ready(seen(wanted=None)).reason is Reason.READY, "nothing recorded: nothing to object to"
    # What `status` sees itself still comes first.
    assert policies.ready(seen(wanted=None, recorded=recorded, state=FAILED)).reason is Reason.FAILING
    # A recorded verdict of another kind does not stand in for these checks.
    assert policies.ready(seen(wanted=None, recorded=Verdict(Reason.EXPIRING, "x"))).reason is Reason.READY


REPLACE_TABLE = [
    ("nothing live", seen(None), Reason.MISSING),
    ("placeholder", seen(replace(LIVE, placeholder=True)), Reason.PLACEHOLDER),
    ("revoked", seen(revoked=frozenset({"1a2b"})), Reason.REVOKED),
    ("other directory", seen(replace(LIVE, directory=STAGING)), Reason.OTHER_DIRECTORY),
    ("names", seen(replace(LIVE, names=("b.test",))), Reason.NAMES_CHANGED),
    ("key type", seen(replace(LIVE, key_type="ec384")), Reason.KEY_TYPE_CHANGED),
    ("profile", seen(wanted=Wanted(CertSpec(WANTED.spec.names, profile="shortlived"), PROD)), Reason.PROFILE_CHANGED),
    ("expired", seen(replace(LIVE, not_after=T0)), Reason.EXPIRED),
]


@pytest.mark.parametrize(("what", "observed", "reason"), REPLACE_TABLE, ids=[r[0] for r in REPLACE_TABLE])
def test_replace_chain_orders_at_once(what: str, observed: Observed, reason: Reason) -> None:
    verdict = policies.replace(observed)
    assert verdict is not None and verdict.reason is reason
    plan = policies.plan(observed, CertState())
    assert plan.verdict == verdict and plan.at == T0 == plan.wake


LATE = replace(LIVE, not_before=T0 - 89 * DAY, not_after=T0 + 2 * DAY)


@pytest.mark.parametrize("observed", [seen(presented=Presented("ffff")), seen(state=FAILED), seen(LATE)])
def test_replace_ignores_what_a_new_certificate_would_not_change(observed: Observed) -> None:
    assert policies.replace(observed) is None


ARI = AriCache("1a2b", T0 + 30 * DAY, T0 + 32 * DAY, T0 + 31 * DAY, T0 + dt.timedelta(hours=6))
LATE_ARI = AriCache("1a2b", T0 + 79 * DAY, T0 + 81 * DAY, T0 + 80 * DAY, T0 + dt.timedelta(hours=6))


@pytest.mark.parametrize(
    ("what", "ari", "retry", "reason", "at", "wake"),
    [
        ("lifetime rule", None, None, Reason.RENEWAL_DUE, T0 + 50 * DAY, T0 + 50 * DAY),
        ("lifetime rule, ARI asked again first", None, T0 + DAY, Reason.RENEWAL_DUE, T0 + 50 * DAY, T0 + DAY),
        ("ARI window", ARI, None, Reason.ARI_WINDOW, T0 + 31 * DAY, ARI.next_fetch),
        ("ARI window after the last call", LATE_ARI, None, Reason.LAST_CALL, T0 + 75.5 * DAY, LATE_ARI.next_fetch),
    ],
)
def test_trigger_timing(what: str, ari: AriCache | None, retry: dt.datetime | None, reason: Reason,
                        at: dt.datetime, wake: dt.datetime) -> None:
    plan = policies.trigger(seen(), ari, retry)
    assert (plan.verdict.reason, plan.at, plan.wake) == (reason, at, wake)


RECENT = CertState(last_success=T0 - dt.timedelta(minutes=1))
SOON = replace(LIVE, not_before=T0 - 2 * DAY, not_after=T0 + DAY)  # due by the lifetime rule already
KEPT_FAILED = CertState(failures=1, last_error="disk full", next_attempt=T0 + dt.timedelta(minutes=1))


@pytest.mark.parametrize(
    ("what", "observed", "state", "request_", "kept", "reason", "at"),
    [
        ("received, store now", seen(), CertState(), Request(), True, Reason.PENDING, T0),
        ("received, store failed", seen(), KEPT_FAILED, Request(), True, Reason.PENDING, KEPT_FAILED.next_attempt),
        ("received, --once stores now", seen(), KEPT_FAILED, Request(eager=True), True, Reason.PENDING, T0),
        ("received, asked to", seen(), KEPT_FAILED, Request(pending=True), True, Reason.PENDING, T0),
        ("forced", seen(), FAILED, Request(pending=True, forced=True), False, Reason.FORCED, T0),
        ("backing off", seen(None), FAILED, Request(), False, Reason.BACKING_OFF, FAILED.next_attempt),
        ("backing off, even when asked", seen(None), FAILED, Request(pending=True), False, Reason.BACKING_OFF,
         FAILED.next_attempt),
        ("spaced: missing again", seen(None), RECENT, Request(), False, Reason.SPACING, T0 + dt.timedelta(minutes=4)),
        ("spaced: due on arrival", seen(SOON), RECENT, Request(), False, Reason.SPACING, T0 + dt.timedelta(minutes=4)),
        ("not spaced when asked", seen(None), RECENT, Request(pending=True), False, Reason.MISSING, T0),
        ("not spaced: the configuration changed", seen(replace(LIVE, directory=STAGING)), RECENT, Request(), False,
         Reason.OTHER_DIRECTORY, T0),
        ("not spaced: revoked", seen(revoked=frozenset({"1a2b"})), RECENT, Request(), False, Reason.REVOKED, T0),
        ("not spaced: long ago", seen(None), CertState(last_success=T0 - DAY), Request(), False, Reason.MISSING, T0),
        ("not due", seen(), RECENT, Request(), False, Reason.RENEWAL_DUE, T0 + 50 * DAY),
    ],
)
def test_gates(what: str, observed: Observed, state: CertState, request_: Request, kept: bool, reason: Reason,
               at: dt.datetime) -> None:
    plan: Plan = policies.plan(observed, state, request_, kept)
    assert plan.verdict.reason is reason, plan
    assert plan.at == at


# -- a withdrawn profile --------------------------------------------------------------------------

SHORT_LIVE = replace(LIVE, profile="shortlived")  # 90 days: the last tenth begins at T0 + 71 days


@pytest.mark.parametrize(
    ("what", "observed", "reason"),
    [
        ("withdrawn: the live one has it", seen(SHORT_LIVE, wanted=SHORT, offered=DEFAULT_ONLY),
         Reason.PROFILE_WITHDRAWN),
        ("withdrawn: renewed with the default since", seen(replace(LIVE, profile=None), wanted=SHORT,
                                                             offered=DEFAULT_ONLY), Reason.PROFILE_WITHDRAWN),
        ("withdrawn, and expired", seen(replace(SHORT_LIVE, not_after=T0 - DAY), wanted=SHORT, offered=DEFAULT_ONLY),
         Reason.EXPIRED),
        ("offered", seen(SHORT_LIVE, wanted=SHORT, offered=frozenset({"default", "shortlived"})), Reason.READY),
        ("offered again: back to it", seen(replace(LIVE, profile=None), wanted=SHORT,
                                           offered=frozenset({"shortlived"})), Reason.PROFILE_CHANGED),
        ("not known (not connected)", seen(SHORT_LIVE, wanted=SHORT), Reason.READY),
        ("no profile configured", seen(offered=DEFAULT_ONLY), Reason.READY),
    ],
)
def test_a_withdrawn_profile_is_a_verdict_not_a_change(what: str, observed: Observed, reason: Reason) -> None:
    assert policies.ready(observed).reason is reason


def test_a_withdrawn_profile_renews_before_the_last_tenth() -> None:
    """ARI puts the renewal late; the withdrawn profile moves it to the last tenth at the latest,
    under its own token; a certificate already renewed with the default follows the usual rules."""
    observed = seen(SHORT_LIVE, wanted=SHORT, offered=DEFAULT_ONLY)
    assert policies.replace(observed) is None, "not a change to order at once"
    late = policies.trigger(observed, LATE_ARI)
    assert late.verdict.reason is Reason.PROFILE_WITHDRAWN
    assert (late.at, late.wake) == (T0 + 71 * DAY, LATE_ARI.next_fetch)
    assert "renewing with its default profile" in late.reason
    early = policies.trigger(observed)  # the lifetime rule comes first
    assert (early.verdict.reason, early.at) == (Reason.PROFILE_WITHDRAWN, T0 + 50 * DAY)
    renewed = seen(replace(LIVE, profile=None), wanted=SHORT, offered=DEFAULT_ONLY)
    assert policies.trigger(renewed).verdict.reason is Reason.RENEWAL_DUE
    assert policies.trigger(seen(SHORT_LIVE, wanted=SHORT, offered=None)).verdict.reason is Reason.RENEWAL_DUE
    assert Reason.PROFILE_WITHDRAWN in policies.LOOP_PRONE
    assert "renewing with its default profile by 2026-05-11" in policies.ready(observed).message


IN_LAST_TENTH = replace(LIVE, not_before=T0 - 82 * DAY, not_after=T0 + 8 * DAY)


@pytest.mark.parametrize(
    ("what", "observed", "ca_error", "reason"),
    [
        ("last tenth, failing", seen(IN_LAST_TENTH, state=FAILED), None, Reason.CANNOT_RENEW),
        ("last tenth, CA unreachable", seen(IN_LAST_TENTH), "connection refused", Reason.CANNOT_RENEW),
        ("expired, failing", seen(replace(LIVE, not_after=T0 - DAY), state=FAILED), None, Reason.CANNOT_RENEW),
        ("last tenth, renewal not failing", seen(IN_LAST_TENTH), None, None),
        ("failing, with time left", seen(state=FAILED), "connection refused", None),
        ("placeholder", seen(replace(IN_LAST_TENTH, placeholder=True), state=FAILED), None, None),
        ("nothing live", seen(None, state=FAILED), "connection refused", None),
    ],
)
def test_renewable(what: str, observed: Observed, ca_error: str | None, reason: Reason | None) -> None:
    verdict = policies.renewable(observed, ca_error)
    assert (verdict.reason if verdict else None) is reason
    if verdict is not None:
        assert "last tenth" in verdict.message and (ca_error or "CA said no") in verdict.message


ORDER = "https://ca.test/order/1"


@pytest.mark.parametrize(
    ("what", "observed", "state", "request_", "kept", "reason", "at"),
    [
        ("in flight, fetch it now", seen(), CertState(), Request(), False, Reason.RESUMING, T0),
        ("in flight, before a forced order", seen(), CertState(), Request(pending=True, forced=True), False,
         Reason.RESUMING, T0),
        ("in flight, before a missing certificate", seen(None), RECENT, Request(), False, Reason.RESUMING, T0),
        ("in flight, the CA failed", seen(), FAILED, Request(), False, Reason.RESUMING, FAILED.next_attempt),
        ("in flight, the CA failed, --once", seen(), FAILED, Request(eager=True), False, Reason.RESUMING,
         FAILED.next_attempt),
        ("in flight, the CA failed, asked to", seen(), FAILED, Request(pending=True), False, Reason.RESUMING, T0),
        ("in flight, received first", seen(), CertState(), Request(), True, Reason.PENDING, T0),
    ],
)
def test_an_order_in_flight_is_fetched_before_anything_is_ordered(
    what: str, observed: Observed, state: CertState, request_: Request, kept: bool, reason: Reason, at: dt.datetime
) -> None:
    plan = policies.plan(observed, state, request_, kept, in_flight=ORDER)
    assert plan.verdict.reason is reason, plan
    assert plan.at == at
    if reason is Reason.RESUMING:
        assert ORDER in plan.reason


def test_gate_messages_are_the_logged_reasons() -> None:
    assert policies.plan(seen(), FAILED, Request(forced=True)).reason == "renewal requested (--force)"
    assert policies.plan(seen(), FAILED).reason == "backoff after 2 failure(s): CA said no"
    assert policies.plan(seen(None), RECENT).reason == "no certificate yet, spaced from the last renewal"


def test_the_record_keeps_since_while_the_reason_holds() -> None:
    first = Verdict(Reason.OTHER_DIRECTORY, "a").record("1a2b", T0, None)
    same = Verdict(Reason.OTHER_DIRECTORY, "b").record("1a2b", T0 + DAY, first)
    other = Verdict(Reason.READY, "c").record("1a2b", T0 + 2 * DAY, same)
    assert (first.since, same.since, other.since) == (T0, T0, T0 + 2 * DAY)
    assert Verdict.from_record(same) == Verdict(Reason.OTHER_DIRECTORY, "b")
    assert Verdict.from_record(replace(same, reason="FromTheFuture")) is None
    state = CertState(verdict=same)
    assert CertState.from_json(state.to_json()) == state
