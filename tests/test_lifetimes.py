"""Let's Encrypt's coming lifetimes against a real Pebble configured like them: the
`classic` profile at 64 days (from 2027-02-10, authorizations reused for 10 days) and at 45
days (from 2028-02-16, reused for 7 hours). Renewals come two thirds into the lifetime, long
after any reuse period, so the CA validates every one afresh: Pebble runs with
PEBBLE_AUTHZREUSE=0. Over several renewals, each driven by the CA's ARI window through the
service's ordinary (not forced) planning, the tests count at the CA and at the front door (a
real nginx): one order per renewal, one validation per renewal, and acmebox's self-check
through the front door before each of the CA's fetches. A control run with reuse on shows
that the counts tell the two apart."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509

from acmebox.ari import ari_cert_id
from acmebox.config import CertSpec, Config, HostPort
from acmebox.policies import MIN_SPACING
from acmebox.service import Service
from acmebox.state import CertState
from tests.helpers.clock import FakeClock
from tests.helpers.pebble import Dirs, Pebble, start_pebble, stop_pebble
from tests.helpers.pebble_ari import FrontDoor, orders_created, replaces_refusals, window_in_the_past
from tests.helpers.process import free_port, wait_for

pytestmark = pytest.mark.e2e

DAY = 86400
RENEWALS = 3
NAME = "lifetimes.test"


def profiles(days: int) -> str:
    # One profile only: Pebble gives an order without a profile a random one of its profiles.
    return json.dumps({"classic": {"description": f"{days}-day certificates", "validityPeriod": days * DAY}})


def live(dirs: Dirs) -> x509.Certificate | None:
    meta = dirs.certs / "live" / NAME / "meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("placeholder") is not False:
        return None
    return x509.load_pem_x509_certificate((dirs.certs / "live" / NAME / "cert.pem").read_bytes())


def planned_by_ari(state: CertState | None, cert: x509.Certificate) -> bool:
    return (state is not None and state.ari is not None and state.ari.serial == f"{cert.serial_number:x}"
            and "ARI window" in (state.renewal_reason or ""))


async def renew_through_ari(
    service: Service, clock: FakeClock, pebble: Pebble, dirs: Dirs, days: int
) -> list[x509.Certificate]:
    """The first certificate and RENEWALS renewals; each renewal is due because the CA's
    window for the live certificate lies in the past, and the service is told to look
    (as SIGHUP does), not forced."""
    m = service.maintainers[NAME]
    await wait_for(lambda: live(dirs) is not None, what="the first certificate")
    certs: list[x509.Certificate] = []
    for i in range(RENEWALS + 1):
        cert = live(dirs)
        assert cert is not None
        certs.append(cert)
        await wait_for(lambda c=cert: planned_by_ari(m.state, c), what=f"the plan of certificate {i}")
        assert m.state is not None and m.state.next_renewal is not None
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert abs(lifetime - dt.timedelta(days=days)) <= dt.timedelta(seconds=1)
        # The CA's own window: renewal planned well inside the lifetime, before the last 1/20.
        born = cert.not_valid_before_utc
        assert born + lifetime / 2 < m.state.next_renewal < cert.not_valid_after_utc - lifetime / 20
        if i == RENEWALS:
            break
        # Time passes (two automatic renewals are at least MIN_SPACING apart), the CA moves
        # the window, and the service looks again, as on SIGHUP: not forced.
        clock.advance(MIN_SPACING + dt.timedelta(minutes=1))
        window_in_the_past(pebble, cert)
        m.request(None, force=False)
        await wait_for(lambda old=cert: (c := live(dirs)) is not None and c.serial_number != old.serial_number,
                       what=f"renewal {i + 1}")
    return certs


@pytest.mark.parametrize(("days", "reuse"), [(64, "0"), (45, "0"), (90, "100")],
                         ids=["2027-64-days", "2028-45-days", "control-90-days-with-reuse"])
async def test_renewals_validate_afresh_after_the_self_check_and_order_once(
    days: int, reuse: str, tmp_path: Path, dirs: Dirs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    pebble = start_pebble(tmp_path / "pebble", PEBBLE_AUTHZREUSE=reuse, PEBBLE_PROFILES=profiles(days))
    upstream = free_port()
    config = Config(
        certs=(CertSpec.build([NAME]),), email=None, directory=pebble.directory, ca_bundle=pebble.ca_bundle,
        certs_dir=dirs.certs, state_dir=dirs.state, listen=HostPort("127.0.0.1", upstream),
        self_check_via=HostPort("127.0.0.1", pebble.http_port),
    )
    try:
        with FrontDoor(tmp_path / "nginx", pebble.http_port, upstream) as door:
            clock = FakeClock()
            service = Service(config, clock)
            task = asyncio.create_task(service.run())
            try:
                certs = await renew_through_ari(service, clock, pebble, dirs, days)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            fetches = door.by_token()
        issued = RENEWALS + 1
        assert len({c.serial_number for c in certs}) == issued
        # Nothing ordered twice: one order per certificate, at the CA and in acmebox's books
        # (a newOrder Pebble refuses in its indexing race creates none, and is accounted for).
        assert orders_created(pebble) == issued
        refused = replaces_refusals(caplog.text)
        assert pebble.orders_in_log() == issued + refused
        ledger = (dirs.state / "ledger" / f"{NAME}.jsonl").read_text().splitlines()
        assert sum(json.loads(line).get("outcome") == "issued" for line in ledger) == issued
        assert service.metrics.orders.labels(NAME)._value.get() == issued + refused
        # Each renewal replaces its predecessor (RFC 9773), none refused.
        for old in certs[:-1]:
            assert f"with replaces={ari_cert_id(old)}" in caplog.text
        def validations_logged() -> int:
            return pebble.log().count("set VALID by completed challenge")

        if reuse == "0":
            # Pebble's VA logs a validation after the authorization turned valid, from another
            # goroutine: the last line may follow the order's end. Wait for it (bounded), then count.
            await wait_for(lambda: validations_logged() >= issued, timeout=10, what="Pebble's log of every validation")
        validations = validations_logged()
        if reuse == "0":
            # Every renewal validated afresh ...
            assert validations == issued
            assert len(fetches) == issued
            for token, seen in fetches.items():
                # ... and acmebox fetched the challenge through the front door before the CA did.
                assert seen[0].self_check, f"{token}: the CA fetched first: {seen}"
                assert sum(f.self_check for f in seen) == 1, seen
                assert any(not f.self_check for f in seen), f"{token}: the CA never fetched it"
        else:
            # With reuse the CA validated the first order only: the counts above can tell.
            assert validations == 1
            assert len(fetches) == 1
    finally:
        stop_pebble(pebble)
