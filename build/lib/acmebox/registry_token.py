"""The Docker Registry token service (registry `auth: token`), so the registry can be publicly
readable while pushing and deleting need a login.

`GET /auth/token?service=...&scope=repository:NAME:pull,push` answers:
- without credentials: a token for `pull` on any repository and `registry:catalog:*`;
- with valid Basic credentials (bcrypt entries of an htpasswd file): `pull,push,delete` as
  asked, narrowed by an optional ACL of user -> repository patterns;
- with invalid credentials: 401, so `docker login` with a wrong password fails.
The OAuth2 `POST` form gets 404; containerd then falls back to GET with Basic.

Tokens are short-lived ES256 JWTs (PyJWT) signed with a key made once (0600); its
self-signed certificate is what the registry trusts (`auth.token.rootcertbundle`), and the
JWT's `kid` is that key's libtrust ID, which is how the registry finds it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import fnmatch
import hashlib
import logging
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acmebox import keys
from acmebox.errors import ConfigError
from acmebox.fsutil import atomic_write, write_new

log = logging.getLogger(__name__)

PATH = "/auth/token"
ANONYMOUS_ACTIONS = frozenset({"pull"})
USER_ACTIONS = frozenset({"pull", "push", "delete", "*"})
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")


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
        key = keys.from_pem(key_path.read_bytes())
    except OSError as e:
        raise ConfigError(f"token signing key {key_path}: {e.strerror or e}") from None
    except ValueError:
        raise ConfigError(f"token signing key {key_path} is not a readable private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or keys.key_type_of(key) != "ec256":
        raise ConfigError(f"token signing key {key_path} is not an EC P-256 key")
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
        )  # fmt: skip
        try:
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as e:
            raise ConfigError(f"token certificate {cert_path}: {e.strerror or e}") from None
        log.info("wrote the registry token certificate %s (kid %s)", cert_path, libtrust_kid(key.public_key()))
    return key


class Htpasswd:
    """An htpasswd file with bcrypt entries, read again when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, bytes] = {}
        self.load()  # a missing or bad file is a startup error

    def load(self) -> None:
        try:
            st = self.path.stat()
            text = self.path.read_text()
        except OSError as e:
            raise ConfigError(f"htpasswd file {self.path}: {e.strerror or e}") from None
        users: dict[str, bytes] = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, hashed = line.strip().partition(":")
            if not sep or not user:
                raise ConfigError(f"htpasswd file {self.path}, line {n}: want USER:HASH")
            if not hashed.startswith(BCRYPT_PREFIXES):
                raise ConfigError(
                    f"htpasswd file {self.path}, line {n} ({user}): only bcrypt entries are accepted "
                    f"(create them with `htpasswd -B`)"
                )
            users[user] = hashed.encode()
        self._users, self._stamp = users, (st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return  # keep the users we know
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            try:
                self.load()
                log.info("htpasswd file %s reloaded: %d user(s)", self.path, len(self._users))
            except ConfigError as e:
                log.error("%s; keeping the previous users", e)

    def check(self, user: str, password: str) -> bool:
        hashed = self._users.get(user)
        if hashed is None:
            bcrypt.checkpw(password.encode(), b"$2b$05$" + b"." * 53)  # same cost for unknown users
            return False
        return bcrypt.checkpw(password.encode(), hashed)

    def __len__(self) -> int:
        return len(self._users)


def load_acl(path: Path | None) -> dict[str, list[str]]:
    """user -> repository patterns (fnmatch) from a TOML file: `alice = ["alice/*", "shared/*"]`.
    Users not in the file may write everywhere."""
    if path is None:
        return {}
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"ACL file {path}: {e}") from None
    acl = {}
    for user, patterns in data.items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"ACL file {path}: {user} must map to a list of repository patterns")
        acl[user] = patterns
    return acl


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    @classmethod
    def parse(cls, raw: str) -> Scope:
        typ, sep, rest = raw.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not typ or not name:
            raise ValueError(raw)
        return cls(typ, name, frozenset(a for a in actions.split(",") if a))


@dataclass
class TokenService:
    htpasswd: Htpasswd
    key: ec.EllipticCurvePrivateKey
    service: str = "registry"
    issuer: str = "acmebox"
    ttl: int = 300
    acl: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kid = libtrust_kid(self.key.public_key())

    def grant(self, user: str | None, scope: Scope) -> frozenset[str]:
        if scope.type == "registry" and scope.name == "catalog":
            return scope.actions & {"*"}  # browsing is public
        if not scope.type.startswith("repository"):
            return frozenset()
        if user is None:
            return scope.actions & ANONYMOUS_ACTIONS
        patterns = self.acl.get(user)
        if patterns is not None and not any(fnmatch.fnmatchcase(scope.name, p) for p in patterns):
            return scope.actions & ANONYMOUS_ACTIONS
        return scope.actions & USER_ACTIONS

    def issue(self, user: str | None, scopes: list[Scope], now: dt.datetime | None = None) -> dict[str, Any]:
        now = now or dt.datetime.now(dt.UTC)
        access = []
        for scope in scopes:
            granted = self.grant(user, scope)
            if granted:
                access.append({"type": scope.type, "name": scope.name, "actions": sorted(granted)})
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()) - 10,
            "exp": int(now.timestamp()) + self.ttl,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"})
        return {"token": token, "access_token": token, "expires_in": self.ttl,
                "issued_at": now.isoformat().replace("+00:00", "Z")}  # fmt: skip

    async def handle(self, request: web.Request) -> web.Response:
        if request.query.get("service", self.service) != self.service:
            return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]}, status=400)
        try:
            scopes = [Scope.parse(s) for raw in request.query.getall("scope", []) for s in raw.split(" ") if s]
        except ValueError as e:
            return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": f"bad scope {e}"}]}, status=400)
        user = None
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return self._denied("malformed credentials")
            self.htpasswd.refresh()
            if not await asyncio.to_thread(self.htpasswd.check, user, password):
                log.warning("token request with wrong credentials for user %r from %s", user, request.remote)
                return self._denied("invalid username or password")
        body = self.issue(user, scopes)
        log.debug("token for %s: %s", user or "anonymous", [f"{s.type}:{s.name}" for s in scopes])
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _denied(self, message: str) -> web.Response:
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": message}]},
            status=401,
            headers={"WWW-Authenticate": f'Basic realm="{self.service}"'},
        )


def add_routes(app: web.Application, service: TokenService) -> None:
    async def no_oauth_post(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()  # containerd then asks with GET and Basic, which we answer

    app.router.add_get(PATH, service.handle)
    app.router.add_post(PATH, no_oauth_post)


def build(htpasswd: Path, key_path: Path, cert_path: Path, service: str, issuer: str, ttl: int,
          acl: Path | None) -> TokenService:  # fmt: skip
    users = Htpasswd(htpasswd)
    if not len(users):
        log.warning("htpasswd file %s has no users: nobody can push yet", htpasswd)
    key = ensure_signing_key(key_path, cert_path, issuer)
    return TokenService(users, key, service, issuer, ttl, load_acl(acl))
