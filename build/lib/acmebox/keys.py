"""Private keys: the supported key types, generation and PEM (de)serialisation."""

from __future__ import annotations

from typing import Literal, get_args

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
