"""The Docker Registry token service (registry `auth: token`), so the registry can be publicly
readable while pushing and deleting need a login.

`GET /auth/token?service=...&scope=repository:NAME:pull,push` answers:
- without credentials: a token for `pull` on any repository and `registry:catalog:*`;
- with valid Basic credentials (bcrypt entries of an htpasswd file): `pull,push,delete` as
  asked, narrowed by an optional ACL of user -> repository patterns (with an ACL, users it does
  not list may only pull); repository names outside the distribution spec's grammar get nothing;
- with invalid credentials: 401, so `docker login` with a wrong password fails;
- after too many attempts from one client address (X-Forwarded-For believed only from the
  trusted proxies) or for one user: 429 with Retry-After, without checking the password.
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
import hashlib
import ipaddress
import logging
import math
import re
import socket
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
from acmebox.limits import KeyedBuckets, LogLimiter, retry_after

log = logging.getLogger(__name__)

PATH = "/auth/token"
ANONYMOUS_ACTIONS = frozenset({"pull"})
USER_ACTIONS = frozenset({"pull", "push", "delete", "*"})
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


# A bcrypt hash as `htpasswd -B` writes it: version, two-digit cost, 22 salt + 31 hash characters.
_BCRYPT = re.compile(rb"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
# bcrypt reads at most 72 bytes of a password; Apache's htpasswd hashes only those, and bcrypt 5
# raises on longer input instead of ignoring the rest, so the rest is cut here the same way.
BCRYPT_MAX_PASSWORD = 72


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


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def check_proxy_entry(entry: str) -> None:
    """A trusted proxy: an IP address, a network in CIDR form, or a host name."""
    try:
        ipaddress.ip_network(entry, strict=False)
        return
    except ValueError:
        pass
    if not _HOSTNAME.match(entry):
        raise ConfigError(f"bad --auth-trusted-proxy entry {entry[:80]!r}: want an address, a network or a host name")


class Htpasswd:
    """An htpasswd file with bcrypt entries, read again when it changes on disk.

    `check` costs the same for an unknown user as for the most expensive known one: it
    compares against a dummy hash of the file's highest bcrypt cost, so timing does not tell
    which users exist."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, bytes] = {}
        self._dummy_cost = 5
        self._dummies: dict[int, bytes] = {}
        self.load()  # a missing or bad file is a startup error

    def load(self) -> None:
        try:
            st = self.path.stat()
            raw = self.path.read_bytes()
        except OSError as e:
            raise ConfigError(f"htpasswd file {self.path}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"htpasswd file {self.path} is not UTF-8 text (byte {e.start})") from None
        users: dict[str, bytes] = {}
        costs = [5]
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, hashed = line.strip().partition(":")
            if not sep or not user:
                raise ConfigError(f"htpasswd file {self.path}, line {n}: want USER:HASH")
            m = _BCRYPT.match(hashed.encode())
            if not hashed.startswith(BCRYPT_PREFIXES):
                raise ConfigError(
                    f"htpasswd file {self.path}, line {n} ({user}): only bcrypt entries are accepted "
                    f"(create them with `htpasswd -B`)"
                )
            if m is None or not 4 <= int(m.group(1)) <= 31:
                raise ConfigError(f"htpasswd file {self.path}, line {n} ({user}): malformed bcrypt hash")
            users[user] = hashed.encode()
            costs.append(int(m.group(1)))
        self._users, self._dummy_cost = users, max(costs)
        self._stamp = (st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return  # keep the users we know
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self.load()
                log.info("htpasswd file %s reloaded: %d user(s)", self.path, len(self._users))
            except ConfigError as e:
                self._stamp = stamp  # said once per change of the file, not on every request
                log.error("%s; keeping the previous users", e)

    def _dummy(self, cost: int) -> bytes:
        if cost not in self._dummies:
            self._dummies[cost] = bcrypt.hashpw(b"acmebox: no such user", bcrypt.gensalt(cost))
        return self._dummies[cost]

    def check(self, user: str, password: bytes) -> bool:
        """Whether `password` (bytes as sent; only the first 72 count, as for `htpasswd -B`)
        matches `user`'s entry. Blocking: run it in a thread."""
        password = password[:BCRYPT_MAX_PASSWORD]
        hashed = self._users.get(user)
        if hashed is None:
            bcrypt.checkpw(password, self._dummy(self._dummy_cost))
            return False
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError:  # a hash bcrypt cannot use, e.g. a bad salt: nobody matches it
            return False

    def __len__(self) -> int:
        return len(self._users)


# The distribution spec's repository name grammar (opencontainers/distribution-spec, "Pulling
# manifests"): path components of lower-case alphanumerics joined by `.`, `_`, `__` or dashes.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
MAX_REPOSITORY = 255
# ACL patterns: name characters plus `*` (within one path component) and `**` (across them).
_PATTERN = re.compile(r"^[a-z0-9._*/-]+$")
_RESOURCE_CLASS = re.compile(r"^repository(?:\([a-z0-9]+\))?$")


def valid_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY and _REPOSITORY.match(name) is not None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """An ACL pattern as a regex: `*` matches within one path component (so `alice/*` is not
    `alice/../bob`), `**` matches across components."""
    out = []
    for part in re.split(r"(\*\*|\*)", pattern):
        out.append(".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part))
    return re.compile("".join(out))


def load_acl(path: Path | None) -> dict[str, list[re.Pattern[str]]] | None:
    """user -> repository patterns from a TOML file: `alice = ["alice/*", "shared/**"]`, or
    None without a file. With a file, a user it does not list may only pull."""
    if path is None:
        return None
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"ACL file {path}: {str(e).splitlines()[0] if str(e) else 'too deeply nested'}") from None
    except OSError as e:
        raise ConfigError(f"ACL file {path}: {e.strerror or e}") from None
    acl = {}
    for user, patterns in data.items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"ACL file {path}: {user} must map to a list of repository patterns")
        for p in patterns:
            if not _PATTERN.match(p) or len(p) > MAX_REPOSITORY:
                raise ConfigError(f"ACL file {path}: {user}: pattern {p[:80]!r} can match no repository name "
                                  "(lower-case letters, digits, . _ - / and *)")
        acl[user] = [compile_pattern(p) for p in patterns]
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


class TrustedProxies:
    """The reverse proxies whose X-Forwarded-For is believed: IP addresses, networks (CIDR) or
    host names (looked up again at most every RESOLVE_EVERY seconds: in compose, nginx's address
    is only known once it runs)."""

    RESOLVE_EVERY = 30.0

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: list[IPNetwork] = []
        self.names: list[str] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.append(entry)
        self._resolved: set[IPAddress] = set()
        self._resolved_at = -math.inf

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    async def _refresh(self) -> None:
        now = time.monotonic()
        if not self.names or now - self._resolved_at < self.RESOLVE_EVERY:
            return
        self._resolved_at = now
        found: set[IPAddress] = set()
        loop = asyncio.get_running_loop()
        for name in self.names:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError:
                continue
            found.update(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
        self._resolved = found

    async def trusts(self, addr: IPAddress) -> bool:
        if any(addr in net for net in self.networks):
            return True
        await self._refresh()
        return addr in self._resolved

    async def client(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
        X-Forwarded-For entry that is not itself a trusted proxy (entries further left are
        whatever the client chose to send)."""
        try:
            addr = ipaddress.ip_address(peer or "")
        except ValueError:
            return peer or "unknown"
        hops = [h.strip() for value in forwarded_for for h in value.split(",")]
        while await self.trusts(addr) and hops:
            try:
                addr = ipaddress.ip_address(hops.pop())
            except ValueError:
                break
        return str(addr)


def throttle_key(client: str) -> str:
    """IPv6 clients are counted per /64: one host usually has a whole /64 to pick from."""
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


# Login attempts allowed before 429: a burst, then a steady rate. Per client address the burst
# is smaller than per user, so one client alone cannot lock a user out.
CLIENT_BURST, CLIENT_PER_SECOND = 10, 1 / 6
USER_BURST, USER_PER_SECOND = 30, 1 / 2
# A login waits at most this long for bcrypt (the pool may be busy); then 503 with Retry-After.
LOGIN_TIMEOUT = 30.0
# bcrypt runs in its own small pool: a flood of logins must not starve the default executor
# (the docker reloader uses it), and more threads than cores would not check faster.
BCRYPT_THREADS = 2


@dataclass
class TokenService:
    htpasswd: Htpasswd
    key: ec.EllipticCurvePrivateKey
    service: str = "registry"
    issuer: str = "acmebox"
    ttl: int = 300
    acl: dict[str, list[re.Pattern[str]]] | None = None
    proxies: TrustedProxies = field(default_factory=TrustedProxies)
    now: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.kid = libtrust_kid(self.key.public_key())
        self.clients = KeyedBuckets(CLIENT_BURST, CLIENT_PER_SECOND, now=self.now)
        self.users = KeyedBuckets(USER_BURST, USER_PER_SECOND, now=self.now)
        self.failures = LogLimiter(log, now=self.now)
        self._pool = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")

    def grant(self, user: str | None, scope: Scope) -> frozenset[str]:
        if scope.type == "registry" and scope.name == "catalog":
            return scope.actions & {"*"}  # browsing is public
        if not _RESOURCE_CLASS.match(scope.type) or not valid_repository(scope.name):
            return frozenset()
        if user is None:
            return scope.actions & ANONYMOUS_ACTIONS
        if self.acl is not None:
            patterns = self.acl.get(user, [])
            if not any(p.fullmatch(scope.name) for p in patterns):
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
                "issued_at": now.isoformat().replace("+00:00", "Z")}

    async def handle(self, request: web.Request) -> web.Response:
        if request.query.get("service", self.service) != self.service:
            return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]}, status=400)
        try:
            scopes = [Scope.parse(s) for raw in request.query.getall("scope", []) for s in raw.split(" ") if s]
        except ValueError:
            return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": "bad scope"}]}, status=400)
        user = None
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                user_raw, _, password = base64.b64decode(header[6:], validate=True).partition(b":")
                user = user_raw.decode()
            except (binascii.Error, UnicodeDecodeError):
                return self._denied("malformed credentials")
            client = await self.proxies.client(request.remote, request.headers.getall("X-Forwarded-For", []))
            wait = self._waiting(client, user)
            if wait:
                return self._throttled(client, user, wait)
            try:
                async with asyncio.timeout(LOGIN_TIMEOUT):
                    ok = await self._login(client, user, password)
            except TimeoutError:
                return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "busy; try again"}]},
                                         status=503, headers={"Retry-After": "10"})
            if not ok:
                return self._denied("invalid username or password")
        body = self.issue(user, scopes)
        log.debug("token for %s: %s", user or "anonymous", [f"{s.type}:{s.name}" for s in scopes])
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _waiting(self, client: str, user: str) -> float:
        return max(self.clients.wait(throttle_key(client)), self.users.wait(user))

    async def _login(self, client: str, user: str, password: bytes) -> bool:
        """Check the password. Each attempt takes one from the client's and the user's buckets
        before bcrypt runs (so concurrent guesses count too); a correct password gives them back."""
        key = throttle_key(client)
        self.clients.take(key)
        self.users.take(user)
        self.htpasswd.refresh()
        ok = await asyncio.get_running_loop().run_in_executor(self._pool, self.htpasswd.check, user, password)
        if ok:
            self.clients.give_back(key)
            self.users.give_back(user)
        else:
            self.failures(logging.WARNING, "token request with wrong credentials for user %r from %s",
                          user[:64], client)
        return ok

    def _throttled(self, client: str, user: str, wait: float) -> web.Response:
        self.failures(logging.WARNING, "too many login attempts for user %r or from %s; answering 429 for %ds",
                      user[:64], client, math.ceil(wait))
        return web.json_response(
            {"errors": [{"code": "TOOMANYREQUESTS", "message": "too many login attempts; try again later"}]},
            status=429,
            headers={"Retry-After": retry_after(wait)},
        )

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
          acl: Path | None, trusted_proxies: Iterable[str] = ()) -> TokenService:
    users = Htpasswd(htpasswd)
    if not len(users):
        log.warning("htpasswd file %s has no users: nobody can push yet", htpasswd)
    key = ensure_signing_key(key_path, cert_path, issuer)
    return TokenService(users, key, service, issuer, ttl, load_acl(acl), TrustedProxies(trusted_proxies))
