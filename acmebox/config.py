"""Validated settings: what to certify, where the CA is, where files go; and every rule for input.

Everything a user types passes through here first, so bad input fails with one clear line
(a ConfigError) before any file is touched or any request is sent. `Config.from_sources(Sources)`
is the one entry: cli.py maps flags and environment to a `Sources` (raw values, no rule applied)
and this module applies every rule. A `Config` (and `ReloadSpec`) checks its own values when made,
so one built another way (a test, another entry point) cannot hold what the command line refuses.
"""

from __future__ import annotations

import grp
import logging
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from acmebox.configfile import PROFILE_NAME, certificates_from_toml
from acmebox.errors import ConfigError
from acmebox.fleetspec import FleetSpec
from acmebox.keys import KEY_TYPES
from acmebox.names import canonical_name, canonical_names, check_addresses
from acmebox.operations import CatalogSettings, check_storage
from acmebox.statedir import StateDir

log = logging.getLogger(__name__)

LE_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# Orders in flight at once. Let's Encrypt allows a burst of 200 new-order requests per IP and
# 300 new orders per account per 3 hours: 50 at once stays well inside both, so a restart that
# finds many certificates due neither trips the per-IP limit nor empties the account's bucket
# in one go.
MAX_CONCURRENT_ORDERS = 50

_EMAIL = re.compile(r"^[^@\s,;:<>()\[\]\"]+@[^@\s,;:<>()\[\]\"]+\.[^@\s,;:<>()\[\]\".]+$")


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
class ReloadSpec:
    """How nginx is told about new certificates (`--reload` KIND, `--reload-target` TARGET); checked
    when made. acmebox.reload turns it into the action."""

    kind: str
    target: str | None = None

    KINDS: ClassVar[tuple[str, ...]] = ("file", "docker", "signal", "command", "none")
    _WANTS: ClassVar[dict[str, str]] = {"docker": "container name or label=KEY=VALUE", "signal": "a PID or PID file",
                                        "command": "a command line", "file": "the generation file's path"}

    def __post_init__(self) -> None:
        kind, target = self.kind, self.target
        if kind not in self.KINDS:
            raise ConfigError(f"unknown reload kind {kind!r}; choose one of {', '.join(self.KINDS)}")
        if kind != "none" and not target:
            raise ConfigError(f"--reload {kind} needs --reload-target ({self._WANTS[kind]})")
        if kind == "signal" and not (target or "").isdigit() and not Path(target or "").parent.is_dir():
            raise ConfigError(f"--reload-target {target!r} is neither a PID nor a PID file path")
        if kind == "file" and not Path(target or "").is_absolute():
            raise ConfigError(f"--reload-target {target!r}: the generation file needs an absolute path")


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

    @classmethod
    def build(cls, htpasswd: Path | None, state_dir: Path, *, key: Path | None = None, cert: Path | None = None,
              service: str = "registry", issuer: str = "acmebox", ttl: int = 300, acl: Path | None = None,
              trusted_proxies: tuple[str, ...] | None = None) -> TokenAuth | None:
        """The token service's settings from the `--auth-*` values, or None without an htpasswd file (then
        no other `--auth-*` file or proxy may be given). The files are read here, not only at startup, so
        a bad one is refused before anything is written. ConfigError names the flag or file."""
        if htpasswd is None:
            given = (("--auth-acl", acl), ("--auth-key", key), ("--auth-cert", cert),
                     ("--auth-trusted-proxy", trusted_proxies))
            for flag, value in given:
                if value is not None:
                    raise ConfigError(f"{flag} needs --auth-htpasswd")
            return None
        if ttl < 30 or ttl > 86400:
            raise ConfigError("--auth-ttl must be between 30 and 86400 seconds")
        for what, name in (("--auth-service", service), ("--auth-issuer", issuer)):
            if not name or not name.isprintable() or name != name.strip() or len(name) > 255:
                raise ConfigError(f"bad {what} {name!r}: want a non-empty name without spaces at its ends, "
                                  "as in the registry's auth.token settings")
        # imported late: `--help` stays fast, and the ACME side never loads the registry's parts
        from acmebox.registry import acl as acl_file
        from acmebox.registry import htpasswd as users
        from acmebox.registry import proxies, signing

        users.Htpasswd(htpasswd)
        acl_file.load_acl(acl)
        if key is not None:
            signing.check_signing_key(key)
        for entry in trusted_proxies or ():
            proxies.check_proxy_entry(entry)
        return cls(htpasswd, key or StateDir(state_dir).token_key, cert or StateDir(state_dir).token_cert, service,
                   issuer, ttl, acl, tuple(trusted_proxies or ()))


@dataclass(frozen=True)
class Sources:
    """What the flags, the environment and the files they name gave, before any rule: the input of
    `Config.from_sources`. Text stays as typed (HOST:PORT, key mode and group, reload kind, names);
    argparse has made paths `Path`s and counts `int`s. The defaults are the flags' defaults."""

    cert_groups: tuple[tuple[str, ...], ...] = ()  # one certificate's names per group, as typed, in source order
    config_file: Path | None = None  # --config: TOML [[certificate]] tables, read by from_sources
    email: str | None = None
    directory: str | None = None  # None: Let's Encrypt (production, or staging with `staging`)
    staging: bool = False
    ca_bundle: Path | None = None
    certs_dir: Path = Path("/etc/letsencrypt")
    state_dir: Path = Path("/var/lib/acmebox")
    listen: str = "0.0.0.0:8080"
    key_type: str = "ec256"
    profile: str | None = None
    key_group: str | None = None
    key_mode: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    ari: bool = True
    reload: str = "none"
    reload_target: str | None = None
    reload_verify: str | None = None
    self_check: bool = True
    self_check_via: str | None = None
    tls_alpn_listen: str | None = None
    auth_htpasswd: Path | None = None
    auth_key: Path | None = None
    auth_cert: Path | None = None
    auth_service: str = "registry"
    auth_issuer: str = "acmebox"
    auth_ttl: int = 300
    auth_acl: Path | None = None
    auth_trusted_proxies: tuple[str, ...] | None = None  # None: not given (an empty flag counts as given)
    catalog_registry: str | None = None
    catalog_secret: str | None = None
    registry_storage: Path | None = None
    max_concurrent_orders: int = MAX_CONCURRENT_ORDERS
    fleet_frontends: str | None = None  # --fleet-frontends: the name of every frontend (Swarm: tasks.nginx)
    fleet_secret_file: Path | None = None
    once: bool = False
    force_renew: bool = False
    ignore_ledger: bool = False
    compose_domain: str | None = None  # DOCKER_REGISTRY_DOMAIN_NAME as typed: nginx's template uses it as is
    probe_listen: bool = True  # bind `listen` for a moment (`check` runs beside the service, whose port it is)


@dataclass(frozen=True)
class TokenKeySettings:
    """What `acmebox token-key show|rotate` works on: the signing key and certificate, the token lifetime a
    retiring key must outlive (s), the registry to ask whether it trusts the next key (http(s)://HOST[:PORT])."""

    key: Path
    cert: Path
    issuer: str
    service: str
    ttl: int
    registry: str | None

    @classmethod
    def build(cls, state_dir: Path, *, key: Path | None, cert: Path | None, issuer: str, service: str, ttl: int,
              registry: str | None) -> TokenKeySettings:
        """ConfigError for a missing or unusable key, a lifetime outside 30..86400 s or a bad registry URL."""
        key = key or StateDir(state_dir).token_key
        if not key.is_file():
            raise ConfigError(f"no token signing key at {key}: the service makes it when it first starts (--auth-key?)")
        from acmebox.registry import signing  # imported late, as in TokenAuth.build

        signing.check_signing_key(key)
        if ttl < 30 or ttl > 86400:
            raise ConfigError("--auth-ttl must be between 30 and 86400 seconds")
        if registry is not None and not re.match(r"https?://[^\s/]+", registry):
            raise ConfigError(f"bad --registry {registry[:200]!r}: want http(s)://HOST[:PORT]")
        return cls(key, cert or StateDir(state_dir).token_cert, issuer, service, ttl, registry)

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
    reload: ReloadSpec | None = None
    reload_verify: HostPort | None = None
    token_auth: TokenAuth | None = None
    catalog: CatalogSettings | None = None
    registry_storage: Path | None = None  # /metrics and /healthz watch its use
    self_check: bool = True
    self_check_via: HostPort | None = None
    key_mode: int | None = None  # None: keep the previous key's mode (0600 for a first key)
    key_group: int | None = None  # None: keep the previous key's group
    max_concurrent_orders: int = MAX_CONCURRENT_ORDERS
    tls_alpn_listen: HostPort | None = None  # TLS-ALPN-01 instead of HTTP-01 (RFC 8737), opt-in
    fleet: FleetSpec | None = None  # frontends on other nodes, fed by followers (Swarm)

    def __post_init__(self) -> None:
        seen: dict[str, CertSpec] = {}
        for spec in self.certs:
            for n in spec.names:
                if n in seen:
                    raise ConfigError(f"domain {n!r} is in two certificates ({','.join(seen[n].names)} and "
                                      f"{','.join(spec.names)}); give each name to one certificate")
                seen[n] = spec
        check_directory_url(self.directory)
        check_dir(self.certs_dir, "certs dir")
        check_dir(self.state_dir, "state dir")
        check_ca_bundle(self.ca_bundle)
        if bool(self.eab_kid) != bool(self.eab_hmac_key):
            raise ConfigError("external account binding needs both --eab-kid and --eab-hmac-key")
        check_addresses(list(seen), self.directory)
        if not 1 <= self.max_concurrent_orders <= 1000:
            raise ConfigError(f"--max-concurrent-orders must be between 1 and 1000, not {self.max_concurrent_orders}")

    @classmethod
    def from_sources(cls, raw: Sources) -> Config:
        """The configuration `raw` describes, every rule applied; the first thing wrong is a ConfigError
        of one line. Writes nothing; reads the files named (--config, the token service's) and, with
        `raw.probe_listen`, binds the listen address for a moment."""
        if raw.directory and raw.staging:
            raise ConfigError("--staging and --directory are exclusive")
        if raw.force_renew and not raw.once:
            raise ConfigError("--force-renew needs --once; to renew through a running service use "
                              "`acmebox renew --force`")
        if raw.ignore_ledger and not raw.force_renew:
            raise ConfigError("--ignore-ledger needs --force-renew (and --once)")
        check_profile(raw.profile)
        specs = [CertSpec.build(list(group), raw.key_type, raw.profile) for group in raw.cert_groups if group]
        if not specs and raw.config_file is None:
            CertSpec.build([])  # raises the "no domain given" error
        email = raw.email
        if raw.config_file is not None:
            entries, file_email = certificates_from_toml(raw.config_file, raw.key_type, raw.profile)
            specs += [CertSpec.build(list(names), kt, pr) for names, kt, pr in entries]
            email = email or file_email
        specs = merged(specs)
        warn_if_not_canonical(raw.compose_domain, specs[0].names)
        key_group = parse_key_group(raw.key_group) if raw.key_group else None
        key_mode = parse_key_mode(raw.key_mode) if raw.key_mode else (0o640 if key_group is not None else None)
        config = cls(
            certs=tuple(specs),
            email=normalize_email(email) if email else None,
            directory=raw.directory or (LE_STAGING if raw.staging else LE_PRODUCTION),
            ca_bundle=raw.ca_bundle,
            certs_dir=raw.certs_dir,
            state_dir=raw.state_dir,
            listen=HostPort.parse(raw.listen),
            eab_kid=raw.eab_kid,
            eab_hmac_key=raw.eab_hmac_key,
            ari=raw.ari,
            reload=ReloadSpec(raw.reload, raw.reload_target),
            reload_verify=HostPort.parse(raw.reload_verify, "--reload-verify address") if raw.reload_verify else None,
            token_auth=TokenAuth.build(
                raw.auth_htpasswd, raw.state_dir, key=raw.auth_key, cert=raw.auth_cert, service=raw.auth_service,
                issuer=raw.auth_issuer, ttl=raw.auth_ttl, acl=raw.auth_acl, trusted_proxies=raw.auth_trusted_proxies,
            ),
            catalog=CatalogSettings.build(raw.catalog_registry, raw.catalog_secret, raw.auth_htpasswd),
            registry_storage=check_storage(raw.registry_storage),
            self_check=raw.self_check,
            self_check_via=HostPort.parse(raw.self_check_via, "--self-check-via address") if raw.self_check_via
            else None,
            key_mode=key_mode,
            key_group=key_group,
            max_concurrent_orders=raw.max_concurrent_orders,
            tls_alpn_listen=HostPort.parse(raw.tls_alpn_listen, "--tls-alpn-listen address") if raw.tls_alpn_listen
            else None,
            fleet=FleetSpec.parse(raw.fleet_frontends, raw.fleet_secret_file),
        )
        if raw.probe_listen:
            check_listen(config.listen)
        return config


def merged(specs: list[CertSpec]) -> list[CertSpec]:
    """One certificate per set of names, whichever sources named it; a name in two different
    certificates stays an error (Config says which)."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for spec in specs:
        key = tuple(sorted(spec.names))
        if key not in seen:
            seen.add(key)
            out.append(spec)
    if not out:
        raise ConfigError("no certificate configured: --config names none, and no --domain or --cert is given")
    return out


def warn_if_not_canonical(typed: str | None, names: tuple[str, ...]) -> None:
    """The compose file hands DOCKER_REGISTRY_DOMAIN_NAME (`typed`) to nginx's template as typed; if
    that is not the canonical form, nginx looks for a live/ directory acmebox never writes."""
    typed = (typed or "").strip()
    try:
        same = bool(typed) and canonical_name(typed) == names[0]
    except ConfigError:
        return
    if same and typed != names[0]:
        log.warning("DOCKER_REGISTRY_DOMAIN_NAME=%r: the certificate is written to live/%s/; nginx's template "
                    "must use that form (compose/start-registry.sh writes it to .env)", typed, names[0])


def check_profile(profile: str | None, what: str = "--profile") -> None:
    """An empty profile means the CA's default, as before."""
    if profile and not PROFILE_NAME.match(profile):
        raise ConfigError(f"bad {what} {profile[:80]!r}: want a profile name such as shortlived")


def check_directory_url(url: str) -> None:
    """An http(s) URL with a host, a valid port if any, and no white space."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        scheme, host = "", None
    if scheme not in ("https", "http") or not host or any(c.isspace() for c in url):
        raise ConfigError(f"bad directory URL {url[:200]!r}: want https://HOST/...")


def check_listen(listen: HostPort) -> None:
    """Refuse port 0 and addresses this host cannot bind, before anything is written (the real
    bind happens later, after the certs and state directories are prepared)."""
    if listen.port == 0:
        raise ConfigError(f"bad listen address {str(listen)!r}: port 0 picks a random port the CA cannot find")
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"bad listen address {str(listen)!r}: {getattr(e, 'strerror', None) or e}") from None
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as e:
        raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}") from None


def check_dir(path: Path, what: str) -> None:
    """A directory that exists must be one (a missing one is made later)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is not usable: not a directory")


def check_ca_bundle(path: Path | None) -> None:
    """None, or a file holding at least one PEM certificate."""
    if path is None:
        return
    if not path.is_file():
        raise ConfigError(f"CA bundle {path} does not exist or is not a file")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"CA bundle {path} holds no usable PEM certificate ({reason})") from None


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
