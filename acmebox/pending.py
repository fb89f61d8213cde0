"""Certificates received from the CA but not yet in the store: a write-ahead copy in the
private state dir, <state>/pending/<name>.json (0600, it holds the private key).

The CA counts a certificate against its limits the moment it is issued, so acmebox keeps it
from the moment it arrives: the maintainer writes it here before touching the certs volume,
and removes it only once the store holds it. A failed save (a full or read-only certs volume)
is retried from this copy, with no new order; so is a crash between the two writes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from acmebox.fsutil import atomic_write_json
from acmebox.statedir import StateDir
from acmebox.store import CertMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """What one order brought: the key acmebox made, the CA's full chain, the store metadata."""

    key_pem: bytes
    fullchain_pem: bytes
    meta: CertMeta


class PendingStore:
    """One file per certificate. Used by that certificate's maintainer only."""

    def __init__(self, state_dir: StateDir | Path) -> None:
        self.dir = StateDir.of(state_dir).pending

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def keep(self, name: str, received: Received) -> None:
        """Write the copy (raises OSError when the state dir cannot take it)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"key": received.key_pem.decode(), "fullchain": received.fullchain_pem.decode(),
                "meta": received.meta.to_json()}
        atomic_write_json(self.path(name), data, 0o600)

    def load(self, name: str) -> Received | None:
        """The kept copy, or None. An unreadable copy is moved aside (never deleted: it may be
        the only copy of a certificate the CA counted) and reported."""
        path = self.path(name)
        try:
            data = json.loads(path.read_bytes())
            return Received(data["key"].encode(), data["fullchain"].encode(), CertMeta.from_json(dict(data["meta"])))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self.set_aside(name, f"unreadable ({type(e).__name__})")
            return None

    def set_aside(self, name: str, why: str) -> None:
        path = self.path(name)
        aside = path.with_name(f"{path.name}.{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.aside")
        try:
            path.rename(aside)
            log.warning("%s: kept certificate %s; moved to %s", name, why, aside)
        except OSError as e:
            log.warning("%s: kept certificate %s; cannot move it aside (%s)", name, why, e.strerror or e)

    def drop(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
