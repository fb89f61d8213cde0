"""The long-running service against a real Pebble: ARI-driven renewal with `replaces`, the
lifetime rule with time injected, backoff through a CA outage and a restart, and a real nginx
that starts on the placeholder and is reloaded onto the real certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from acmebox.ari import ari_cert_id
from acmebox.config import CertSpec, Config, HostPort
from acmebox.reload import served_serial
from acmebox.service import Service
from acmebox.store import CertStore
from tests.helpers.clock import FakeClock
from tests.helpers.nginx import Nginx
from tests.helpers.pebble import Dirs, Pebble, pebble_args, start_pebble, stop_pebble
from tests.helpers.process import ServiceProcess, free_port, run_acmebox, wait_for, wait_sync

pytestmark = pytest.mark.e2e


def live_cert(dirs: Dirs, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((dirs.certs / "live" / name / "cert.pem").read_bytes())


def is_real(dirs: Dirs, name: str) -> bool:
    meta = dirs.certs / "live" / name / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("placeholder") is False


def set_ari_window(pebble: Pebble, cert: x509.Certificate, start: dt.datetime, end: dt.datetime) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    window = {"suggestedWindow": {"start": start.isoformat().replace("+00:00", "Z"),
                                  "end": end.isoformat().replace("+00:00", "Z")}}
    body = {"Certificate": cert.public_bytes(Encoding.PEM).decode(), "ARIResponse": json.dumps(window)}
    assert pebble.post("/set-renewal-info/", json.dumps(body).encode()) == 200


def test_ari_windows_drive_renewal(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    reloads = tmp_path / "reloads"
    svc = ServiceProcess(
        ["run", "--domain", "ari.test", "--profile", "default", *pebble_args(pebble, dirs),
         "--reload", "command", "--reload-target", f"sh -c 'echo reload >> {reloads}'"],
        tmp_path / "service.log",
    )
    try:
        svc.wait_log("ari.test: renewal scheduled for")
        assert "wrote a self-signed placeholder" in svc.log()
        svc.wait_log("because of ARI window")
        wait_sync(lambda: reloads.exists(), what="the reload after the first issuance")
        first = live_cert(dirs, "ari.test")
        orders = pebble.orders_in_log()

        # A window in the future: checked, nothing ordered, the renewal time lies in the window.
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        start, end = now + dt.timedelta(days=20), now + dt.timedelta(days=21)
        set_ari_window(pebble, first, start, end)
        result = run_acmebox("renew", "ari.test", "--state-dir", str(dirs.state))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ari.test: not due: next renewal "), result.stdout
        when = dt.datetime.strptime(result.stdout.split("next renewal ")[1][:20], "%Y-%m-%dT%H:%M:%SZ")
        assert start <= when.replace(tzinfo=dt.UTC) <= end
        assert f"ARI window [{start:%Y-%m-%dT%H:%M:%SZ}, {end:%Y-%m-%dT%H:%M:%SZ}]" in result.stdout
        assert pebble.orders_in_log() == orders

        status = run_acmebox("status", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
        assert status.returncode == 0
        assert "ari.test" in status.stdout and "Pebble Intermediate CA" in status.stdout
        assert "ARI window" in status.stdout

        # A window in the past: renewed at once, with `replaces`, and nginx told.
        set_ari_window(pebble, first, now - dt.timedelta(days=2), now - dt.timedelta(days=1))
        result = run_acmebox("renew", "ari.test", "--state-dir", str(dirs.state))
        assert result.returncode == 0, result.stderr + svc.log()
        assert result.stdout.startswith("ari.test: renewed: serial"), result.stdout
        second = live_cert(dirs, "ari.test")
        assert second.serial_number != first.serial_number
        cert_id = ari_cert_id(first)
        assert f"with replaces={cert_id} (the CA echoed {cert_id})" in svc.log()
        assert "refused replaces" not in svc.log()
        wait_sync(lambda: reloads.read_text().count("reload") == 2, what="the reload after the renewal")
        assert pebble.orders_in_log() == orders + 1

        # An operator rolls back to the first certificate, already replaced at the CA: the
        # CA refuses `replaces` for it, and the order goes again without.
        first_version = dirs.certs / "archive" / "ari.test" / "0002"
        CertStore(dirs.certs).save("ari.test", (first_version / "privkey.pem").read_bytes(),
                                   (first_version / "fullchain.pem").read_bytes(),
                                   json.loads((first_version / "meta.json").read_text()))
        assert live_cert(dirs, "ari.test") == first
        result = run_acmebox("renew", "--force", "ari.test", "--state-dir", str(dirs.state))
        assert result.returncode == 0, result.stderr + svc.log()
        assert f"the CA refused replaces={cert_id}" in svc.log()
        assert "alreadyReplaced" in svc.log()
        assert live_cert(dirs, "ari.test").serial_number not in (first.serial_number, second.serial_number)
        second = live_cert(dirs, "ari.test")
        wait_sync(lambda: reloads.read_text().count("reload") == 3, what="the reload after the third issuance")

        base = f"http://127.0.0.1:{pebble.http_port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.status == 200 and "ari.test: valid until" in r.read().decode()
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        values = {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in metrics.splitlines() if ln[:1] != "#")}
        assert (
            values['acmebox_certificate_expiry_timestamp_seconds{name="ari.test"}']
            == second.not_valid_after_utc.timestamp()
        )
        assert values['acmebox_orders_total{name="ari.test"}'] == 4  # first, replaces, refused, again
        assert values['acmebox_reloads_total{result="ok"}'] == 3
        for gauge in ("next_renewal", "last_success", "ari_window_start", "ari_window_end"):
            assert values[f'acmebox_certificate_{gauge}_timestamp_seconds{{name="ari.test"}}'] > 0
    finally:
        assert svc.stop() == 0


def shortlived_without_ari(pebble: Pebble, dirs: Dirs, name: str) -> Config:
    """An in-process service's settings: one shortlived certificate, ARI off."""
    return Config(
        certs=(CertSpec.build([name], profile="shortlived"),), email=None, directory=pebble.directory,
        ca_bundle=pebble.ca_bundle, certs_dir=dirs.certs, state_dir=dirs.state,
        listen=HostPort("127.0.0.1", pebble.http_port), ari=False,
    )


async def test_shortlived_renewed_by_lifetime_rule_without_ari(
    pebble: Pebble, dirs: Dirs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    clock = FakeClock()
    config = shortlived_without_ari(pebble, dirs, "short-life.test")
    ari_fetches = pebble.log().count("GET /draft-ietf-acme-ari-03/renewalInfo/")
    service = Service(config, clock)
    task = asyncio.create_task(service.run())
    try:
        await wait_for(lambda: is_real(dirs, "short-life.test"), what="the first certificate")
        first = live_cert(dirs, "short-life.test")
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert lifetime < dt.timedelta(days=7)
        await wait_for(lambda: "because of lifetime rule (half of the lifetime left)" in caplog.text)
        clock.advance(lifetime * 0.55)  # past the half-life
        await wait_for(lambda: live_cert(dirs, "short-life.test").serial_number != first.serial_number,
                       what="the renewal")
        assert "renewing now (lifetime rule (half of the lifetime left))" in caplog.text
        assert "without replaces" in caplog.text
        assert pebble.log().count("GET /draft-ietf-acme-ari-03/renewalInfo/") == ari_fetches
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_ca_outage_backs_off_survives_restart_and_recovers(
    tmp_path: Path, dirs: Dirs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    pebble = start_pebble(tmp_path / "pebble")
    clock = FakeClock()
    config = shortlived_without_ari(pebble, dirs, "outage.test")
    try:
        service = Service(config, clock)
        task = asyncio.create_task(service.run())
        await wait_for(lambda: is_real(dirs, "outage.test"), what="the first certificate")
        first = live_cert(dirs, "outage.test")
        stop_pebble(pebble)

        clock.advance(dt.timedelta(days=3.5))  # due by the lifetime rule, and the CA is down
        await wait_for(lambda: service.states.load("outage.test").failures == 1, what="the failed attempt")
        state = service.states.load("outage.test")
        assert state.next_attempt is not None
        assert dt.timedelta(seconds=54) <= state.next_attempt - clock.now() <= dt.timedelta(seconds=66)
        assert "cannot reach the CA" in (state.last_error or "")
        assert "next attempt" in caplog.text and "problem connection" in caplog.text
        assert live_cert(dirs, "outage.test") == first, "a failed renewal keeps the current certificate"
        assert not task.done(), "the service must not exit because the CA is down"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        # A restart (new process state, same disk) while the CA is still down, then the CA returns.
        caplog.clear()
        service = Service(config, clock)
        task = asyncio.create_task(service.run())
        await asyncio.sleep(0.5)
        pebble = start_pebble(tmp_path / "pebble", **pebble.env)  # same ports, a fresh CA
        await wait_for(lambda: "backoff after 1 failure(s)" in caplog.text, timeout=40, what="the kept backoff")
        await asyncio.sleep(0.5)
        assert pebble.orders_in_log() == 0, "the restart must not reset the backoff"
        assert service.states.load("outage.test").failures == 1

        clock.advance(dt.timedelta(minutes=2))  # the backoff is over
        await wait_for(lambda: live_cert(dirs, "outage.test").serial_number != first.serial_number,
                       what="the renewal after the outage")
        assert service.states.load("outage.test").failures == 0
        assert "registered ACME account" in caplog.text  # Pebble forgot every account at its restart
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        stop_pebble(pebble)


SERVER = """
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name nginx.test;
        ssl_certificate {certs}/live/nginx.test/fullchain.pem;
        ssl_certificate_key {certs}/live/nginx.test/privkey.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
"""


def test_nginx_starts_on_the_placeholder_and_is_reloaded_onto_the_real_certificate(tmp_path: Path, dirs: Dirs) -> None:
    pebble = start_pebble(tmp_path / "pebble")  # makes the listener CA; stopped until nginx is up
    stop_pebble(pebble)
    port = free_port()
    nginx = Nginx.serving(tmp_path / "nginx", SERVER.format(port=port, certs=dirs.certs))
    svc = ServiceProcess(
        ["run", "--domain", "nginx.test", *pebble_args(pebble, dirs), "--reload", "signal",
         "--reload-target", str(nginx.pid_file), "--reload-verify", f"127.0.0.1:{port}"],
        tmp_path / "service.log",
    )
    try:
        svc.wait_log("wrote a self-signed placeholder")
        svc.wait_log("cannot reach the CA")
        nginx.start()
        placeholder = live_cert(dirs, "nginx.test")
        assert served_serial("127.0.0.1", port, "nginx.test") == placeholder.serial_number

        pebble = start_pebble(tmp_path / "pebble", **pebble.env)
        svc.wait_log("now presents the new certificate(s)", timeout=60)
        real = live_cert(dirs, "nginx.test")
        assert real.serial_number != placeholder.serial_number
        assert served_serial("127.0.0.1", port, "nginx.test") == real.serial_number
        assert "SIGHUP sent to PID" in svc.log()
        health = run_acmebox("status", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
        assert "Pebble Intermediate CA" in health.stdout
    finally:
        assert svc.stop() == 0
        nginx.stop()
        stop_pebble(pebble)
