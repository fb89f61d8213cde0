"""Self-signed placeholder certificates: nginx refuses to start without its ssl_certificate
files, so each certificate that has none gets one of these at startup. Its metadata marks it
(`"placeholder": true`), so it is never taken for a real certificate: it is replaced at once."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from acmebox import identifiers, keys

LIFETIME = dt.timedelta(days=30)


def _entries(names: tuple[str, ...]) -> list[x509.GeneralName]:
    dns, ips = identifiers.csr_entries(names)
    return [*(x509.DNSName(n) for n in dns), *(x509.IPAddress(ip) for ip in ips)]


def make(names: tuple[str, ...], key_type: str, now: dt.datetime) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM)."""
    key = keys.generate(key_type)
    cert = (
        keys.self_signed(key, "acmebox placeholder, not trusted", now, LIFETIME)
        .add_extension(x509.SubjectAlternativeName(_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return keys.to_pem(key), cert.public_bytes(Encoding.PEM)
