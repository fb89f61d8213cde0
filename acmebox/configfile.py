"""The `--config` file: a small TOML file of certificates (and the account's email), read and checked
against its schema here; config.py turns its entries into CertSpecs with the other rules."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from acmebox.errors import ConfigError
from acmebox.keys import KEY_TYPES

Entry = tuple[list[str], str, str | None]  # one [[certificate]]: names, key type, profile

TOML_MAX_BYTES = 64 * 1024 * 1024
TOML_MAX_STRING = 1024
# ACME profile names (draft-aaron-acme-profiles) are short tokens such as `shortlived`.
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CERT_KEYS = {"names": "a list of domain names", "key_type": f"one of {', '.join(KEY_TYPES)}",
              "profile": "a profile name such as shortlived"}


def _toml_str(value: object, where: str, want: str) -> str:
    if not isinstance(value, str) or not value or len(value) > TOML_MAX_STRING:
        raise ConfigError(f"{where} must be {want}")
    return value


def read_config_file(path: Path, key_type: str, profile: str | None) -> tuple[list[Entry], str | None]:
    """Certificates as (names, key type, profile) (and optionally the email) from a small TOML file:

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
    specs: list[Entry] = []
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
        specs.append((list(names), kt, pr))
    return specs, email
