"""The fleet secret and what it protects: requests from certificate followers, and the sealed
bundle (private key and chain) acmebox hands them.

The fleet secret (a Swarm secret given to acmebox and every follower, at least 32 bytes) is
never used directly: HKDF-SHA256 derives one key that authenticates requests (HMAC-SHA256) and
one that seals answers (AES-256-GCM). A follower's request carries its node name, a time and a
random nonce, all covered by the HMAC; acmebox refuses a request older or newer than MAX_SKEW
seconds or with a wrong tag. The answer is sealed with the request's nonce as associated data,
so an answer recorded earlier (an older certificate) cannot be replayed into a later request,
and someone who can read the overlay network sees only ciphertext.

    request headers:  X-Acmebox-Fleet-Node, -Time (Unix seconds), -Nonce (32 hex), -Auth (hex HMAC)
    signed text:      "<METHOD>\\n<path with query>\\n<node>\\n<time>\\n<nonce>"
    sealed answer:    12-byte GCM nonce || ciphertext+tag of a JSON object (see Bundle)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from acmebox.errors import ConfigError

MIN_SECRET = 32  # bytes of fleet secret, at least
MAX_SECRET = 4096
MAX_SKEW = 300.0  # seconds a request's time may differ from acmebox's clock
NODE_HEADER, TIME_HEADER = "X-Acmebox-Fleet-Node", "X-Acmebox-Fleet-Time"
NONCE_HEADER, AUTH_HEADER = "X-Acmebox-Fleet-Nonce", "X-Acmebox-Fleet-Auth"
MAX_NODE = 253  # a node name is a host name
BUNDLE_PATH = "/fleet/v1/bundle/"  # + the certificate's name; query: have, reload, ready, wait
LONG_POLL_MAX = 25.0  # seconds acmebox holds a follower's poll while nothing changes


class Refused(Exception):
    """A request or an answer that does not authenticate (the text says why, without secrets)."""


def read_secret(path: Path) -> FleetKeys:
    """The keys derived from the secret in `path` (surrounding white space ignored). ConfigError
    when it cannot be read or is shorter than MIN_SECRET bytes."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET + 1).strip()
    except OSError as e:
        raise ConfigError(f"fleet secret {path}: {e.strerror or e}") from None
    if len(raw) > MAX_SECRET:
        raise ConfigError(f"fleet secret {path}: longer than {MAX_SECRET} bytes")
    if len(raw) < MIN_SECRET:
        raise ConfigError(f"fleet secret {path}: {len(raw)} bytes; want at least {MIN_SECRET} random bytes "
                          "(e.g. openssl rand -hex 32)")
    return FleetKeys.derive(raw)


def _hkdf(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"acmebox fleet v1", info=purpose).derive(secret)


@dataclass(frozen=True)
class Bundle:
    """One certificate as a follower installs it: key and full chain (PEM), acmebox's meta,
    `reload`, the number of reloads acmebox has asked of the requesting node so far, and `ready`,
    acmebox's verdict on that node's frontend: True once it was seen serving the live
    certificate(s), False while it has not been since it appeared (joining), None when acmebox
    has not looked at it yet (the follower then keeps what it has)."""

    name: str
    key_pem: bytes
    fullchain_pem: bytes
    meta: dict[str, object]
    reload: int
    ready: bool | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({"name": self.name, "key": self.key_pem.decode(), "fullchain": self.fullchain_pem.decode(),
                           "meta": self.meta, "reload": self.reload, "ready": self.ready}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Bundle:
        try:
            obj = json.loads(data)
            ready = obj.get("ready")
            return cls(str(obj["name"]), obj["key"].encode(), obj["fullchain"].encode(), dict(obj["meta"]),
                       int(obj["reload"]), ready if isinstance(ready, bool) else None)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise Refused(f"sealed bundle has the wrong shape ({type(e).__name__})") from None


@dataclass(frozen=True)
class FleetKeys:
    auth: bytes = b""
    seal_key: bytes = b""

    def __repr__(self) -> str:  # never print key material
        return "FleetKeys(...)"

    @classmethod
    def derive(cls, secret: bytes) -> FleetKeys:
        return cls(_hkdf(secret, b"request authentication"), _hkdf(secret, b"bundle sealing"))

    def _tag(self, method: str, path: str, node: str, when: str, nonce: str) -> str:
        text = "\n".join((method.upper(), path, node, when, nonce)).encode()
        return hmac.new(self.auth, text, hashlib.sha256).hexdigest()

    def sign(self, method: str, path: str, node: str, now: float | None = None) -> dict[str, str]:
        """Headers that authenticate a request for `path` (with its query) from `node`."""
        when, nonce = str(int(now if now is not None else time.time())), secrets.token_hex(16)
        return {NODE_HEADER: node, TIME_HEADER: when, NONCE_HEADER: nonce,
                AUTH_HEADER: self._tag(method, path, node, when, nonce)}

    def verify(self, method: str, path: str, headers: dict[str, str], now: float | None = None) -> tuple[str, str]:
        """(node, nonce) of an authentic, fresh request; Refused otherwise."""
        node, when = headers.get(NODE_HEADER, ""), headers.get(TIME_HEADER, "")
        nonce, tag = headers.get(NONCE_HEADER, ""), headers.get(AUTH_HEADER, "")
        if not (node and when and nonce and tag):
            raise Refused("not a fleet request (headers missing)")
        if len(node) > MAX_NODE or not node.isprintable() or len(nonce) != 32 or not when.isdigit():
            raise Refused("malformed fleet headers")
        if not hmac.compare_digest(self._tag(method, path, node, when, nonce), tag):
            raise Refused(f"wrong authentication tag from {node!r} (another fleet secret?)")
        skew = abs((now if now is not None else time.time()) - int(when))
        if skew > MAX_SKEW:
            raise Refused(f"request from {node!r} is {skew:.0f}s off acmebox's clock (at most {MAX_SKEW:.0f}s)")
        return node, nonce

    def seal(self, plaintext: bytes, nonce: str) -> bytes:
        iv = os.urandom(12)
        return iv + AESGCM(self.seal_key).encrypt(iv, plaintext, nonce.encode())

    def open(self, blob: bytes, nonce: str) -> bytes:
        if len(blob) < 12 + 16:
            raise Refused("sealed bundle too short")
        try:
            return AESGCM(self.seal_key).decrypt(blob[:12], blob[12:], nonce.encode())
        except InvalidTag:
            raise Refused("sealed bundle does not open (another fleet secret, or altered)") from None


def fingerprint(keys: FleetKeys) -> str:
    """A short public name for the secret (to compare settings in logs without revealing it)."""
    return base64.b32encode(hashlib.sha256(keys.auth).digest()[:5]).decode().lower()
