"""Private keys: the supported key types, generation and PEM (de)serialisation, and the builder of
the self-signed certificates acmebox makes for them (placeholders, TLS-ALPN-01, the token signer)."""

from __future__ import annotations

import datetime as dt
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KeyType = Literal["ec256", "ec384", "rsa2048", "rsa3072", "rsa4096"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CURVES: dict[str, type[ec.EllipticCurve]] = {"ec256": ec.SECP256R1, "ec384": ec.SECP384R1}


def generate(key_type: str) -> PrivateKey:
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    if key_type.startswith("rsa") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise ValueError(f"unknown key type {key_type!r}")


def key_type_of(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return {"secp256r1": "ec256", "secp384r1": "ec384"}.get(key.curve.name, key.curve.name)
    return f"rsa{key.key_size}"


def to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def from_pem(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError("not an EC or RSA private key")
    return key


def public_der(key: PrivateKey | PublicKey) -> bytes:
    """The SubjectPublicKeyInfo, to compare a key with a certificate's."""
    pub = key.public_key() if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def self_signed(key: PrivateKey, common_name: str, now: dt.datetime, lifetime: dt.timedelta) -> x509.CertificateBuilder:
    """A self-signed certificate of `key` (subject and issuer CN `common_name`, a random serial),
    valid from an hour before `now` (clocks that lag) for `lifetime`: the caller adds its
    extensions and signs it with `key`."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + lifetime)
    )
