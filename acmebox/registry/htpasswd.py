"""The users who may push: an htpasswd file of bcrypt entries (`htpasswd -B`), read again when it
changes, checked at the same cost whether the user exists or not; a password found right is
remembered for a short while (as a keyed hash, never the password), so a burst of logins by the
same user costs one bcrypt check, not one each."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt

from acmebox.errors import ConfigError

log = logging.getLogger(__name__)

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
# A bcrypt hash as `htpasswd -B` writes it: version, two-digit cost, 22 salt + 31 hash characters.
_BCRYPT = re.compile(rb"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
# bcrypt reads at most 72 bytes of a password; Apache's htpasswd hashes only those, and bcrypt 5
# raises on longer input instead of ignoring the rest, so the rest is cut here the same way.
BCRYPT_MAX_PASSWORD = 72
# How long a password found right stands in for bcrypt (seconds), and for how many users at most.
# Short: a password removed or changed in the file ends it at once anyway (the file is re-read).
VERIFIED_TTL = 60.0
VERIFIED_MAX = 10_000


class Htpasswd:
    """An htpasswd file with bcrypt entries, read again when it changes on disk.

    `check` costs the same for an unknown user as for the most expensive known one: it
    compares against a dummy hash of the file's highest bcrypt cost, so timing does not tell
    which users exist.

    `verified`/`remember` keep the logins found right in the last VERIFIED_TTL seconds: per
    user, an HMAC-SHA256 of user and password under a key made at start and never written
    anywhere, so neither the password nor anything that can be checked offline against a guess
    is kept. Reading the file again (`load`) forgets them all."""

    def __init__(self, path: Path, now: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.now = now
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, bytes] = {}
        self._dummy_cost = 5
        self._dummies: dict[int, bytes] = {}
        self._secret = os.urandom(32)
        self._verified: dict[str, tuple[bytes, float]] = {}  # user -> (keyed hash, until)
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
        self._verified.clear()

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

    def _mac(self, user: str, password: bytes) -> bytes:
        message = user.encode() + b"\0" + password[:BCRYPT_MAX_PASSWORD]
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def verified(self, user: str, password: bytes) -> bool:
        """Whether this user logged in with this password in the last VERIFIED_TTL seconds (and
        the file has not changed since): a login that needs no bcrypt check."""
        entry = self._verified.get(user)
        if entry is None:
            return False
        mac, until = entry
        if self.now() >= until:
            del self._verified[user]
            return False
        return hmac.compare_digest(mac, self._mac(user, password))

    def remember(self, user: str, password: bytes) -> None:
        """Note that `password` was just found right for `user` (by `check`)."""
        if user not in self._verified and len(self._verified) >= VERIFIED_MAX:
            now = self.now()
            for name in [u for u, (_, until) in self._verified.items() if until <= now]:
                del self._verified[name]
            if len(self._verified) >= VERIFIED_MAX:
                del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified.pop(user, None)
        self._verified[user] = (self._mac(user, password), self.now() + VERIFIED_TTL)

    def __len__(self) -> int:
        return len(self._users)
