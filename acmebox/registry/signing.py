"""The token signing keys and the certificate bundle the registry trusts (`auth.token.rootcertbundle`).

Keys rotate by pre-publication: besides the current key, which signs, a next key is made ahead of
use and its certificate published in the bundle. The registry reads the bundle only when it
starts, so once it has been (re)started after that, `rotate` can make the next key current
without restarting the registry: no pull fails. The key rotated out stays in the bundle
("retiring") until the longest token it signed has expired, then leaves it.

Files (the keys 0600, in the state dir):
- KEY            the current key (the `--auth-key` path, as before rotation existed)
- KEY.next       the next key, already in the bundle
- KEY.retiring   JSON {thumbprint: Unix time after which its certificate leaves the bundle}
- KEY.lock       serialises the service and the `token-key` command
- CERT           the bundle (`--auth-cert`): current, next and retiring certificates, current first

Tokens name their key in two ways (token.py): `x5c`, the signing certificate, which distribution
2.8 and 3.x both verify against the bundle, and `kid`, the key's JWK thumbprint (RFC 7638),
which 3.x also matches against the bundle's keys.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from acmebox import keys
from acmebox.errors import AcmeboxError, ConfigError
from acmebox.fsutil import atomic_write, atomic_write_json, write_new

log = logging.getLogger(__name__)

# distribution accepts a token up to this long after its exp (registry/auth/token: Leeway).
REGISTRY_LEEWAY = 60


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key ID distribution 3.x gives a key of its rootcertbundle (GetJWKThumbprint): the
    base64url SHA-256 of the RFC 7638 JSON {crv, kty, x, y}. Like distribution, the coordinates
    are their minimal big-endian bytes; RFC 7638 pads them to 32. The two agree unless a
    coordinate starts with a zero byte, and `new_key` never makes such a key."""
    numbers = public_key.public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    body = f'{{"crv":"P-256","kty":"EC","x":"{b64(numbers.x)}","y":"{b64(numbers.y)}"}}'
    return base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=").decode()


def new_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key whose coordinates fill 32 bytes each, so distribution's thumbprint is RFC 7638's."""
    while True:
        key = keys.generate("ec256")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        n = key.public_key().public_numbers()
        if n.x.bit_length() > 248 and n.y.bit_length() > 248:
            return key


@dataclass(frozen=True)
class Signer:
    """The current key, with what a token's header says about it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    kid: str
    x5c: tuple[str, ...]  # standard base64 DER, leaf first (RFC 7515 4.1.6)
    stamp: tuple[int, int]  # the key file's (inode, mtime_ns): the service reloads when it changes
    next_change: float | None  # Unix time a retiring certificate leaves the bundle


@dataclass(frozen=True)
class KeyState:
    """What `token-key show` prints: thumbprints, the next key's publication, the retirements."""

    current: str
    next: str
    next_published: float
    retiring: dict[str, float]


class Keyring:
    """The signing keys of one token service: `key` (the current key's path), `cert` (the bundle)."""

    def __init__(self, key: Path, cert: Path, issuer: str) -> None:
        self.key_path, self.cert_path, self.issuer = key, cert, issuer
        self.next_path = key.with_name(key.name + ".next")
        self.retiring_path = key.with_name(key.name + ".retiring")
        self.lock_path = key.with_name(key.name + ".lock")

    def load(self, now: float | None = None) -> Signer:
        """Make missing keys, bring the bundle up to date (dropping certificates whose retirement
        time has passed), and return the current key. Raises ConfigError for unusable files."""
        now = time.time() if now is None else now
        with self._locked():
            return self._load(now)

    def state(self) -> KeyState:
        with self._locked():
            signer = self._load(time.time())
            upcoming = _read_key(self.next_path)
            return KeyState(signer.kid, jwk_thumbprint(upcoming.public_key()), self.next_path.stat().st_mtime,
                            self._retiring())

    def rotate(self, retire_after: float, now: float | None = None) -> tuple[str, str, float]:
        """Make the next key current and a new next key; the old key's certificate stays in the
        bundle for `retire_after` seconds. Returns (old thumbprint, new thumbprint, retired at)."""
        now = time.time() if now is None else now
        with self._locked():
            old = self._load(now)
            upcoming = _read_key(self.next_path)
            until = now + retire_after
            retiring = self._retiring()
            retiring[old.kid] = max(until, retiring.get(old.kid, 0))
            self._write(lambda: atomic_write_json(self.retiring_path, retiring, 0o600), self.retiring_path)
            # The next key becomes current in one rename; a crash before the old .next is removed
            # leaves current == next, which _load mends with a new next key.
            self._write(lambda: atomic_write(self.key_path, keys.to_pem(upcoming), 0o600), self.key_path)
            self.next_path.unlink()
            new = self._load(now)
        log.info("token signing key rotated: %s now signs; %s retires at %s", new.kid, old.kid, _iso(until))
        return old.kid, new.kid, until

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise ConfigError(f"token signing key {self.key_path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self, now: float) -> Signer:
        current = self._ensure_key(self.key_path)
        upcoming = self._ensure_key(self.next_path)
        if keys.public_der(upcoming) == keys.public_der(current):  # a rotation stopped half-way
            self.next_path.unlink()
            upcoming = self._ensure_key(self.next_path)
        retiring = self._retiring()
        kept = {kid: until for kid, until in retiring.items() if until > now}
        if kept != retiring:
            self._write(lambda: atomic_write_json(self.retiring_path, kept, 0o600), self.retiring_path)
        old = self._bundle()
        by_kid = {jwk_thumbprint(c.public_key()): c for c in old}  # type: ignore[arg-type]
        current_kid, next_kid = jwk_thumbprint(current.public_key()), jwk_thumbprint(upcoming.public_key())
        cert = by_kid.get(current_kid) or self._certificate(current)
        bundle = [cert, by_kid.get(next_kid) or self._certificate(upcoming)]
        bundle += [c for kid, c in by_kid.items() if kid in kept and kid not in (current_kid, next_kid)]
        if bundle != old:
            pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle)
            self.cert_path.parent.mkdir(parents=True, exist_ok=True)
            self._write(lambda: atomic_write(self.cert_path, pem, 0o644), self.cert_path, "token certificate")
            log.info("wrote the registry's token certificates %s: current %s, next %s, retiring %s",
                     self.cert_path, current_kid, next_kid, sorted(kept) or "none")
        st = self.key_path.stat()
        der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        return Signer(current, cert, current_kid, (der,), (st.st_ino, st.st_mtime_ns), min(kept.values(), default=None))

    def _ensure_key(self, path: Path) -> ec.EllipticCurvePrivateKey:
        if not path.exists():
            self._write(lambda: write_new(path, keys.to_pem(new_key()), 0o600), path)
            log.info("created a registry token signing key %s", path)
        return _read_key(path)

    def _retiring(self) -> dict[str, float]:
        try:
            raw = json.loads(self.retiring_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"token key state {self.retiring_path} is not readable JSON ({e})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, int | float) for v in raw.values()):
            raise ConfigError(f"token key state {self.retiring_path}: want {{thumbprint: unix time}}")
        return {str(k): float(v) for k, v in raw.items()}

    def _bundle(self) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates(self.cert_path.read_bytes())
        except (OSError, ValueError):  # missing or damaged: written anew from the keys
            return []

    def _certificate(self, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        return keys.self_signed(key, f"{self.issuer} registry token signer", dt.datetime.now(dt.UTC),
                                dt.timedelta(days=3650)).sign(key, hashes.SHA256())

    @staticmethod
    def _write(action: Callable[[], None], path: Path, what: str = "token signing key") -> None:
        try:
            action()
        except OSError as e:
            raise ConfigError(f"{what} {path}: {e.strerror or e}") from None


def check_signing_key(key_path: Path) -> None:
    """ConfigError unless `key_path` is missing (it will be made) or an EC P-256 private key.
    Reads only: the CLI calls it before anything is written."""
    if key_path.exists():
        _read_key(key_path)


def _read_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = keys.from_pem(key_path.read_bytes())
    except OSError as e:
        raise ConfigError(f"token signing key {key_path}: {e.strerror or e}") from None
    except ValueError:
        raise ConfigError(f"token signing key {key_path} is not a readable private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or keys.key_type_of(key) != "ec256":
        raise ConfigError(f"token signing key {key_path} is not an EC P-256 key")
    return key


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class RegistryRefused(AcmeboxError):
    """The registry does not accept a token signed with the next key (it was not restarted since
    that key was published)."""

    exit_code = 1


def registry_trusts(registry: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate | None, service: str,
                    issuer: str, timeout: float = 10) -> bool:
    """Whether the registry at `registry` (base URL) answers `GET /v2/` with 200 to a token
    signed by `key` (with `cert` as x5c, or only the kid when None). Raises AcmeboxError when
    the registry cannot be asked."""
    now = int(time.time())
    claims = {"iss": issuer, "sub": "", "aud": service, "iat": now, "nbf": now - 10, "exp": now + 60,
              "jti": os.urandom(16).hex(), "access": []}
    headers: dict[str, object] = {"kid": jwk_thumbprint(key.public_key()), "typ": "JWT"}
    if cert is not None:
        headers["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    token = jwt.encode(claims, key, algorithm="ES256", headers=headers)
    request = urllib.request.Request(registry.rstrip("/") + "/v2/", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            return False
        raise AcmeboxError(f"registry {registry}: /v2/ answered {e.code}") from None
    except (OSError, ValueError) as e:
        raise AcmeboxError(f"registry {registry}: {getattr(e, 'reason', None) or e}") from None


def rotate_command(keyring: Keyring, ttl: int, service: str, registry: str | None) -> int:
    """`acmebox token-key rotate`: refuse (exit 1) when `registry` is given and does not accept the
    next key yet; otherwise rotate, retiring the old key after `ttl` plus the registry's leeway.
    Prints what happened and what remains to do."""
    state = keyring.state()
    if registry is not None:
        upcoming = _read_key(keyring.next_path)
        cert = next((c for c in _certs(keyring.cert_path) if jwk_thumbprint(c.public_key()) == state.next), None)  # type: ignore[arg-type]
        if not registry_trusts(registry, upcoming, cert, service, keyring.issuer):
            raise RegistryRefused(
                f"the registry at {registry} does not trust the next key {state.next} yet: restart it (it reads "
                f"{keyring.cert_path} when it starts; the key is there since {_iso(state.next_published)}), "
                "then rotate again"
            )
    old, new, until = keyring.rotate(ttl + REGISTRY_LEEWAY)
    checked = f"the registry at {registry} accepts it" if registry else (
        f"not checked with the registry (--registry): it trusts the key if it started after "
        f"{_iso(state.next_published)}")
    print(f"rotated: {new} signs tokens from now on ({checked}).")
    print(f"retiring: {old} stays in {keyring.cert_path} until {_iso(until)} (tokens it signed expire by then).")
    print(f"next: {keyring.state().next} is published; the registry trusts it after its next restart.")
    return 0


def show_command(keyring: Keyring) -> int:
    """`acmebox token-key show`: the keys by thumbprint and where each stands."""
    s = keyring.state()
    print(f"current  {s.current}  signs tokens")
    print(f"next     {s.next}  in {keyring.cert_path} since {_iso(s.next_published)}")
    for kid, until in sorted(s.retiring.items(), key=lambda kv: kv[1]):
        print(f"retiring {kid}  leaves {keyring.cert_path} at {_iso(until)}")
    return 0


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []
