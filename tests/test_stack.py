"""The whole stack on loopback, real parts: Pebble validates HTTP-01 through nginx's port-80
server (nginx -> acmebox), nginx serves the certificate acmebox got, the registry answers
behind it, and a renewal under a polling client fails no request."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from acmebox.reload import served_serial
from tests.helpers.process import run_acmebox
from tests.helpers.stack import DOMAIN, Stack, running_stack

pytestmark = pytest.mark.e2e
HSTS = "max-age=63072000; includeSubDomains"


def test_https_presents_a_certificate_chaining_to_pebble(stack: Stack) -> None:
    with (
        socket.create_connection(("127.0.0.1", stack.https_port)) as sock,
        stack.tls_context().wrap_socket(sock, server_hostname=DOMAIN) as tls,
    ):  # verifies the chain and the name against Pebble's root
        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    chain = x509.load_pem_x509_certificates((stack.certs / "live" / DOMAIN / "fullchain.pem").read_bytes())
    root = x509.load_pem_x509_certificate(stack.root_pem().encode())
    PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(DOMAIN)).verify(leaf, chain[1:])
    assert leaf == chain[0]
    # nginx got there as in compose: acmebox wrote a generation, the watcher reloaded nginx
    assert "written to" in stack.acmebox.log() and "reload-generation" in stack.acmebox.log()
    assert ": nginx reloaded" in (stack.run / "nginx" / "watcher.log").read_text()


def test_v2_through_nginx_with_the_registry_headers(each_stack: Stack) -> None:
    stack = each_stack
    r = stack.https("GET", "/v2/")
    assert r.status == 401  # the registry's token challenge, passed through
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="https://{stack.host}/auth/token"')
    assert r.headers["Strict-Transport-Security"] == HSTS
    token = stack.token("registry:catalog:*")
    r = stack.https("GET", "/v2/_catalog", token=token)
    assert r.status == 200 and "repositories" in r.json()
    assert r.headers["Strict-Transport-Security"] == HSTS


def test_hsts_on_the_page_and_the_token_service(stack: Stack) -> None:
    for path in ("/", "/auth/token?service=registry"):
        r = stack.https("GET", path)
        assert r.status == 200, path
        assert r.headers["Strict-Transport-Security"] == HSTS, path


def test_plain_http_redirects_except_the_challenge(stack: Stack) -> None:
    for method, path in (("GET", "/"), ("GET", "/v2/_catalog"), ("POST", "/v2/x/blobs/uploads/")):
        r = stack.http(method, path)
        assert r.status == 308, (method, path)
        assert r.headers["Location"] == f"https://{DOMAIN}{path}"
    r = stack.http("GET", "/.well-known/acme-challenge/unknownToken123")
    assert r.status == 404 and "Location" not in r.headers
    assert r.body == b"no such challenge\n"  # acmebox's answer, through nginx


def test_tls_1_1_is_refused(stack: Stack) -> None:
    def handshake(version: ssl.TLSVersion) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        with (
            socket.create_connection(("127.0.0.1", stack.https_port)) as sock,
            ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls,
        ):
            return str(tls.version())

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"  # the same client gets in with 1.2
    with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):  # the server said no
        handshake(ssl.TLSVersion.TLSv1_1)


def test_http2_is_offered_on_443(stack: Stack) -> None:
    """The template's `http2 on;` (rendered in the host nginx's spelling, stack.py): ALPN picks h2."""
    ctx = stack.tls_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", stack.https_port)) as sock,
        ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
    ctx = stack.tls_context()
    ctx.set_alpn_protocols(["http/1.1"])  # a registry client that speaks 1.1 only still gets it
    with (
        socket.create_connection(("127.0.0.1", stack.https_port)) as sock,
        ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_renewal_while_a_client_polls_fails_no_request(stack: Stack) -> None:
    before = served_serial("127.0.0.1", stack.https_port, DOMAIN)
    verified = stack.acmebox.log().count("now presents the new certificate(s)")
    token = stack.token("registry:catalog:*")
    results: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:  # a new verified TLS connection every time
                r = stack.https("GET", "/v2/_catalog", token=token)
                results.append("ok" if r.status == 200 else f"HTTP {r.status}")
            except (OSError, ssl.SSLError) as e:
                results.append(f"error {e!r}")
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.5)
        renew = run_acmebox("renew", "--force", DOMAIN, "--state-dir", str(stack.state))
        assert renew.returncode == 0, renew.stderr
        assert "renewed: serial" in renew.stdout
        stack.acmebox.wait_log("now presents the new certificate(s)", count=verified + 1)
        time.sleep(0.5)
    finally:
        stop.set()
        poller.join()
    failures = [r for r in results if r != "ok"]
    assert not failures, failures[:5]
    assert len(results) > 20
    after = served_serial("127.0.0.1", stack.https_port, DOMAIN)
    live = x509.load_pem_x509_certificate((stack.certs / "live" / DOMAIN / "cert.pem").read_bytes())
    assert after == live.serial_number != before


def test_rendered_config_passes_nginx_t(stack: Stack) -> None:
    run = stack.run / "nginx"
    out = subprocess.run(["nginx", "-t", "-c", str(run / "nginx.conf"), "-p", str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_redirect_uses_the_registry_name_whatever_the_host_header(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=10)
    try:
        conn.request("GET", "/v2/", headers={"Host": "attacker.example"})
        r = conn.getresponse()
        r.read()
    finally:
        conn.close()
    assert r.status == 308  # port 80's default server, even for a name it does not serve
    assert r.headers["Location"] == f"https://{DOMAIN}/v2/"


def test_issuance_through_a_front_that_redirects_port_80_to_https(tmp_path: Path) -> None:
    """Pebble's VA asks a front server, which 301s to nginx's 443 server; that server answers
    the challenge from acmebox too, so the certificate is issued."""
    with running_stack(tmp_path, front_redirect=True) as s:
        token_paths = re.findall(r'"GET (/\.well-known/acme-challenge/\S+) HTTP/1\.1" 301',
                                 (s.run / "nginx" / "front.log").read_text())
        assert token_paths, "the VA never came through the front"
        served = (s.run / "nginx" / "access.log").read_text()
        for path in token_paths:  # followed to the 443 server (the VA never dials port 80 here)
            assert f'"GET {path} HTTP/1.1" 200' in served, path
        leaf = x509.load_pem_x509_certificate((s.certs / "live" / DOMAIN / "cert.pem").read_bytes())
        assert served_serial("127.0.0.1", s.https_port, DOMAIN) == leaf.serial_number
