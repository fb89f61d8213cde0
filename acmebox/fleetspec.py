"""The fleet's settings (`--fleet-frontends`, `--fleet-secret-file`): the rule for them, apart from
fleet.py so config.py can build them without importing the fleet's server side (aiohttp, the store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acmebox.errors import ConfigError
from acmebox.sealed import FleetKeys, read_secret


@dataclass(frozen=True)
class FleetSpec:
    """`frontends`: the name that resolves to every frontend; `tls_port`/`http_port`: where
    each listens; `keys`: derived from the fleet secret file."""

    frontends: str
    keys: FleetKeys
    tls_port: int = 443
    http_port: int = 80

    @classmethod
    def parse(cls, frontends: str | None, secret_file: Path | None) -> FleetSpec | None:
        if not frontends and secret_file is None:
            return None
        if not frontends or secret_file is None:
            raise ConfigError("--fleet-frontends and --fleet-secret-file go together")
        host, sep, port = frontends.rpartition(":")
        if sep and port.isdigit():
            return cls(host, read_secret(secret_file), int(port))
        if not frontends.replace(".", "").replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"bad --fleet-frontends {frontends!r}: want a DNS name such as tasks.nginx")
        return cls(frontends, read_secret(secret_file))
