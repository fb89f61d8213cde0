"""The whole stack on loopback, real parts: Pebble validates HTTP-01 through nginx's port-80
server (nginx -> acmebox), nginx serves the certificate acmebox got, the registry answers
behind it, and a renewal under a polling client fails no request."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Pebble, ServiceProcess, free_port, run_acmebox, start_pebble, stop_pebble
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from stack import acmebox_environment, nginx_host_path, prepare_nginx, start_registry

from acmebox.reload import served_serial

pytestmark = pytest.mark.e2e
DOMAIN = "registry.test"


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 that sends SNI and checks the certificate for DOMAIN."""

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=DOMAIN)  # type: ignore[attr-defined]


@dataclass
class Stack:
    pebble: Pebble
    http_port: int
    https_port: int
    certs: Path
    state: Path
    acmebox: ServiceProcess

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.pebble.get("/roots/0").decode())
        return ctx

    def https(self, method: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        conn = _SNIConnection("127.0.0.1", self.https_port, context=self.tls_context(), timeout=10)
        conn.request(method, path, headers={"Host": DOMAIN, **(headers or {})})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    def http(self, method: str, path: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        conn.request(method, path, headers={"Host": DOMAIN})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run = tmp_path_factory.mktemp("stack")
    http_port, https_port, acmebox_port, registry_port = (free_port() for _ in range(4))
    pebble = start_pebble(run / "pebble", PEBBLE_HTTP_PORT=str(http_port))  # validates via nginx
    stop_pebble(pebble)  # its CA bundle exists now; it comes back once nginx is up
    certs, state = run / "certs", run / "state"
    registry = start_registry(run, registry_port)
    nginx, _ = prepare_nginx(run / "nginx", {
        "REGISTRY_DOMAIN": DOMAIN,
        "NGINX_LISTEN_HTTP": f"127.0.0.1:{http_port}",
        "NGINX_LISTEN_HTTPS": f"127.0.0.1:{https_port}",
        "ACMEBOX_UPSTREAM": f"127.0.0.1:{acmebox_port}",
        "REGISTRY_UPSTREAM": f"127.0.0.1:{registry_port}",
        "CERTS_DIR": str(certs),
        "UI_ROOT": str(nginx_host_path("UI_ROOT")),
    })  # fmt: skip
    env = acmebox_environment({
        "DOCKER_REGISTRY_DOMAIN_NAME": DOMAIN,
        "DOCKER_REGISTRY_CERT_EMAIL_ADDRESS": "ops@example.com",
        "ACMEBOX_DIRECTORY": pebble.directory,
        "ACMEBOX_CA_BUNDLE": str(pebble.ca_bundle),
        "ACMEBOX_CERTS_DIR": str(certs),
        "ACMEBOX_STATE_DIR": str(state),
        "ACMEBOX_LISTEN": f"127.0.0.1:{acmebox_port}",
        "ACMEBOX_RELOAD": "signal",  # the compose file's docker reloader needs containers
        "ACMEBOX_RELOAD_TARGET": str(nginx.run / "nginx.pid"),
        "ACMEBOX_RELOAD_VERIFY": f"127.0.0.1:{https_port}",
    })  # fmt: skip
    acmebox = ServiceProcess(["run"], run / "acmebox.log", env={"PATH": os.environ["PATH"], **env})
    try:
        acmebox.wait_log("wrote a self-signed placeholder")
        nginx.start()  # on the placeholder
        pebble = start_pebble(run / "pebble", **pebble.env)
        acmebox.wait_log("now presents the new certificate(s)", timeout=60)
        yield Stack(pebble, http_port, https_port, certs, state, acmebox)
    finally:
        acmebox.stop()
        nginx.stop()
        registry.terminate()
        registry.wait(timeout=10)
        stop_pebble(pebble)


def test_https_presents_a_certificate_chaining_to_pebble(stack: Stack) -> None:
    ctx = stack.tls_context()
    with (
        socket.create_connection(("127.0.0.1", stack.https_port)) as sock,
        ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls,
    ):  # verifies chain and name against Pebble's root
        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    chain = x509.load_pem_x509_certificates((stack.certs / "live" / DOMAIN / "fullchain.pem").read_bytes())
    root = x509.load_pem_x509_certificate(stack.pebble.get("/roots/0"))
    PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(DOMAIN)).verify(leaf, chain[1:])
    assert leaf == chain[0]


def test_v2_through_nginx_with_the_registry_headers(stack: Stack) -> None:
    r = stack.https("GET", "/v2/")
    assert r.status == 200
    assert r.getheader("Docker-Distribution-Api-Version") == "registry/2.0"
    assert r.getheader("Strict-Transport-Security") == "max-age=63072000; includeSubDomains"
    catalog = stack.https("GET", "/v2/_catalog")
    assert catalog.status == 200


def test_hsts_on_the_page_too(stack: Stack) -> None:
    r = stack.https("GET", "/")
    assert r.status == 200
    assert r.getheader("Strict-Transport-Security") == "max-age=63072000; includeSubDomains"


def test_plain_http_redirects_except_the_challenge(stack: Stack) -> None:
    for method, path in (("GET", "/"), ("GET", "/v2/_catalog"), ("POST", "/v2/x/blobs/uploads/")):
        r = stack.http(method, path)
        assert r.status == 308, (method, path)
        assert r.getheader("Location") == f"https://{DOMAIN}{path}"
    r = stack.http("GET", "/.well-known/acme-challenge/unknownToken123")
    assert r.status == 404 and r.getheader("Location") is None  # answered by acmebox, not redirected


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


def test_renewal_while_a_client_polls_fails_no_request(stack: Stack) -> None:
    before = served_serial("127.0.0.1", stack.https_port, DOMAIN)
    verified = stack.acmebox.log().count("now presents the new certificate(s)")
    results: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                r = stack.https("GET", "/v2/")
                results.append("ok" if r.status == 200 else f"HTTP {r.status}")
            except (OSError, ssl.SSLError, http.client.HTTPException) as e:
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


def test_nginx_config_is_valid_for_nginx_t(stack: Stack) -> None:
    out = subprocess.run(["nginx", "-t", "-c", str(stack.certs.parent / "nginx" / "nginx.conf"),
                          "-p", str(stack.certs.parent / "nginx")], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
