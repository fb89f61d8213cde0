"""The token signing key: made once (0600) in the state dir, with the self-signed certificate the
registry trusts (`auth.token.rootcertbundle`), and the key ID the registry looks it up by."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acmebox import keys
from acmebox.errors import ConfigError
from acmebox.fsutil import atomic_write, write_new

log = logging.getLogger(__name__)


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key ID the registry computes for a trusted key (docker/libtrust): the SHA-256 of the
    DER SubjectPublicKeyInfo, first 240 bits, base32, in groups of four joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def ensure_signing_key(key_path: Path, cert_path: Path, issuer: str) -> ec.EllipticCurvePrivateKey:
    """The token signing key, made once (0600), and its certificate for the registry."""
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        if not key_path.exists():
            write_new(key_path, keys.to_pem(keys.generate("ec256")), 0o600)
            log.info("created the registry token signing key %s", key_path)
    except OSError as e:
        raise ConfigError(f"token signing key {key_path}: {e.strerror or e}") from None
    key = _read_signing_key(key_path)
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes()) if cert_path.exists() else None
    except ValueError:
        current = None
    if current is None or keys.public_der(current.public_key()) != keys.public_der(key):  # type: ignore[arg-type]
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{issuer} registry token signer")])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650)).sign(key, hashes.SHA256())
        )
        try:
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as e:
            raise ConfigError(f"token certificate {cert_path}: {e.strerror or e}") from None
        log.info("wrote the registry token certificate %s (kid %s)", cert_path, libtrust_kid(key.public_key()))
    return key


def check_signing_key(key_path: Path) -> None:
    """ConfigError unless `key_path` is missing (it will be made) or an EC P-256 private key.
    Reads only: the CLI calls it before anything is written."""
    if key_path.exists():
        _read_signing_key(key_path)


def _read_signing_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = keys.from_pem(key_path.read_bytes())
    except OSError as e:
        raise ConfigError(f"token signing key {key_path}: {e.strerror or e}") from None
    except ValueError:
        raise ConfigError(f"token signing key {key_path} is not a readable private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or keys.key_type_of(key) != "ec256":
        raise ConfigError(f"token signing key {key_path} is not an EC P-256 key")
    return key
