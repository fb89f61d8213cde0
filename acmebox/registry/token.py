"""The Docker Registry token service's endpoint (registry `auth: token`), so the registry can be publicly
readable while pushing and deleting need a login.

`GET /auth/token?service=...&scope=repository:NAME:pull,push` answers:
- without credentials: a token for `pull` on any repository and `registry:catalog:*`;
- with valid Basic credentials (bcrypt entries of an htpasswd file): `pull,push,delete` as
  asked, narrowed by an optional ACL of user -> repository patterns (with an ACL, users it does
  not list may only pull); repository names outside the distribution spec's grammar get nothing;
- with invalid credentials: 401, so `docker login` with a wrong password fails;
- after too many failed attempts from one client address (X-Forwarded-For believed only from
  the trusted proxies) or for one user: 429 with Retry-After, without checking the password.
  Logins still being checked hold an attempt until they are found right; a login that finds
  the attempts held that way waits for them instead of being refused, so concurrent logins of
  valid users from one address (a CI farm behind one NAT) all get through.
The OAuth2 `POST` form gets 404; containerd then falls back to GET with Basic.

Tokens are short-lived ES256 JWTs (PyJWT) signed with the keyring's current key (signing.py). The
header carries the key's self-signed certificate as `x5c`, which distribution 2.8 and 3.x verify
against `auth.token.rootcertbundle`, and its RFC 7638 thumbprint as `kid`, which 3.x also accepts.
A rotation (`acmebox token-key rotate`) is picked up at the next token: the key file is checked
for a change on each request (one stat).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from acmebox.errors import ConfigError
from acmebox.limits import KeyedBuckets, LogLimiter, retry_after
from acmebox.registry.acl import RESOURCE_CLASS, load_acl, valid_repository
from acmebox.registry.htpasswd import Htpasswd
from acmebox.registry.proxies import TrustedProxies, throttle_key
from acmebox.registry.signing import Keyring, Signer

if TYPE_CHECKING:
    from acmebox.config import TokenAuth

log = logging.getLogger(__name__)

PATH = "/auth/token"
ANONYMOUS_ACTIONS = frozenset({"pull"})
USER_ACTIONS = frozenset({"pull", "push", "delete", "*"})


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


# Login attempts allowed before 429: a burst, then a steady rate. Per client address the burst
# is smaller than per user, so one client alone cannot lock a user out.
CLIENT_BURST, CLIENT_PER_SECOND = 10, 1 / 6
USER_BURST, USER_PER_SECOND = 30, 1 / 2
# A login waits at most this long for bcrypt (the pool may be busy); then 503 with Retry-After.
LOGIN_TIMEOUT = 30.0
# bcrypt runs in its own small pool: a flood of logins must not starve the default executor
# (the docker reloader uses it), and more threads than cores would not check faster.
BCRYPT_THREADS = 2
# Logins waiting for checks under way (see _admit), all clients together; beyond that a login
# gets 503 "busy" at once. Every check that ends wakes them all, so this bounds that cost.
MAX_WAITING = 256


class _Busy(Exception):
    """Too many logins are waiting already (MAX_WAITING)."""


@dataclass
class TokenService:
    htpasswd: Htpasswd
    keyring: Keyring
    service: str = "registry"
    issuer: str = "acmebox"
    ttl: int = 300
    acl: dict[str, list[re.Pattern[str]]] | None = None
    proxies: TrustedProxies = field(default_factory=TrustedProxies)
    now: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.signer: Signer = self.keyring.load()
        self.clients = KeyedBuckets(CLIENT_BURST, CLIENT_PER_SECOND, now=self.now)
        self.users = KeyedBuckets(USER_BURST, USER_PER_SECOND, now=self.now)
        self.failures = LogLimiter(log, now=self.now)
        self._pool = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")
        # checks under way per client key and per user, and an event set when one ends
        self._checking: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
        self._ended: asyncio.Event | None = None
        self._waiting_now = 0

    @classmethod
    def from_settings(cls, auth: TokenAuth) -> TokenService:
        """The service for `auth` (config.TokenAuth): reads the users and the ACL, makes the signing key
        and its certificate if missing. Raises ConfigError for a file it cannot use."""
        users = Htpasswd(auth.htpasswd)
        if not len(users):
            log.warning("htpasswd file %s has no users: nobody can push yet", auth.htpasswd)
        return cls(users, Keyring(auth.key, auth.cert, auth.issuer), auth.service, auth.issuer, auth.ttl,
                   load_acl(auth.acl), TrustedProxies(auth.trusted_proxies))

    def install(self, app: web.Application) -> None:
        """Route `/auth/token` to this service. The OAuth2 POST form gets 404: containerd then asks
        with GET and Basic, which is answered."""

        async def no_oauth_post(request: web.Request) -> web.Response:
            raise web.HTTPNotFound()

        app.router.add_get(PATH, self.handle)
        app.router.add_post(PATH, no_oauth_post)

    def grant(self, user: str | None, scope: Scope) -> frozenset[str]:
        if scope.type == "registry" and scope.name == "catalog":
            return scope.actions & {"*"}  # browsing is public
        if not RESOURCE_CLASS.match(scope.type) or not valid_repository(scope.name):
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
        signer = self.current_signer()
        token = jwt.encode(claims, signer.key, algorithm="ES256",
                           headers={"kid": signer.kid, "x5c": list(signer.x5c), "typ": "JWT"})
        return {"token": token, "access_token": token, "expires_in": self.ttl,
                "issued_at": now.isoformat().replace("+00:00", "Z")}

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return self.signer.key

    @property
    def kid(self) -> str:
        return self.signer.kid

    def current_signer(self) -> Signer:
        """The signer, reloaded when the key file changed (a rotation) or a retiring certificate's
        time has come (it leaves the bundle). A keyring that cannot be read keeps the last signer."""
        signer = self.signer
        try:
            st = self.keyring.key_path.stat()
            due = signer.next_change is not None and time.time() >= signer.next_change
            if (st.st_ino, st.st_mtime_ns) != signer.stamp or due:
                self.signer = self.keyring.load()
                if self.signer.kid != signer.kid:
                    log.info("token signing key %s replaces %s", self.signer.kid, signer.kid)
        except (OSError, ConfigError) as e:
            self.failures(logging.ERROR, "token signing keys: %s; still signing with %s", e, signer.kid)
        return self.signer

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
            try:
                async with asyncio.timeout(LOGIN_TIMEOUT):
                    wait = await self._admit(client, user)
                    if wait:
                        return self._throttled(client, user, wait)
                    ok = await self._login(client, user, password)
            except (TimeoutError, _Busy):
                return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "busy; try again"}]},
                                         status=503, headers={"Retry-After": "10"})
            if not ok:
                return self._denied("invalid username or password")
        body = self.issue(user, scopes)
        log.debug("token for %s: %s", user or "anonymous", [f"{s.type}:{s.name}" for s in scopes])
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _waiting(self, client: str, user: str) -> float:
        return max(self.clients.wait(throttle_key(client)), self.users.wait(user))

    async def _admit(self, client: str, user: str) -> float:
        """0 once the client and the user each have an attempt left, which this login then holds;
        else the seconds until they have. While other checks for them are under way, it waits
        for those to end (each right one gives its attempt back) rather than refusing: only
        failed logins use the attempts up."""
        key = throttle_key(client)
        clients, users = self._checking
        while True:
            wait = self._waiting(client, user)
            if not wait:
                break
            if not clients[key] and not users[user]:
                return wait
            if self._waiting_now >= MAX_WAITING:
                raise _Busy
            if self._ended is None:
                self._ended = asyncio.Event()
            self._waiting_now += 1
            try:
                await self._ended.wait()
            finally:
                self._waiting_now -= 1
        self.clients.take(key)
        self.users.take(user)
        clients[key] += 1
        users[user] += 1
        return 0.0

    async def _login(self, client: str, user: str, password: bytes) -> bool:
        """Check the password, holding the attempt `_admit` took: a right password gives it
        back. A password found right in the last minute is not checked by bcrypt again."""
        key = throttle_key(client)
        clients, users = self._checking
        try:
            self.htpasswd.refresh()
            ok = self.htpasswd.verified(user, password)
            if not ok:
                ok = await asyncio.get_running_loop().run_in_executor(self._pool, self.htpasswd.check, user, password)
            if ok:
                self.htpasswd.remember(user, password)
                self.clients.give_back(key)
                self.users.give_back(user)
            else:
                self.failures(logging.WARNING, "token request with wrong credentials for user %r from %s",
                              user[:64], client)
            return ok
        finally:
            for counter, name in ((clients, key), (users, user)):
                counter[name] -= 1
                if not counter[name]:
                    del counter[name]
            if self._ended is not None:
                self._ended.set()
                self._ended = None

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
