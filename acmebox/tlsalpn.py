"""TLS-ALPN-01 (RFC 8737), opt-in with --tls-alpn-listen: the validation certificates acmebox
presents while an authorization is pending, and the TLS listener that presents them.

The CA connects to port 443 of the name, offers only the `acme-tls/1` protocol and sends the
name as SNI; the answer is a self-signed certificate for that name alone that carries the
critical acmeIdentifier extension (id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31) holding the
SHA-256 digest of the key authorization. In front, nginx's `stream` module with `ssl_preread`
hands exactly those connections to this listener and everything else to the usual HTTPS server
(nginx/tls-alpn/; docs/deploying.md "Port 80 closed"), so port 80 may stay closed. No
application data is exchanged: the handshake is the answer, and the connection is closed
after it. nginx keeps
the client's address with the PROXY protocol (v1) on both routes, so a connection may start
with a PROXY line; it is read and dropped (the CA's address is of no use here).

Only DNS names: an IP identifier's TLS-ALPN-01 uses a reverse-DNS SNI (RFC 8738 section 6),
which is not implemented; certificates with addresses keep HTTP-01.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ObjectIdentifier
from josepy.b64 import b64encode
from josepy.interfaces import JSONDeSerializable
from josepy.jwk import JWK

from acmebox import keys
from acmebox.errors import CAProblem

log = logging.getLogger(__name__)

ALPN = "acme-tls/1"
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
HANDSHAKE_TIMEOUT = 10.0  # seconds a connection may take to complete its handshake
PROXY_LINE_MAX = 107  # bytes of a PROXY protocol v1 header, CRLF included


def validation_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) answering TLS-ALPN-01 for `name` (RFC 8737 section 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    cert = (
        keys.self_signed(key, "acmebox TLS-ALPN-01 challenge", dt.datetime.now(dt.UTC), dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # the extension's value is the DER encoding of an OCTET STRING of the digest
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return cert.public_bytes(Encoding.PEM), key_pem


class EmptyResponse(JSONDeSerializable):
    """The `{}` that tells the CA to validate a challenge the acme library no longer models
    (TLS-ALPN-01 left it in 5.0.0); RFC 8555 section 7.5.1."""

    def to_partial_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, jobj: Any) -> EmptyResponse:
        return cls()


def _context(cert_pem: bytes | None = None, key_pem: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN])
    if cert_pem is not None and key_pem is not None:
        # ssl loads certificates from files only: a private directory, gone right after.
        with tempfile.TemporaryDirectory(prefix="acmebox-tls-alpn-") as tmp:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert_path.write_bytes(cert_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem)
            ctx.load_cert_chain(cert_path, key_path)
    return ctx


class TlsAlpnResponder:
    """The validation certificates presented now, one per name, and the listener."""

    def __init__(self) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._base = _context()
        self._base.sni_callback = self._choose
        self._server: asyncio.Server | None = None

    def answer(self, authz: messages.Authorization, account_key: JWK | None) -> str:
        """Present the validation certificate for `authz`'s pending tls-alpn-01 challenge (the
        acme library no longer models it, so it is read from the JSON); returns the URL to POST
        an EmptyResponse to. CAProblem (rejectedIdentifier) when the CA does not offer it."""
        name = str(authz.identifier.value)
        alpn = next((c for c in authz.challenges if c.to_partial_json().get("type") == "tls-alpn-01"), None)
        if alpn is None:
            raise CAProblem("urn:ietf:params:acme:error:rejectedIdentifier", f"{name}: the CA offers no TLS-ALPN-01")
        if account_key is None:
            raise RuntimeError("login() first")
        token = str(alpn.to_partial_json().get("token", ""))
        thumbprint = b64encode(account_key.thumbprint()).decode()
        self.present(name, f"{token}.{thumbprint}")  # the key authorization, RFC 8555 section 8.1
        return str(alpn.uri)

    def present(self, name: str, key_authorization: str) -> None:
        self._contexts[name.lower()] = _context(*validation_certificate(name, key_authorization))

    def withdraw(self, name: str) -> None:
        self._contexts.pop(name.lower(), None)

    def __len__(self) -> int:
        return len(self._contexts)

    def _choose(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> int | None:
        ctx = self._contexts.get((server_name or "").lower())
        if ctx is None:  # nothing pending for that name (or no SNI): no certificate to show
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = ctx
        return None

    async def start(self, host: str, port: int) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    await self._handshake(reader, writer)
            except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as e:
                log.debug("TLS-ALPN-01 connection ended: %s", e)
            finally:
                writer.close()

        self._server = await asyncio.start_server(handle, host, port)
        log.info("answering TLS-ALPN-01 (acme-tls/1) on %s:%d", host, port)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The server side of one TLS handshake over memory buffers (the bytes after a PROXY
        line may already be read, which asyncio's start_tls would lose)."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        first = await reader.readexactly(1)
        if first == b"P":
            line = first + await reader.readuntil(b"\r\n")
            if not line.startswith(b"PROXY ") or len(line) > PROXY_LINE_MAX:
                raise ValueError("not a PROXY protocol v1 header")
        else:
            incoming.write(first)
        tls = self._base.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                await writer.drain()
                data = await reader.read(16384)
                if not data:
                    return
                incoming.write(data)
        writer.write(outgoing.read())
        await writer.drain()
        log.info("TLS-ALPN-01: presented the validation certificate for %s", tls.server_hostname)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
