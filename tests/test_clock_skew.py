"""One clock threshold for ordering and installing: with a local clock slow by less than the
threshold and a CA that does not backdate (Pebble), the certificate ordered is installed; with
one slow by more, nothing is ordered. The local clock is moved with faketime around the
acmebox process; Pebble gets a listener certificate valid since yesterday, so TLS to it works
from the slow clock."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acmebox.issuance import MAX_CLOCK_SKEW
from tests.helpers import ROOT
from tests.helpers.pebble import Dirs, Pebble, start_pebble, stop_pebble
from tests.helpers.process import acmebox_env

pytestmark = pytest.mark.e2e  # Pebble, acmebox under faketime


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def backdated_listener(run_dir: Path) -> None:
    """The files pebble-test/start.sh would make, valid from a day ago (start.sh keeps them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acmebox clock-test listener CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(start + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(run_dir / "listener-ca.key", ca_key)
    _write_key(run_dir / "listener.key", key)
    (run_dir / "listener-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (run_dir / "listener.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pebble_from_yesterday(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    run_dir = tmp_path_factory.mktemp("pebble-clock")
    backdated_listener(run_dir)
    p = start_pebble(run_dir)
    yield p
    stop_pebble(p)


def run_with_clock(offset: str, pebble: Pebble, dirs: Dirs, name: str) -> subprocess.CompletedProcess[str]:
    faked = [shutil.which("faketime") or "faketime", "-f", offset, sys.executable, "-m", "acmebox", "run", "--once",
             "--domain", name, "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
             "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
             "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    return subprocess.run(faked, capture_output=True, text=True, env=acmebox_env(), cwd=ROOT, timeout=120)


def test_a_clock_slow_within_the_threshold_gets_its_certificate_installed(
    pebble_from_yesterday: Pebble, dirs: Dirs
) -> None:
    pebble, name = pebble_from_yesterday, "slow-clock.test"
    slow = MAX_CLOCK_SKEW / 2
    orders = pebble.orders_in_log()
    out = run_with_clock(f"-{int(slow.total_seconds())}s", pebble, dirs, name)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "set aside" not in out.stderr and "the local clock" not in out.stderr
    cert = x509.load_pem_x509_certificate((dirs.certs / "live" / name / "fullchain.pem").read_bytes())
    assert "Pebble" in cert.issuer.rfc4514_string(), "the CA's certificate is live, not the placeholder"
    assert cert.not_valid_before_utc > dt.datetime.now(dt.UTC) - slow, "Pebble does not backdate: the case at stake"
    assert pebble.orders_in_log() - orders == 1


def test_a_clock_slow_beyond_the_threshold_orders_nothing(pebble_from_yesterday: Pebble, dirs: Dirs) -> None:
    pebble, name = pebble_from_yesterday, "slower-clock.test"
    slow = MAX_CLOCK_SKEW * 1.5
    orders = pebble.orders_in_log()
    for _ in range(2):
        out = run_with_clock(f"-{int(slow.total_seconds())}s", pebble, dirs, name)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert "the local clock says" in out.stderr
    assert pebble.orders_in_log() == orders, "no order whose certificate would be set aside"
