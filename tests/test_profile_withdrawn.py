"""A CA that withdraws the configured profile (#21 point 9), with a real Pebble restarted
without it (PEBBLE_PROFILES), a fault proxy in front to fail orders, and a clock moved into the
certificate's last tenth (FakeClock, in-process service). The service keeps going: it warns,
says so in /healthz and `status` (ProfileWithdrawn), renews with the CA's default profile, and
/readyz (compose's health check) turns 503 while a certificate in its last tenth cannot be
renewed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from acmebox.config import CertSpec, Config, HostPort
from acmebox.service import Service
from tests.helpers.certs import live_serial
from tests.helpers.clock import FakeClock
from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.pebble import Dirs, Pebble, start_pebble, stop_pebble
from tests.helpers.process import healthz, run_acmebox, wait_for

pytestmark = pytest.mark.e2e  # its own Pebble, restarted

DEFAULT_ONLY = '{"default": {"description": "The default profile", "validityPeriod": 7776000}}'


class Restartable:
    """A Pebble of this test's own, restarted on the same ports with other profiles."""

    def __init__(self, run_dir: Path) -> None:
        self.pebble = start_pebble(run_dir)

    def restart(self, **env: str) -> None:
        ports = {k: v for k, v in self.pebble.env.items() if k != "PEBBLE_RUN_DIR"}
        stop_pebble(self.pebble)
        self.pebble = start_pebble(self.pebble.run_dir, **{**ports, **env})


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[Restartable]:
    r = Restartable(tmp_path / "pebble")
    yield r
    stop_pebble(r.pebble)


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def status_json(dirs: Dirs) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = run_acmebox("status", "--json", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
    return out.returncode, json.loads(out.stdout)[0]


def meta(dirs: Dirs, name: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads((dirs.certs / "live" / name / "meta.json").read_text()))


async def test_a_withdrawn_profile_is_renewed_with_the_default(ca: Restartable, dirs: Dirs) -> None:
    name = "withdrawn.test"
    pebble: Pebble = ca.pebble
    proxy = FaultProxy(pebble.directory.rsplit("/", 1)[0], pebble.run_dir).start()
    try:
        args = ["--domain", name, "--profile", "shortlived", "--directory", proxy.directory,
                "--ca-bundle", str(pebble.ca_bundle), "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
                "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
        first = run_acmebox("run", "--once", *args)
        assert first.returncode == 0, first.stderr
        assert meta(dirs, name)["profile"] == "shortlived"
        old_serial = live_serial(dirs.certs, name)

        ca.restart(PEBBLE_PROFILES=DEFAULT_ONLY)  # the CA withdraws "shortlived"
        clock = FakeClock()
        config = Config(certs=(CertSpec.build([name], profile="shortlived"),), email=None,
                        directory=proxy.directory, ca_bundle=pebble.ca_bundle, certs_dir=dirs.certs,
                        state_dir=dirs.state, listen=HostPort("127.0.0.1", pebble.http_port), ari=False)
        service = Service(config, clock)
        m = service.maintainers[name]
        task = asyncio.create_task(service.run())
        try:
            # Up, planning, not exiting and not stuck on the CA: the profile is a verdict, not an error.
            await wait_for(lambda: m.state is not None and m.state.next_renewal is not None
                           and service.ca.error is None, what="a plan")
            assert m.state is not None and "'shortlived' is withdrawn" in (m.state.renewal_reason or "")
            assert proxy.orders() == 1, "nothing ordered before it is due"
            code, body = await asyncio.to_thread(healthz, pebble.http_port)
            assert code == 503 and "no longer offers profile 'shortlived'" in body
            assert (await asyncio.to_thread(readyz, pebble.http_port))[0] == 200, "time left: ready"
            rc, row = status_json(dirs)
            assert rc == 1 and row["condition"] == "profile withdrawn"
            assert row["verdict"]["reason"] == "ProfileWithdrawn"

            # In the last tenth, with every order failing: compose's health check turns red.
            stored = service.store.current(name)
            assert stored is not None
            tenth = stored.not_before + (stored.not_after - stored.not_before) * 0.9
            proxy.add(Rule("/order-plz", "POST", status=503, problem="serverInternal"))
            clock.advance(tenth - clock.now() + dt.timedelta(minutes=10))
            m.wake.set()
            await wait_for(lambda: m.state is not None and m.state.failures >= 1, what="a failed renewal")
            code, body = await asyncio.to_thread(readyz, pebble.http_port)
            assert code == 503 and "last tenth" in body, body

            # The CA takes orders again: renewed with its default profile, ready again.
            proxy.clear()
            clock.advance(dt.timedelta(minutes=3))  # past the backoff
            m.wake.set()
            await wait_for(lambda: live_serial(dirs.certs, name) != old_serial, timeout=60, what="the renewal")
            assert proxy.orders() == 2
            renewed = meta(dirs, name)
            assert renewed.get("profile") is None, "ordered with the CA's default profile"
            new = service.store.current(name)
            assert new is not None and new.not_after - new.not_before > dt.timedelta(days=80), "the default's lifetime"
            assert (await asyncio.to_thread(readyz, pebble.http_port))[0] == 200
            rc, row = status_json(dirs)
            assert rc == 1 and row["condition"] == "profile withdrawn"
            assert "default profile" in row["verdict"]["message"]
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        proxy.stop()


def test_once_keeps_refusing_a_profile_never_offered(ca: Restartable, dirs: Dirs) -> None:
    """A typo is still bad input for `run --once` (exit 2): only a profile the live certificate
    was issued with counts as withdrawn."""
    pebble = ca.pebble
    out = run_acmebox("run", "--once", "--domain", "typo.test", "--profile", "shortlivd", "--directory",
                      pebble.directory, "--ca-bundle", str(pebble.ca_bundle), "--certs-dir", str(dirs.certs),
                      "--state-dir", str(dirs.state), "--listen", f"127.0.0.1:{pebble.http_port}")
    assert out.returncode == 2 and "profile 'shortlivd' is not offered" in out.stderr


def test_once_renews_a_withdrawn_profile_with_the_default(ca: Restartable, dirs: Dirs) -> None:
    """`run --once --force-renew` (a cron job) after the CA withdrew the profile: a warning and
    a certificate with the CA's default profile, not exit 2."""
    pebble = ca.pebble
    args = ["--domain", "cron.test", "--profile", "shortlived", "--directory", pebble.directory,
            "--ca-bundle", str(pebble.ca_bundle), "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    assert run_acmebox("run", "--once", *args).returncode == 0
    ca.restart(PEBBLE_PROFILES=DEFAULT_ONLY)
    out = run_acmebox("run", "--once", "--force-renew", *args)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "no longer offers profile 'shortlived'" in out.stderr
    assert meta(dirs, "cron.test").get("profile") is None
    rc, row = status_json(dirs)
    assert rc == 1 and row["verdict"]["reason"] == "ProfileWithdrawn"
