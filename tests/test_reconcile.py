"""What is served follows what is configured: a certificate from another CA directory is
replaced at once, and no validation is asked for before the front door answers the challenge
(the self-check), with real Pebbles and Debian's nginx."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import Dirs, Pebble, ServiceProcess, free_port, pebble_args, run_acmebox, start_pebble, stop_pebble
from cryptography import x509


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


NGINX_CONF = """
worker_processes 1;
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /.well-known/acme-challenge/ {{ proxy_pass http://127.0.0.1:{upstream}; }}
        location / {{ return 404; }}
    }}
}}
"""


def test_no_validation_before_the_front_door_answers(tmp_path: Path, dirs: Dirs) -> None:
    """acmebox starts before nginx listens (as in compose). The CA validates through nginx's
    port; acmebox waits for its self-check through that port before asking, so Pebble sees
    one order and no failed validation."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    front = free_port()
    pebble = start_pebble(tmp_path / "pebble", PEBBLE_HTTP_PORT=str(front))
    run = tmp_path / "nginx"
    run.mkdir()
    upstream = free_port()
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, port=front, upstream=upstream))
    args = pebble_args(pebble, dirs)
    args[args.index("--listen") + 1] = f"127.0.0.1:{upstream}"
    svc = ServiceProcess(["run", "--domain", "front.test", *args, "--no-ari",
                          "--self-check-via", f"127.0.0.1:{front}"], tmp_path / "service.log")  # fmt: skip
    try:
        svc.wait_log("not yet answered")
        assert pebble.orders_in_log() == 1
        assert "/chalZ/" not in pebble.log(), "the challenge must not be answered before nginx is up"
        subprocess.run([nginx, "-c", str(conf), "-p", str(run)], check=True, capture_output=True)
        svc.wait_log("certificate stored", timeout=60)
        assert "self-check passed" in svc.log()
        assert "renewal failed" not in svc.log()
        assert pebble.orders_in_log() == 1
        assert "invalid" not in pebble.log().lower().replace("invalid_", "")
    finally:
        svc.stop()
        if (run / "nginx.pid").exists():
            subprocess.run([nginx, "-c", str(conf), "-p", str(run), "-s", "stop"], capture_output=True)
        stop_pebble(pebble)
