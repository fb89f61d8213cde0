"""A mass-revocation drill like Let's Encrypt's of 2026-03-19, against a real Pebble (through
the fault proxy, which counts orders) and a real nginx serving ten certificates by SNI: the CA
moves every certificate's ARI window into the past.

- A running service learns of it when the CA's Retry-After for renewalInfo (Pebble: 6 hours)
  is up, and renews each certificate then: one order each, the new serial served and verified.
- A restarted service asks the CA again at once instead of waiting out the window it cached.
- While the CA refuses the order (overloaded, as during a real mass revocation), `status` and
  /metrics show the certificate whose window has passed and that is still served."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from acmebox.config import CertSpec, Config, HostPort, ReloadSpec
from acmebox.policies import MIN_SPACING
from acmebox.reload import served_serial
from acmebox.service import Service
from acmebox.state import AriCache
from tests.helpers.clock import FakeClock
from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.nginx import Nginx
from tests.helpers.pebble import Dirs, Pebble, start_pebble, stop_pebble
from tests.helpers.pebble_ari import orders_created, replaces_refusals, window_in_the_past
from tests.helpers.process import free_port, run_acmebox, wait_for

pytestmark = pytest.mark.e2e

NAMES = [f"drill{i}.test" for i in range(10)]
SERVER = """
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {name};
        ssl_certificate {certs}/live/{name}/fullchain.pem;
        ssl_certificate_key {certs}/live/{name}/privkey.pem;
        return 200 "ok\\n";
    }}
"""


def live(dirs: Dirs, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((dirs.certs / "live" / name / "cert.pem").read_bytes())


def is_real(dirs: Dirs, name: str) -> bool:
    meta = dirs.certs / "live" / name / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("placeholder") is False


class Drill:
    def __init__(self, tmp_path: Path, dirs: Dirs, pebble: Pebble, proxy: FaultProxy, port: int) -> None:
        self.dirs, self.pebble, self.proxy, self.port = dirs, pebble, proxy, port
        self.clock = FakeClock()
        self.config = Config(
            certs=tuple(CertSpec.build([n]) for n in NAMES), email=None, directory=proxy.directory,
            ca_bundle=pebble.ca_bundle, certs_dir=dirs.certs, state_dir=dirs.state,
            listen=HostPort("127.0.0.1", pebble.http_port), self_check_via=HostPort("127.0.0.1", pebble.http_port),
            reload=ReloadSpec("signal", str(tmp_path / "nginx" / "nginx.pid")),
            reload_verify=HostPort("127.0.0.1", port),
        )
        self.service = Service(self.config, self.clock)
        self.task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self.service = Service(self.config, self.clock)
        self.task = asyncio.create_task(self.service.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def serials(self) -> dict[str, int]:
        return {n: live(self.dirs, n).serial_number for n in NAMES}

    async def all_replaced_and_served(self, before: dict[str, int], what: str) -> dict[str, int]:
        """Wait until every certificate has a new serial that nginx presents (the reloader's
        own look, then a handshake of ours); returns the new serials."""
        await wait_for(lambda: all(is_real(self.dirs, n) and live(self.dirs, n).serial_number != before.get(n)
                                   for n in NAMES), timeout=120, what=what)
        now = self.serials()
        reloader = self.service.reloader
        await wait_for(lambda: all(reloader.matches(n) and (s := reloader.served.get(n)) is not None
                                   and s.serial == now[n] for n in NAMES),
                       timeout=60, what=f"{what}: served")
        for n in NAMES:
            assert await asyncio.to_thread(served_serial, "127.0.0.1", self.port, n) == now[n]
        return now

    def ari(self) -> dict[str, AriCache]:
        """Each live certificate's cached window, once the service has fetched it."""
        out = {}
        for n in NAMES:
            state = self.service.maintainers[n].state
            serial = f"{live(self.dirs, n).serial_number:x}"
            if state is not None and state.ari is not None and state.ari.serial == serial:
                out[n] = state.ari
        return out


async def test_drill_over_ten_certificates_running_restarted_and_refused(
    tmp_path: Path, dirs: Dirs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    # One 90-day profile: Pebble gives an order without a profile a random one of its profiles.
    pebble = start_pebble(tmp_path / "pebble", PEBBLE_PROFILES=json.dumps(
        {"classic": {"description": "90 days", "validityPeriod": 90 * 86400}}))
    proxy = FaultProxy(pebble.directory.rsplit("/", 1)[0], pebble.run_dir).start()
    port = free_port()
    servers = "".join(SERVER.format(port=port, name=n, certs=dirs.certs) for n in NAMES)
    nginx = Nginx.serving(tmp_path / "nginx", servers)
    drill = Drill(tmp_path, dirs, pebble, proxy, port)
    try:
        drill.service.store.prepare()
        for m in drill.service.maintainers.values():  # nginx starts on them, as in compose
            m.write_placeholder()
        nginx.start()
        drill.start()
        first = await drill.all_replaced_and_served({}, "the first certificates")
        assert orders_created(pebble) == len(NAMES)
        await wait_for(lambda: len(drill.ari()) == len(NAMES), what="every window fetched")
        cached = drill.ari()
        assert all(c.end > drill.clock.now() + dt.timedelta(days=30) for c in cached.values())

        # 1. The drill, the service running: each certificate is renewed once the CA's
        # Retry-After is up (not later), with one order each.
        for n in NAMES:
            window_in_the_past(pebble, live(dirs, n))
        latest = max(c.next_fetch for c in cached.values())
        retry_after = latest - drill.clock.now()
        assert dt.timedelta(hours=5) < retry_after <= dt.timedelta(hours=6, minutes=1)  # Pebble's 21600 s
        drill.clock.advance(retry_after + dt.timedelta(seconds=1))
        second = await drill.all_replaced_and_served(first, "the renewals after the drill")
        assert orders_created(pebble) == 2 * len(NAMES), "one order per certificate"
        for n in NAMES:
            state = drill.service.maintainers[n].state
            assert state is not None and state.last_success is not None
            assert state.last_success <= cached[n].next_fetch + dt.timedelta(minutes=1), n

        # 2. The drill again while the service is down: the restarted service asks the CA at
        # once, although its cached windows say to ask only hours from now.
        await wait_for(lambda: len(drill.ari()) == len(NAMES), what="the new certificates' windows")
        cached = drill.ari()
        await drill.stop()
        for n in NAMES:
            window_in_the_past(pebble, live(dirs, n))
        drill.clock.advance(MIN_SPACING + dt.timedelta(minutes=1))  # automatic renewals are this far apart
        drill.start()
        await drill.all_replaced_and_served(second, "the renewals after the restart")
        assert orders_created(pebble) == 3 * len(NAMES), "one order per certificate"
        for n in NAMES:
            state = drill.service.maintainers[n].state
            assert state is not None and state.last_success is not None
            assert state.last_success < cached[n].next_fetch - dt.timedelta(hours=5), f"{n} waited for its cache"

        # 3. The CA refuses orders (overloaded by the revocation): the certificate whose window
        # passed is still served, and both `status` and /metrics say so.
        await wait_for(lambda: len(drill.ari()) == len(NAMES), what="the windows after the restart")
        proxy.add(Rule(r"/order-plz", "POST", status=503, retry_after="3600"))
        victim = NAMES[0]
        window_in_the_past(pebble, live(dirs, victim))
        drill.clock.advance(MIN_SPACING + dt.timedelta(minutes=1))
        m = drill.service.maintainers[victim]
        m.request(None, force=False)
        await wait_for(lambda: m.state is not None and m.state.failures == 1, what="the refused order")
        status = run_acmebox("status", "--json", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
        assert status.returncode == 1, status.stdout + status.stderr
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert rows[victim]["condition"] == "window passed"
        assert rows[victim]["ari_window_passed"] is True and rows[victim]["served_matches"] is True
        assert rows[victim]["failures"] == 1 and "503" in (rows[victim]["last_error"] or "")
        assert all(rows[n]["condition"] == "ok" and rows[n]["ari_window_passed"] is False for n in NAMES[1:])
        table = run_acmebox("status", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state)).stdout
        assert any(line.startswith(victim) and "window passed" in line and " yes " in line
                   for line in table.splitlines()), table
        metrics = {(s.name, s.labels.get("name")): s.value
                   for f in text_string_to_metric_families(drill.service.metrics.render().decode())
                   for s in f.samples}
        now = drill.clock.now().timestamp()
        assert metrics[("acmebox_certificate_ari_window_end_timestamp_seconds", victim)] < now
        assert metrics[("acmebox_certificate_served_matches", victim)] == 1
        assert all(metrics[("acmebox_certificate_ari_window_end_timestamp_seconds", n)] > now for n in NAMES[1:])

        # The CA recovers; after its Retry-After the certificate is replaced and all is ok.
        proxy.clear()
        before = drill.serials()
        drill.clock.advance(dt.timedelta(hours=1, minutes=1))
        await wait_for(lambda: live(dirs, victim).serial_number != before[victim], timeout=60, what="the retry")
        await wait_for(lambda: drill.service.reloader.matches(victim), what="the retry served")
        await wait_for(lambda: drill.ari().get(victim) is not None, what="the new window")
        status = run_acmebox("status", "--json", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
        assert status.returncode == 0, status.stdout
        assert orders_created(pebble) == 3 * len(NAMES) + 1
        # Every newOrder that reached Pebble created an order, but for Pebble's indexing race.
        assert proxy.orders() == orders_created(pebble) + replaces_refusals(caplog.text)
    finally:
        await drill.stop()
        nginx.stop()
        proxy.stop()
        stop_pebble(pebble)
