"""Validated settings: what to certify, where the CA is, where files go.

Everything a user types passes through here first, so bad input fails with one clear line
(a ConfigError) before any file is touched or any request is sent.
"""

from __future__ import annotations

import grp
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acmebox.errors import ConfigError
from acmebox.keys import KEY_TYPES
from acmebox.names import canonical_name, canonical_names

if TYPE_CHECKING:
    from acmebox.fleet import FleetSpec
    from acmebox.reload import ReloadTarget

LE_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# Orders in flight at once. Let's Encrypt allows a burst of 200 new-order requests per IP and
# 300 new orders per account per 3 hours: 50 at once stays well inside both, so a restart that
# finds many certificates due neither trips the per-IP limit nor empties the account's bucket
# in one go.
MAX_CONCURRENT_ORDERS = 50

_EMAIL = re.compile(r"^[^@\s,;:<>()\[\]\"]+@[^@\s,;:<>()\[\]\"]+\.[^@\s,;:<>()\[\]\".]+$")


def normalize_domain(raw: str) -> str:
    """The canonical form of one name (see acmebox.names), or a ConfigError."""
    return canonical_name(raw)


def normalize_email(raw: str) -> str:
    email = raw.strip()
    if email.lower().startswith("mailto:"):
        email = email[len("mailto:") :]
    if not _EMAIL.match(email):
        raise ConfigError(f"bad email address {raw!r}")
    return email


@dataclass(frozen=True)
class CertSpec:
    """One certificate: its names (the first names the live/ directory), key type, profile."""

    names: tuple[str, ...]
    key_type: str = "ec256"
    profile: str | None = None

    @property
    def name(self) -> str:
        return self.names[0]

    @classmethod
    def build(cls, raw_names: list[str], key_type: str = "ec256", profile: str | None = None) -> CertSpec:
        if not raw_names:
            raise ConfigError("no domain given: pass --domain (or set DOCKER_REGISTRY_DOMAIN_NAME)")
        names = canonical_names(raw_names)
        if key_type not in KEY_TYPES:
            raise ConfigError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")
        return cls(tuple(names), key_type, profile or None)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, raw: str, what: str = "listen address") -> HostPort:
        host, sep, port = raw.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"bad {what} {raw!r}: want HOST:PORT, e.g. 0.0.0.0:8080")
        return cls(host.strip("[]") or "0.0.0.0", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TokenAuth:
    """Settings of the registry token service (enabled when an htpasswd file is given)."""

    htpasswd: Path
    key: Path
    cert: Path
    service: str = "registry"
    issuer: str = "acmebox"
    ttl: int = 300
    acl: Path | None = None
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    certs: tuple[CertSpec, ...]
    email: str | None
    directory: str = LE_PRODUCTION
    ca_bundle: Path | None = None
    certs_dir: Path = Path("/etc/letsencrypt")
    state_dir: Path = Path("/var/lib/acmebox")
    listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 8080))
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    ari: bool = True
    reload: ReloadTarget | None = None
    reload_verify: HostPort | None = None
    token_auth: TokenAuth | None = None
    self_check: bool = True
    self_check_via: HostPort | None = None
    key_mode: int | None = None  # None: keep the previous key's mode (0600 for a first key)
    key_group: int | None = None  # None: keep the previous key's group
    max_concurrent_orders: int = MAX_CONCURRENT_ORDERS
    fleet: FleetSpec | None = None  # frontends on other nodes, fed by followers (Swarm)

    def __post_init__(self) -> None:
        seen: dict[str, CertSpec] = {}
        for spec in self.certs:
            for n in spec.names:
                if n in seen:
                    raise ConfigError(f"domain {n!r} is in two certificates ({','.join(seen[n].names)} and "
                                      f"{','.join(spec.names)}); give each name to one certificate")  # fmt: skip
                seen[n] = spec
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ConfigError(f"CA bundle {self.ca_bundle} does not exist or is not a file")
        if bool(self.eab_kid) != bool(self.eab_hmac_key):
            raise ConfigError("external account binding needs both --eab-kid and --eab-hmac-key")
        if not self.directory.startswith(("https://", "http://")):
            raise ConfigError(f"bad directory URL {self.directory!r}: want https://...")
        if not 1 <= self.max_concurrent_orders <= 1000:
            raise ConfigError(f"--max-concurrent-orders must be between 1 and 1000, not {self.max_concurrent_orders}")


# Limits of the --config file: generous for any real registry, small enough that a hostile or
# broken file is refused in one line instead of exhausting memory or the stack.
TOML_MAX_BYTES = 64 * 1024 * 1024
TOML_MAX_STRING = 1024
# ACME profile names (draft-aaron-acme-profiles) are short tokens such as `shortlived`.
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CERT_KEYS = {"names": "a list of domain names", "key_type": f"one of {', '.join(KEY_TYPES)}",
              "profile": "a profile name such as shortlived"}  # fmt: skip


def _toml_str(value: object, where: str, want: str) -> str:
    if not isinstance(value, str) or not value or len(value) > TOML_MAX_STRING:
        raise ConfigError(f"{where} must be {want}")
    return value


def certs_from_toml(path: Path, key_type: str, profile: str | None) -> tuple[list[CertSpec], str | None]:
    """Certificates (and optionally the email) from a small TOML file:

    email = "you@example.com"
    [[certificate]]
    names = ["registry.example.com", "ui.example.com"]
    key_type = "ec384"        # optional, default --key-type
    profile = "shortlived"    # optional, default --profile

    Checked against that schema (types, unknown keys, sizes): a ConfigError of one line names
    the first thing wrong.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(TOML_MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    if len(raw) > TOML_MAX_BYTES:
        raise ConfigError(f"config file {path}: larger than {TOML_MAX_BYTES // 2**20} MiB")
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: nested too deeply") from None
    where = f"config file {path}"
    unknown = set(data) - {"email", "certificate"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))[:200]}")
    email = data.get("email")
    if email is not None:
        _toml_str(email, f"{where}: email", "an email address")
    entries = data.get("certificate", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: certificate must be an array of tables ([[certificate]])")
    specs = []
    for i, entry in enumerate(entries, 1):
        at = f"{where}: certificate {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table with names = [...]")
        extra = set(entry) - set(_CERT_KEYS)
        if extra:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(extra))[:200]}")
        names = entry.get("names")
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{at} needs names = [...] with at least one domain name")
        for n in names:
            _toml_str(n, f"{at}: names", "a list of domain names (strings)")
        kt = _toml_str(entry.get("key_type", key_type), f"{at}: key_type", _CERT_KEYS["key_type"])
        pr = entry.get("profile", profile)
        if pr is not None and not (isinstance(pr, str) and PROFILE_NAME.match(pr)):
            raise ConfigError(f"{at}: profile must be {_CERT_KEYS['profile']}")
        specs.append(CertSpec.build(list(names), kt, pr))
    return specs, email


def parse_key_mode(raw: str) -> int:
    """`--key-mode`: octal permissions for privkey.pem and combined.pem, e.g. 0640. The owner
    keeps read access; "other" never gets any (certbot's rule since its PR 6480)."""
    text = raw.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{3,4}", text):
        raise ConfigError(f"bad --key-mode {raw!r}: want octal permissions like 0600 or 0640")
    mode = int(text, 8)
    if mode & 0o007:
        raise ConfigError(f"--key-mode {raw}: a private key must not be accessible to others (want 0600 or 0640)")
    if mode & ~0o660 or not mode & 0o400:
        raise ConfigError(f"--key-mode {raw}: want read (and write) bits for owner and group only, e.g. 0640")
    return mode


def parse_key_group(raw: str) -> int:
    """`--key-group`: a group name known here, or a numeric GID (another container's group
    need not exist in this one)."""
    text = raw.strip()
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(f"--key-group {raw!r}: no such group here; give its numeric GID instead") from None
