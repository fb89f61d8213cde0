"""The input rules of the registry's operations beside the token service (config.py holds the
rest and imports these): the catalog index (--catalog-*), the storage acmebox watches
(--registry-storage) and `acmebox gc`'s settings. Pure checks: nothing here reads the registry.
"""

from __future__ import annotations

import re
import shlex
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from acmebox.errors import ConfigError


@dataclass(frozen=True)
class CatalogSettings:
    """The catalog index: the registry's own URL (read directly) and its notifications' secret."""

    registry: str
    secret: str

    @classmethod
    def build(cls, url: str | None, secret: str | None, auth: Path | None) -> CatalogSettings | None:
        """None without --catalog-registry; else ConfigError for a bad URL or secret, or no token service
        (`auth` is the htpasswd file: the index mints its own pull tokens). An empty secret (the
        seed's `docker-compose up` without start-registry.sh's .env) leaves events unauthenticated:
        they are only hints to read a repository again, and a rebuild is then refused."""
        if not url:
            if secret:
                raise ConfigError("--catalog-secret needs --catalog-registry (the registry's own URL)")
            return None
        try:
            parts = urllib.parse.urlsplit(url)
            port_ok = parts.port is None or parts.port > 0  # .port raises ValueError past 65535
        except ValueError:
            port_ok = False
        if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(f"--catalog-registry {url!r}: want the registry's URL, e.g. http://registry:5000")
        if secret and not re.fullmatch(r"[!-~]{16,}", secret):
            raise ConfigError("--catalog-secret: want 16 or more printable ASCII characters, no spaces "
                              "(the registry's notifications send it as `Authorization: Bearer ...`)")
        if auth is None:
            raise ConfigError("--catalog-registry needs --auth-htpasswd (the index reads with tokens it mints)")
        return cls(url.rstrip("/"), secret or "")


def check_storage(storage: Path | None) -> Path | None:
    """The registry's storage root as given, if it is a directory (ConfigError if not)."""
    if storage is not None and not storage.is_dir():
        raise ConfigError(f"--registry-storage {storage}: not a directory (the registry's storage root)")
    return storage


@dataclass(frozen=True)
class GcSettings:
    """`acmebox gc`: the garbage-collect command line, the storage root (bytes freed), the certs
    dir (the maintenance flag), whether to remove untagged manifests, the drain and announced
    seconds."""

    command: tuple[str, ...]
    storage: Path
    certs_dir: Path
    delete_untagged: bool = False
    drain: float = 10.0
    expect: float = 300.0
    timeout: float = 3600.0

    @classmethod
    def build(cls, *, config: Path | None, command: str | None, storage: Path | None, certs_dir: Path,
              delete_untagged: bool, drain: float, expect: float, timeout: float = 3600.0) -> GcSettings:
        """ConfigError for a missing storage root or certs dir, no way to run the collector (a
        config file that is not there, a command that cannot be found), or drain/expect/timeout
        outside 0-3600, 10-86400 and 1-86400 seconds: all before the registry is made read-only."""
        if storage is None or check_storage(storage) is None:
            raise ConfigError("gc needs --registry-storage (the registry's storage root: bytes freed count there)")
        if not certs_dir.is_dir():
            raise ConfigError(f"--certs-dir {certs_dir}: not a directory (the maintenance flag goes there)")
        if not 0 <= drain <= 3600 or not 10 <= expect <= 86400 or not 1 <= timeout <= 86400:
            raise ConfigError("--drain must be 0 to 3600 seconds, --expect 10 to 86400 and --timeout 1 to 86400")
        if command:
            try:
                argv = tuple(shlex.split(command))
            except ValueError as e:
                raise ConfigError(f"--registry-command: {e}") from None
            if not argv:
                raise ConfigError("--registry-command is empty")
            found = shutil.which(argv[0])
            if found is None or not Path(found).is_file():
                raise ConfigError(f"--registry-command: {argv[0]!r} is not a program found here")
        else:
            if config is None:
                raise ConfigError("gc needs --registry-config (the registry's config.yml) or --registry-command")
            if not config.is_file():
                raise ConfigError(f"--registry-config {config}: not a file (the registry's config.yml)")
            binary = shutil.which("docker-registry") or shutil.which("registry")
            if binary is None:
                raise ConfigError("no registry binary here (docker-registry or registry): run gc where the "
                                  "registry is, or give --registry-command")
            argv = (binary, "garbage-collect", str(config))
        return cls(argv, storage, certs_dir, delete_untagged, drain, expect, timeout)
