"""Reading and checking what acmebox wrote to a certs volume (certbot layout:
live/<name>/{fullchain,cert,chain,privkey}.pem)."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from tests.helpers.pebble import Dirs, Pebble


def live_serial(certs: Path, name: str) -> int:
    """The serial number of the leaf in live/`name`/fullchain.pem under `certs`."""
    return x509.load_pem_x509_certificates((certs / "live" / name / "fullchain.pem").read_bytes())[0].serial_number


def live(dirs: Dirs, name: str) -> Path:
    return dirs.certs / "live" / name


def verify_live(pebble: Pebble, dirs: Dirs, names: list[str]) -> x509.Certificate:
    """Chain to Pebble's root, SANs, key match, file modes: everything a server relies on."""
    d = live(dirs, names[0])
    chain = x509.load_pem_x509_certificates((d / "fullchain.pem").read_bytes())
    leaf = chain[0]
    assert x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()) == leaf
    assert x509.load_pem_x509_certificates((d / "chain.pem").read_bytes()) == chain[1:]

    verifier = PolicyBuilder().store(Store([pebble.root()])).build_server_verifier(x509.DNSName(names[0]))
    verified = verifier.verify(leaf, chain[1:])
    assert verified[-1] == pebble.root()

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)

    key = serialization.load_pem_private_key((d / "privkey.pem").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )

    assert stat.S_IMODE((d / "privkey.pem").stat().st_mode) == 0o600
    for public in ("fullchain.pem", "cert.pem", "chain.pem"):
        assert stat.S_IMODE((d / public).stat().st_mode) == 0o644
    account_key = next(dirs.state.glob("accounts/**/key.pem"))
    assert stat.S_IMODE(account_key.stat().st_mode) == 0o600
    return leaf
