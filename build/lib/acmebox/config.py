"""Validated settings: what to certify, where the CA is, where files go.

Everything a user types passes through here first, so bad input fails with one clear line
(a ConfigError) before any file is touched or any request is sent.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acmebox.errors import ConfigError
from acmebox.keys import KEY_TYPES

if TYPE_CHECKING:
    from acmebox.reload import ReloadTarget

LE_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# Orders in flight at once. Let's Encrypt allows a burst of 200 new-order requests per IP and
# 300 new orders per account per 3 hours: 50 at once stays well inside both, so a restart that
# finds many certificates due neither trips the per-IP limit nor empties the account's bucket
# in one go.
MAX_CONCURRENT_ORDERS = 50

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL = re.compile(r"^[^@\s,;:<>()\[\]\"]+@[^@\s,;:<>()\[\]\"]+\.[^@\s,;:<>()\[\]\".]+$")


def normalize_domain(raw: str) -> str:
    """A lower-case ASCII (punycode) DNS name that HTTP-01 can validate, or a ConfigError."""
    name = raw.strip().rstrip(".").lower()
    if not name:
        raise ConfigError("empty domain name")
    if "*" in name:
        raise ConfigError(f"wildcard domain {raw!r}: HTTP-01 cannot validate wildcards; list each name instead")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise ConfigError(f"{raw!r} is an IP address; acmebox issues certificates for DNS names only")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"malformed domain name {raw!r}") from None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(f"malformed domain name {raw!r}")
    if labels[-1].isdigit():
        raise ConfigError(f"malformed domain name {raw!r}: the top-level label is numeric")
    return name


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
        names: list[str] = []
        for raw in raw_names:
            name = normalize_domain(raw)
            if name in names:
                raise ConfigError(f"duplicate domain name {name!r}")
            names.append(name)
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
    max_concurrent_orders: int = MAX_CONCURRENT_ORDERS

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for spec in self.certs:
            for n in spec.names:
                if n in seen:
                    raise ConfigError(f"domain {n!r} is in two certificates ({seen[n]} and {spec.name})")
                seen[n] = spec.name
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ConfigError(f"CA bundle {self.ca_bundle} does not exist or is not a file")
        if bool(self.eab_kid) != bool(self.eab_hmac_key):
            raise ConfigError("external account binding needs both --eab-kid and --eab-hmac-key")
        if not self.directory.startswith(("https://", "http://")):
            raise ConfigError(f"bad directory URL {self.directory!r}: want https://...")
        if not 1 <= self.max_concurrent_orders <= 1000:
            raise ConfigError(f"--max-concurrent-orders must be between 1 and 1000, not {self.max_concurrent_orders}")


def certs_from_toml(path: Path, key_type: str, profile: str | None) -> tuple[list[CertSpec], str | None]:
    """Certificates (and optionally the email) from a small TOML file:

    email = "you@example.com"
    [[certificate]]
    names = ["registry.example.com", "ui.example.com"]
    key_type = "ec384"        # optional, default --key-type
    profile = "shortlived"    # optional, default --profile
    """
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    unknown = set(data) - {"email", "certificate"}
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    specs = []
    for i, entry in enumerate(data.get("certificate", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("names"), list):
            raise ConfigError(f"config file {path}: certificate {i + 1} needs names = [...]")
        extra = set(entry) - {"names", "key_type", "profile"}
        if extra:
            raise ConfigError(f"config file {path}: certificate {i + 1}: unknown key(s) {', '.join(sorted(extra))}")
        specs.append(CertSpec.build([str(n) for n in entry["names"]], str(entry.get("key_type", key_type)),
                                    entry.get("profile", profile)))  # fmt: skip
    email = data.get("email")
    return specs, str(email) if email else None
