"""Orders in flight: an order placed at the CA whose certificate is not yet kept, recorded in
the private state dir as <state>/orders/<name>.json (0600: it holds the certificate's key).

The record is written the moment the CA answers newOrder, before anything is validated or
finalized, with the order's URL and the key its CSR is made from. A run that ends in between
(SIGKILL, a power cut, a crash after the CA issued and before the disk took the certificate)
leaves it behind; the next attempt fetches the order again (Issuer.resume: a valid order's
certificate is downloaded and installed with the kept key, a pending or ready one is carried
on, an invalid or unknown one is dropped) before anything new is ordered. So an order the
CA counted is paid for once. The record goes once the certificate is kept (pending.py) or
stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from acmebox.fsutil import atomic_write_json
from acmebox.statedir import StateDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InFlight:
    """One order at the CA: its URL, the key (PEM) of its CSR, what it was for, and its
    line in the order ledger (ledger.py) so that its end can be recorded there."""

    url: str
    key_pem: bytes
    names: tuple[str, ...]
    key_type: str
    profile: str | None
    directory: str
    account: str | None
    replaces: str | None
    ledger_order: str
    at: dt.datetime

    def to_json(self) -> dict[str, object]:
        return {"url": self.url, "key": self.key_pem.decode(), "names": list(self.names), "key_type": self.key_type,
                "profile": self.profile, "directory": self.directory, "account": self.account,
                "replaces": self.replaces, "ledger_order": self.ledger_order, "at": self.at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> InFlight:
        """Raises KeyError, TypeError or ValueError for a record that is not one."""
        names = data["names"]
        if not isinstance(names, list):
            raise TypeError("names is not a list")

        def opt(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(str(data["url"]), str(data["key"]).encode(), tuple(map(str, names)), str(data["key_type"]),
                   opt("profile"), str(data["directory"]), opt("account"), opt("replaces"),
                   str(data["ledger_order"]), dt.datetime.fromisoformat(str(data["at"])))


class InFlightOrders:
    """One record per certificate; each is used by that certificate's maintainer only."""

    def __init__(self, state_dir: StateDir | Path) -> None:
        self.dir = StateDir.of(state_dir).orders

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def record(self, name: str, order: InFlight) -> None:
        """Write the record (raises OSError when the state dir cannot take it)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_json(self.path(name), order.to_json(), 0o600)

    def load(self, name: str) -> InFlight | None:
        """The record, or None. One that cannot be read is moved aside (it holds a key) and
        counts as none: the ledger still counts its order."""
        path = self.path(name)
        try:
            return InFlight.from_json(dict(json.loads(path.read_bytes())))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = path.with_name(f"{path.name}.{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.aside")
            with contextlib.suppress(OSError):  # then it is read (and reported) again next time
                path.rename(aside)
            log.warning("%s: the record of an order in flight is unreadable (%s); moved to %s", name,
                        type(e).__name__, aside)
            return None

    def drop(self, name: str) -> None:
        """Remove the record; a record that cannot be removed is logged (it is fetched again,
        which costs no order)."""
        try:
            self.path(name).unlink(missing_ok=True)
        except OSError as e:
            log.warning("%s: cannot remove the record of its order in flight (%s)", name, e.strerror or e)
