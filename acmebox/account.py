"""The ACME account on disk: one EC P-256 key (0600) and the account URL, per CA directory.

    <state>/accounts/<ca-host>/<directory-path>/key.pem       created once, reused forever
    <state>/accounts/<ca-host>/<directory-path>/account.json  {"url": ..., "directory": ...}
    <state>/accounts/<ca-host>/<directory-path>/key.pem.deactivated-<time>  a retired key

Keeping accounts per directory URL means switching from staging to production starts a new
account instead of sending the staging account's URL to production.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from josepy.jwk import JWKEC

from acmebox import keys
from acmebox.errors import ConfigError
from acmebox.fsutil import atomic_write_json, write_new
from acmebox.statedir import StateDir

log = logging.getLogger(__name__)


@dataclass
class AccountFiles:
    dir: Path

    @classmethod
    def for_directory(cls, state_dir: StateDir | Path, directory_url: str) -> AccountFiles:
        return cls(StateDir.of(state_dir).account(directory_url))

    @property
    def key_path(self) -> Path:
        return self.dir / "key.pem"

    @property
    def info_path(self) -> Path:
        return self.dir / "account.json"

    def load_or_create_key(self) -> JWKEC:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.key_path.exists():
                write_new(self.key_path, keys.to_pem(keys.generate("ec256")), 0o600)
                log.info("created a new account key in %s", self.key_path)
            key = keys.from_pem(self.key_path.read_bytes())
        except OSError as e:
            raise ConfigError(f"state dir {self.dir} is not usable: {e.strerror or e}") from None
        except ValueError:
            raise ConfigError(f"account key {self.key_path} is not a readable private key") from None
        if keys.key_type_of(key) != "ec256":
            raise ConfigError(f"account key {self.key_path} is not an EC P-256 key")
        return JWKEC(key=key)

    def load_url(self) -> str | None:
        """The recorded account URL, or None when there is none or the file is not what we
        wrote (the URL is found again from the key at login, and the file rewritten)."""
        try:
            data = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return None
        url = data.get("url") if isinstance(data, dict) else None
        return url if isinstance(url, str) else None

    def save_url(self, url: str, directory_url: str) -> None:
        """Record the account URL (only when it changed: a full state dir must not stop a login)."""
        if self.load_url() != url:
            atomic_write_json(self.info_path, {"url": url, "directory": directory_url}, 0o600)

    def retire_key(self, now: dt.datetime) -> Path:
        """Move the key of an account the CA deactivated aside (never delete a key: it may be
        needed to prove control, e.g. to revoke) so that the next login registers a new one."""
        retired = self.key_path.with_name(f"key.pem.deactivated-{now:%Y%m%dT%H%M%SZ}")
        self.key_path.rename(retired)
        self.info_path.unlink(missing_ok=True)
        return retired
