"""Test helper: self-signed certificates made with `cryptography`, for unit tests of the store."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from acmebox import keys


def make_cert(names: list[str], days: float = 90, key_type: str = "ec256",
              not_before: dt.datetime | None = None) -> tuple[bytes, bytes]:  # fmt: skip
    """(key PEM, certificate PEM) for `names`."""
    key = keys.generate(key_type)
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return keys.to_pem(key), cert.public_bytes(Encoding.PEM)
