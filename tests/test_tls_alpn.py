"""TLS-ALPN-01 (RFC 8737), opt-in with --tls-alpn-listen, with port 80 closed: nothing listens
on the port Pebble's VA would dial for HTTP-01. Pebble validates through a real nginx whose
stream module (nginx/tls-alpn/stream.conf.template) hands `acme-tls/1` connections on "443" to
acmebox and everything else, with a PROXY line, to the repository's own HTTPS server template,
which keeps the client's address (tls-alpn/http-realip.conf.template)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from acmebox import tlsalpn
from acmebox.config import CertSpec, Config, HostPort, ReloadSpec
from acmebox.policies import MIN_SPACING
from acmebox.reload import served_serial
from acmebox.service import Service
from tests.helpers import ROOT
from tests.helpers.clock import FakeClock
from tests.helpers.pebble import Dirs, Pebble, pebble_args, start_pebble, stop_pebble
from tests.helpers.pebble_ari import orders_created
from tests.helpers.process import free_port, run_acmebox, wait_for
from tests.helpers.stack import nginx_host_path, prepare_nginx, render_templates

NAME = "alpn.test"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
MAIN = """
load_module {module};
worker_processes 1;
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{ worker_connections 256; }}
include {run}/tls-alpn/stream.conf;
http {{
    include /etc/nginx/mime.types;
    log_format clients '$remote_addr $request_uri';
    access_log {run}/access.log clients;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    include {run}/tls-alpn/http-realip.conf;
    include {run}/conf.d/*.conf;
}}
"""


def test_the_validation_certificate_carries_the_digest_in_a_critical_extension() -> None:
    cert_pem, _ = tlsalpn.validation_certificate("a.example", "token.thumbprint")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(tlsalpn.ACME_IDENTIFIER)
    assert ext.critical
    assert ext.value.public_bytes() == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example"]


def closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def live(dirs: Dirs) -> x509.Certificate | None:
    meta = dirs.certs / "live" / NAME / "meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("placeholder") is not False:
        return None
    return x509.load_pem_x509_certificate((dirs.certs / "live" / NAME / "cert.pem").read_bytes())


def https_get_from(source: str, port: int, path: str) -> bytes:
    """An ordinary HTTPS request (ALPN http/1.1) through the stream server, from `source`."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock,
        ctx.wrap_socket(sock, server_hostname=NAME) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := tls.recv(4096):
            out += chunk
    return out


@pytest.mark.e2e
async def test_tls_alpn_with_port_80_closed_through_nginx_stream(tmp_path: Path, dirs: Dirs) -> None:
    if not STREAM_MODULE.exists():
        pytest.fail("nginx's stream module is not installed: run pebble-test/setup.sh (libnginx-mod-stream)")
    va_http, tls_port = free_port(), free_port()
    pebble = start_pebble(tmp_path / "pebble", PEBBLE_HTTP_PORT=str(va_http), PEBBLE_TLS_PORT=str(tls_port),
                          PEBBLE_AUTHZREUSE="0")
    https_internal, http_port, acme_port, alpn_port = (free_port() for _ in range(4))
    run = tmp_path / "nginx"
    nginx, _ = prepare_nginx(run, {
        "REGISTRY_DOMAIN": NAME,
        "NGINX_LISTEN_HTTP": f"127.0.0.1:{http_port}",  # not where the CA would look: port 80 is "closed"
        "NGINX_LISTEN_HTTPS": f"127.0.0.1:{https_internal} proxy_protocol",
        "ACMEBOX_UPSTREAM": f"127.0.0.1:{acme_port}",
        "REGISTRY_UPSTREAM": f"127.0.0.1:{free_port()}",
        "CERTS_DIR": str(dirs.certs),
        "UI_ROOT": str(nginx_host_path("UI_ROOT")),
        "ACMEBOX_RELOAD_FILE": str(dirs.certs / "reload-generation"),
    })
    render_templates(ROOT / "nginx" / "tls-alpn", run / "tls-alpn", {
        "NGINX_LISTEN_TLS": f"127.0.0.1:{tls_port}",
        "ACMEBOX_TLS_ALPN_UPSTREAM": f"127.0.0.1:{alpn_port}",
        "NGINX_HTTPS_INTERNAL": f"127.0.0.1:{https_internal}",
        "NGINX_STREAM_LOG": str(run / "stream.log"),
        "NGINX_STREAM_FROM": "127.0.0.1",
    })
    nginx.conf.write_text(MAIN.format(module=STREAM_MODULE, run=run))
    clock = FakeClock()
    config = Config(
        certs=(CertSpec.build([NAME]),), email=None, directory=pebble.directory, ca_bundle=pebble.ca_bundle,
        certs_dir=dirs.certs, state_dir=dirs.state, listen=HostPort("127.0.0.1", acme_port),
        tls_alpn_listen=HostPort("127.0.0.1", alpn_port),
        reload=ReloadSpec("signal", str(run / "nginx.pid")), reload_verify=HostPort("127.0.0.1", tls_port),
    )
    service = Service(config, clock)
    service.store.prepare()
    for m in service.maintainers.values():
        m.write_placeholder()
    nginx.start()
    task = asyncio.create_task(service.run())
    try:
        await wait_for(lambda: live(dirs) is not None, timeout=60, what="the certificate")
        first = live(dirs)
        assert first is not None
        await wait_for(lambda: service.reloader.matches(NAME), what="nginx presenting it through the stream server")
        assert served_serial("127.0.0.1", tls_port, NAME) == first.serial_number

        # Port 80 played no part: nothing listens where the CA would have fetched HTTP-01.
        assert closed(va_http)
        assert "Attempting to validate w/ HTTP" not in pebble.log()
        assert pebble.log().count("set VALID by completed challenge") == 1
        routes = (run / "stream.log").read_text().splitlines()
        to_acmebox = [r for r in routes if r.endswith(" acmebox_tls_alpn")]
        assert to_acmebox and all(f'"{NAME}" "acme-tls/1"' in r for r in to_acmebox), routes
        assert any(r.endswith(" registry_https") for r in routes), "the reload check went to the HTTPS server"

        # Everything else reaches the HTTPS server, which sees the client's own address.
        answer = https_get_from("127.0.0.5", tls_port, "/v2/")
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        assert "127.0.0.5 /v2/" in (run / "access.log").read_text()

        # A renewal validates over TLS-ALPN-01 again (no authorization reuse at this CA).
        clock.advance(MIN_SPACING + dt.timedelta(minutes=1))
        service.maintainers[NAME].request("renew-1", force=True)
        await wait_for(lambda: (c := live(dirs)) is not None and c.serial_number != first.serial_number,
                       timeout=60, what="the renewal")
        assert pebble.log().count("set VALID by completed challenge") == 2
        assert orders_created(pebble) == 2
        assert service.tls_alpn is not None and len(service.tls_alpn) == 0, "validation certificates are withdrawn"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        nginx.stop()
        stop_pebble(pebble)


@pytest.mark.e2e
def test_check_does_not_demand_port_80_with_tls_alpn(pebble: Pebble, dirs: Dirs) -> None:
    result = run_acmebox("check", "--json", "--domain", NAME, *pebble_args(pebble, dirs),
                         "--tls-alpn-listen", f"127.0.0.1:{free_port()}")
    findings = {f["check"]: f for f in json.loads(result.stdout)}
    assert findings["front door"]["ok"] is True
    assert "TLS-ALPN-01" in findings["front door"]["detail"]
