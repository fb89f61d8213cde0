"""The state dir's map: every path under it is decided here, and every store is built from it.
It is private (0700): it holds the ACME account keys, the keys of certificates received but not
yet stored, and the token service's signing key.

    <state>/
        acmebox.lock                 the instance lock, with its holder's PID (lock.py)
        acmebox.pid                  the running service's PID, for `acmebox renew` (control.py)
        requests/<id>.json           `acmebox renew` requests waiting for the service (control.py)
        requests/<id>.answer         the named pipe the service answers that request through
        served.json                  what the front door presented, per name (control.py)
        configured.json              the certificates the service was started with (control.py)
        fleet.json                   what each frontend on other nodes presented (fleet.py, Swarm)
        accounts/<ca-host>/<directory-path>/
            key.pem account.json key.pem.deactivated-<time>   the ACME account (account.py)
        certs/<name>.json            a certificate's state and recorded verdict (state.py)
        revoked.json                 serials `acmebox revoke` revoked (state.py)
        ledger/<name>.jsonl          the order ledger (ledger.py)
        pending/<name>.json          received from the CA, not yet stored (pending.py)
        orders/<name>.json           an order placed at the CA, its URL and key, until kept (resume.py)
        token-signing.key token.crt  the registry token service's key pair (unless given elsewhere)
        catalog.sqlite               the registry's catalog index, rebuilt when missing (registry/catalog.py)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from acmebox.errors import ConfigError


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def of(cls, where: StateDir | Path) -> StateDir:
        return where if isinstance(where, StateDir) else cls(Path(where))

    def create(self) -> None:
        """Make the dir (0700) if it is not there; ConfigError when that cannot be done."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"state dir {self.root} is not usable: {e.strerror or e}") from None

    @property
    def lock(self) -> Path:
        return self.root / "acmebox.lock"

    @property
    def pid(self) -> Path:
        return self.root / "acmebox.pid"

    @property
    def requests(self) -> Path:
        return self.root / "requests"

    def request(self, request_id: str) -> Path:
        return self.requests / f"{request_id}.json"

    def answer_pipe(self, request_id: str) -> Path:
        return self.requests / f"{request_id}.answer"

    @property
    def served(self) -> Path:
        return self.root / "served.json"

    @property
    def fleet(self) -> Path:
        return self.root / "fleet.json"

    @property
    def configured(self) -> Path:
        return self.root / "configured.json"

    @property
    def accounts(self) -> Path:
        return self.root / "accounts"

    def account(self, directory_url: str) -> Path:
        """The account dir for one CA directory: switching from staging to production starts
        a new account instead of sending the staging account's URL to production."""
        parts = urlsplit(directory_url)
        clean = [re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in [parts.netloc, *parts.path.split("/")] if p]
        return self.accounts / (Path(*clean) if clean else Path("default"))

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def revoked(self) -> Path:
        return self.root / "revoked.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def pending(self) -> Path:
        return self.root / "pending"

    @property
    def orders(self) -> Path:
        return self.root / "orders"

    @property
    def token_key(self) -> Path:
        return self.root / "token-signing.key"

    @property
    def token_cert(self) -> Path:
        return self.root / "token.crt"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"
