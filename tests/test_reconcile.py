"""What is served follows what is configured: a certificate from another CA directory is
replaced at once, and no validation is asked for before the front door answers the challenge
(the self-check), with real Pebbles and Debian's nginx."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509

from tests.helpers.nginx import Nginx
from tests.helpers.pebble import Dirs, Pebble, pebble_args, start_pebble, stop_pebble
from tests.helpers.process import ServiceProcess, free_port, healthz, run_acmebox, wait_sync

pytestmark = pytest.mark.e2e  # Pebble and nginx


def live_chain(dirs: Dirs, name: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((dirs.certs / "live" / name / "fullchain.pem").read_bytes())


def issued_by(chain: list[x509.Certificate], pebble: Pebble) -> bool:
    """Whether `chain` ends just below this Pebble's root (each Pebble makes its own)."""
    root = pebble.root()
    return chain[-1].issuer == root.subject and chain[-1].verify_directly_issued_by(root) is None


def test_staging_then_production_replaces_the_certificate_at_once(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    """The README says: try --staging first. The staging certificate must not stay ~60 days."""
    name = "switch.test"
    assert run_acmebox("run", "--once", "--domain", name, *pebble_args(pebble, dirs)).returncode == 0
    assert issued_by(live_chain(dirs, name), pebble)
    production = start_pebble(tmp_path / "production")
    try:
        out = run_acmebox("run", "--once", "--domain", name, *pebble_args(production, dirs))
        assert out.returncode == 0, out.stderr
        assert "issued by another CA directory" in out.stderr
        assert production.orders_in_log() == 1
        assert issued_by(live_chain(dirs, name), production)
        again = run_acmebox("run", "--once", "--domain", name, *pebble_args(production, dirs))
        assert again.returncode == 0 and production.orders_in_log() == 1, "then it is reused"
    finally:
        stop_pebble(production)


FRONT = """
    server {{
        listen 127.0.0.1:{port};
        location /.well-known/acme-challenge/ {{ proxy_pass http://127.0.0.1:{upstream}; }}
        location / {{ return 404; }}
    }}
"""


def test_no_validation_before_the_front_door_answers(tmp_path: Path, dirs: Dirs) -> None:
    """acmebox starts before nginx listens (as in compose). The CA validates through nginx's
    port; acmebox waits for its self-check through that port before asking, so Pebble sees
    one order and no failed validation."""
    front, upstream = free_port(), free_port()
    pebble = start_pebble(tmp_path / "pebble", PEBBLE_HTTP_PORT=str(front))
    nginx = Nginx.serving(tmp_path / "nginx", FRONT.format(port=front, upstream=upstream))
    args = pebble_args(pebble, dirs)
    args[args.index("--listen") + 1] = f"127.0.0.1:{upstream}"
    svc = ServiceProcess(["run", "--domain", "front.test", *args, "--no-ari",
                          "--self-check-via", f"127.0.0.1:{front}"], tmp_path / "service.log")
    try:
        svc.wait_log("not yet answered")
        assert pebble.orders_in_log() == 1
        assert "/chalZ/" not in pebble.log(), "the challenge must not be answered before nginx is up"
        nginx.start()
        svc.wait_log("certificate stored", timeout=60)
        assert "self-check passed" in svc.log()
        assert "renewal failed" not in svc.log()
        assert pebble.orders_in_log() == 1
        assert "invalid" not in pebble.log().lower().replace("invalid_", "")
    finally:
        svc.stop()
        nginx.stop()
        stop_pebble(pebble)


TLS = """
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs}/live/served.test/fullchain.pem;
        ssl_certificate_key {certs}/live/served.test/privkey.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
"""


def test_what_nginx_serves_is_reconciled_with_the_live_certificate(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    """A reload target that is wrong at first (the PID file appears later), then a restart after
    a renewal nginx was never told about: each time acmebox sees the served serial differ from
    the live one, says so in /healthz, and reloads until nginx serves the live certificate."""
    from acmebox.reload import served_serial
    port = free_port()
    nginx = Nginx.serving(tmp_path / "nginx", TLS.format(port=port, certs=dirs.certs))
    later = tmp_path / "nginx" / "later.pid"
    base = ["run", "--domain", "served.test", *pebble_args(pebble, dirs), "--no-ari", "--reload", "signal",
            "--reload-verify", f"127.0.0.1:{port}"]

    def serial() -> int:
        return live_chain(dirs, "served.test")[0].serial_number

    def served() -> int:
        return served_serial("127.0.0.1", port, "served.test")

    first = ServiceProcess([*base, "--reload-target", str(later)], tmp_path / "first.log")
    try:
        first.wait_log("wrote a self-signed placeholder")
        nginx.start()
        first.wait_log("certificate stored", timeout=60)
        first.wait_log("reload failed")
        status, body = healthz(pebble.http_port)
        assert status == 503 and f"serves serial {served():x}, not {serial():x}" in body, body
        shutil.copy(nginx.pid_file, later)  # the target becomes right while acmebox runs
        wait_sync(lambda: served() == serial(), timeout=60, what="nginx on the live certificate")
        wait_sync(lambda: healthz(pebble.http_port)[0] == 200, timeout=30, what="/healthz 200")
        assert "giving up" not in first.log()
    finally:
        first.stop()

    # A renewal nginx never hears of (as if acmebox stopped between the save and the reload) ...
    def renewal_nginx_never_hears_of() -> None:
        out = run_acmebox("run", "--once", "--force-renew", "--domain", "served.test", *pebble_args(pebble, dirs),
                          "--no-ari")
        assert out.returncode == 0, out.stderr
        assert served() != serial()

    renewal_nginx_never_hears_of()
    # ... is put right by a `run --once` with nothing due, which looks before it trusts ...
    once = run_acmebox(*base[:1], "--once", *base[1:], "--reload-target", str(nginx.pid_file))
    assert once.returncode == 0 and "nothing ordered" in once.stderr, once.stderr
    assert served() == serial()
    renewal_nginx_never_hears_of()
    # ... is put right by the next start, which compares instead of trusting.
    second = ServiceProcess([*base, "--reload-target", str(nginx.pid_file)], tmp_path / "second.log")
    try:
        wait_sync(lambda: served() == serial(), timeout=60, what="nginx reloaded at start")
        assert "reloaded: SIGHUP sent" in second.log()
    finally:
        second.stop()
        nginx.stop()
