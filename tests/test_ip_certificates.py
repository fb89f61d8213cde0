"""IP address certificates (RFC 8738): canonical forms and the public-CA rule (acmebox.names),
the `ip` identifier and the default profile (acmebox.identifiers), and end to end against a
real Pebble over 127.0.0.1 and ::1: the CA validates the address through the repository's own
nginx template (port 80 server), issues a `shortlived` certificate, nginx presents it to a
client that sends no SNI (addresses have none), and a renewal comes by ARI."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from acmebox import identifiers, placeholder
from acmebox.ari import ari_cert_id
from acmebox.config import LE_PRODUCTION, LE_STAGING, CertSpec, Config, HostPort, ReloadSpec
from acmebox.errors import ConfigError
from acmebox.issuance import profile_for
from acmebox.names import canonical_name, canonical_names, check_addresses
from acmebox.policies import MIN_SPACING
from acmebox.service import Service
from acmebox.store import cert_names
from tests.helpers import ROOT
from tests.helpers.clock import FakeClock
from tests.helpers.pebble import Dirs, Pebble, pebble_args, start_pebble, stop_pebble
from tests.helpers.pebble_ari import orders_created, window_in_the_past
from tests.helpers.process import free_port, run_acmebox, wait_for
from tests.helpers.stack import nginx_host_path, prepare_nginx

# -- names and identifiers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("127.0.0.1", "127.0.0.1"), (" 8.8.8.8 ", "8.8.8.8"), ("::1", "::1"), ("[::1]", "::1"),
     ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("[2606:4700:4700:0::1111]", "2606:4700:4700::1111"),
     ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1")],
)
def test_addresses_have_one_canonical_form(raw: str, canonical: str) -> None:
    assert canonical_name(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "message"),
    [("fe80::1%eth0", "with a zone"), ("::ffff:8.8.8.8", "IPv4-mapped IPv6 address; give the IPv4 address 8.8.8.8"),
     ("010.0.0.1", "without leading zeros"), ("256.1.1.1", "not an IPv4 address"),
     ("1.2.3", "the top-level label is numeric")],
)
def test_addresses_written_ambiguously_are_refused(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        canonical_name(raw)


def test_the_same_address_written_twice_is_a_duplicate() -> None:
    with pytest.raises(ConfigError, match="duplicate domain name '2001:db8::1'"):
        canonical_names(["2001:db8::1", "[2001:DB8::0:1]"])


PRIVATE = ["10.0.0.1", "172.16.5.4", "192.168.1.1", "127.0.0.1", "169.254.1.1", "100.64.0.1", "192.0.2.1",
           "198.51.100.7", "240.0.0.1", "0.0.0.0", "::1", "::", "fe80::1", "fc00::1", "2001:db8::1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize("directory", [LE_PRODUCTION, LE_STAGING, None])
def test_a_public_ca_gets_public_addresses_only(directory: str | None) -> None:
    for addr in PRIVATE:
        with pytest.raises(ConfigError, match=f"'{addr}' is an IP address in a private or reserved range"):
            check_addresses(["registry.example.com", addr], directory)
    check_addresses(["registry.example.com", *PUBLIC], directory)


def test_an_in_house_ca_may_certify_private_addresses() -> None:
    check_addresses(PRIVATE, "https://127.0.0.1:14000/dir")
    check_addresses(PRIVATE, "https://ca.internal.example/acme/directory")
    config = Config(certs=(CertSpec.build(["10.1.2.3"]),), email=None, directory="https://ca.internal.example/dir")
    assert config.certs[0].names == ("10.1.2.3",)
    with pytest.raises(ConfigError, match="private or reserved"):
        Config(certs=(CertSpec.build(["10.1.2.3"]),), email=None, directory=LE_STAGING)


def test_run_refuses_a_private_address_against_lets_encrypt_before_touching_anything(tmp_path: Path) -> None:
    result = run_acmebox("run", "--once", "--domain", "[fd00::7]", "--certs-dir", str(tmp_path / "c"),
                         "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acmebox: error: 'fd00::7' is an IP address in a private")
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists()


def test_names_script_for_the_start_script() -> None:
    def names(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "acmebox.names", *args], capture_output=True, text=True,
                              cwd=ROOT)

    assert names("--public-ca", "[2606:4700:4700:0::1111]").stdout == "2606:4700:4700::1111\n"
    refused = names("--public-ca", "192.168.0.10")
    assert refused.returncode == 2 and "private or reserved range" in refused.stderr
    assert names("192.168.0.10").stdout == "192.168.0.10\n"  # the check needs --public-ca


def test_start_script_writes_the_canonical_address(tmp_path: Path) -> None:
    compose = tmp_path / "compose"
    shutil.copytree(ROOT / "compose", compose, ignore=shutil.ignore_patterns(".env", "data"))
    script = compose / "start-registry.sh"
    # The test virtualenv's python3 first: the script asks acmebox.names for the canonical form.
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", str(script), "--prepare-only", "[2606:4700:4700:0::1111]", "ops@example.com"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "DOCKER_REGISTRY_DOMAIN_NAME=2606:4700:4700::1111\n" in (compose / ".env").read_text()
    (compose / ".env").unlink()
    out = subprocess.run(["bash", str(script), "--prepare-only", "10.0.0.5", "ops@example.com"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "bad DOMAIN '10.0.0.5'" in out.stderr and "private or reserved" in out.stderr
    assert not (compose / ".env").exists()


def test_identifiers_and_default_profile() -> None:
    assert identifiers.acme_identifier("::1").typ.name == "ip"
    assert identifiers.acme_identifier("a.example").typ.name == "dns"
    assert identifiers.csr_entries(["a.example", "8.8.8.8", "::1"]) == (
        ["a.example"], [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("::1")])
    assert identifiers.url_host("::1") == "[::1]" and identifiers.url_host("8.8.8.8") == "8.8.8.8"
    offered = {"classic": "", "shortlived": ""}
    assert profile_for(["8.8.8.8"], None, offered) == "shortlived"
    assert profile_for(["a.example", "8.8.8.8"], None, offered) == "shortlived"
    assert profile_for(["8.8.8.8"], "classic", offered) == "classic"  # configured wins
    assert profile_for(["a.example"], None, offered) is None
    assert profile_for(["8.8.8.8"], None, {"classic": ""}) is None  # not offered: the CA decides
    assert profile_for(["8.8.8.8"], None, None) is None


def test_placeholder_for_an_address_names_it_as_the_store_reads_it() -> None:
    _, pem = placeholder.make(("2001:db8::1", "a.example"), "ec256", dt.datetime.now(dt.UTC))
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("2001:db8::1")]
    assert sorted(cert_names(cert)) == ["2001:db8::1", "a.example"]


# -- against Pebble ------------------------------------------------------------------------------


def live(dirs: Dirs, name: str) -> x509.Certificate | None:
    meta = dirs.certs / "live" / name / "meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("placeholder") is not False:
        return None
    return x509.load_pem_x509_certificate((dirs.certs / "live" / name / "cert.pem").read_bytes())


def presented_without_sni(addr: str, port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((addr, port), timeout=5) as sock, ctx.wrap_socket(sock) as tls:  # no SNI
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def redirect_of(url: str) -> tuple[int, str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(url, timeout=5)
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Location"]
    raise AssertionError(f"{url}: no redirect")


@pytest.mark.e2e
@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def test_address_certificate_through_the_nginx_template_renewed_by_ari(
    addr: str, tmp_path: Path, dirs: Dirs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    pebble = start_pebble(tmp_path / "pebble")  # offers `default` (90 days) and `shortlived`
    host = identifiers.url_host(addr)
    https, upstream = free_port(), free_port()
    nginx, _ = prepare_nginx(tmp_path / "nginx", {
        "REGISTRY_DOMAIN": addr,
        "NGINX_LISTEN_HTTP": f"{host}:{pebble.http_port}",  # where Pebble's VA dials the address
        "NGINX_LISTEN_HTTPS": f"{host}:{https}",
        "ACMEBOX_UPSTREAM": f"127.0.0.1:{upstream}",
        "REGISTRY_UPSTREAM": f"127.0.0.1:{free_port()}",
        "CERTS_DIR": str(dirs.certs),
        "UI_ROOT": str(nginx_host_path("UI_ROOT")),
        "ACMEBOX_RELOAD_FILE": str(dirs.certs / "reload-generation"),
    })
    clock = FakeClock()
    config = Config(
        certs=(CertSpec.build([addr]),), email=None, directory=pebble.directory, ca_bundle=pebble.ca_bundle,
        certs_dir=dirs.certs, state_dir=dirs.state, listen=HostPort("127.0.0.1", upstream),
        self_check_via=HostPort(addr, pebble.http_port),  # the port-80 server, with Host: the address
        reload=ReloadSpec("signal", str(nginx.run / "nginx.pid")), reload_verify=HostPort(addr, https),
    )
    service = Service(config, clock)
    service.store.prepare()
    for m in service.maintainers.values():
        m.write_placeholder()
    nginx.start()
    task = asyncio.create_task(service.run())
    try:
        await wait_for(lambda: live(dirs, addr) is not None, what="the address certificate")
        first = live(dirs, addr)
        assert first is not None
        san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(addr)]
        assert san.get_values_for_type(x509.DNSName) == []
        meta = json.loads((dirs.certs / "live" / addr / "meta.json").read_text())
        assert meta["profile"] == "shortlived"  # not configured: the default for addresses
        assert first.not_valid_after_utc - first.not_valid_before_utc <= dt.timedelta(days=7)
        assert f'Identifier:acme.Identifier{{Type:"ip", Value:"{addr}"}}' in pebble.log()
        assert "self-check" not in caplog.text  # passed at once through the template's port-80 server
        await wait_for(lambda: service.reloader.matches(addr), what="nginx presenting it")
        assert presented_without_sni(addr, https).serial_number == first.serial_number
        assert redirect_of(f"http://{host}:{pebble.http_port}/v2/") == (308, f"https://{host}/v2/")

        # Renewed by ARI: the CA pulls the window into the past, the service looks again.
        clock.advance(MIN_SPACING + dt.timedelta(minutes=1))
        window_in_the_past(pebble, first)
        service.maintainers[addr].request(None, force=False)
        await wait_for(lambda: (c := live(dirs, addr)) is not None and c.serial_number != first.serial_number,
                       what="the renewal")
        second = live(dirs, addr)
        assert second is not None
        assert f"with replaces={ari_cert_id(first)}" in caplog.text
        await wait_for(lambda: presented_without_sni(addr, https).serial_number == second.serial_number,
                       what="nginx presenting the renewed certificate")
        assert orders_created(pebble) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        nginx.stop()
        stop_pebble(pebble)


@pytest.mark.e2e
def test_run_once_with_an_ipv6_address_as_typed(pebble: Pebble, dirs: Dirs) -> None:
    """`run --domain [0:0::1]`: the certificate is for ::1 and lives in live/::1/."""
    listen = f"[::1]:{pebble.http_port}"  # Pebble's VA dials the address itself
    result = run_acmebox("run", "--once", "--domain", "[0:0::1]", *pebble_args(pebble, dirs), "--listen", listen,
                         "--self-check-via", listen)
    assert result.returncode == 0, result.stderr
    cert = live(dirs, "::1")
    assert cert is not None
    assert cert_names(cert) == ["::1"]
    assert json.loads((dirs.certs / "live" / "::1" / "meta.json").read_text())["profile"] == "shortlived"
    status = run_acmebox("status", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
    assert status.returncode == 0 and status.stdout.splitlines()[1].startswith("::1 "), status.stdout
