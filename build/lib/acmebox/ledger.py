"""The order ledger: every order acmebox places at the CA and how it ended, one append-only
file per certificate, <state>/ledger/<name>.jsonl. It is the last line of defence against a
rate limit burned by a loop, whatever caused the loop (a bug, a wrong clock, a CA answer we
misread, a state file lost): before each newOrder the maintainer asks `check()`, and nothing
but an operator's `acmebox renew --force` goes past a refusal.

The limits stay below Let's Encrypt's (https://letsencrypt.org/docs/rate-limits/):
- ISSUED_PER_WEEK certificates for one exact set of names in any 7 days (LE: 5 duplicate
  certificates per week). An order whose outcome was never written (a crash, a lost answer)
  counts as issued.
- ORDERS_PER_WEEK orders of any outcome for one certificate in any 7 days (LE: 300 new orders
  per 3 hours per account; this bound is about loops, not that limit).
- FAILED_VALIDATIONS_PER_HOUR failed authorizations per name in any hour (LE: 5 per account,
  hostname and hour).

Each line is one JSON object: {"at": ISO time, "order": id, "names": [...]} when an order is
placed, {"at", "order", "outcome": "issued"|"failed", "invalid": [names whose validation
failed]} when it ends. A line that cannot be read is skipped with a warning; a torn last line
costs at most one event. Lines older than the longest window are dropped when the file is
rewritten, which happens only when it has such lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acmebox.errors import Deferred
from acmebox.fsutil import atomic_write

log = logging.getLogger(__name__)

ISSUED_PER_WEEK = 4
ORDERS_PER_WEEK = 20
FAILED_VALIDATIONS_PER_HOUR = 3
WEEK = dt.timedelta(days=7)
HOUR = dt.timedelta(hours=1)


class LedgerRefusal(Deferred):
    """An order the ledger does not allow before `until`."""


@dataclass
class _Order:
    id: str
    at: dt.datetime
    names: frozenset[str]
    outcome: str | None = None
    ended: dt.datetime | None = None
    invalid: tuple[str, ...] = ()


class Ledger:
    """The ledger of one certificate. Used by that certificate's maintainer only (one task),
    so it needs no lock of its own; the state dir's lock keeps other processes out."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = state_dir / "ledger" / f"{name}.jsonl"

    # -- reading -------------------------------------------------------------------------------

    def _orders(self) -> list[_Order]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        orders: dict[str, _Order] = {}
        for raw in lines:
            try:
                entry = json.loads(raw)
                at = dt.datetime.fromisoformat(entry["at"])
                oid = str(entry["order"])
                if "names" in entry:
                    orders[oid] = _Order(oid, at, frozenset(map(str, entry["names"])))
                elif oid in orders:
                    o = orders[oid]
                    o.outcome, o.ended, o.invalid = str(entry["outcome"]), at, tuple(map(str, entry["invalid"]))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("%s: skipping an unreadable line (%s)", self.path, e)
        return list(orders.values())

    def check(self, names: Iterable[str], now: dt.datetime) -> None:
        """Raise LedgerRefusal when one more order for `names` would pass a limit."""
        names = frozenset(names)
        orders = self._orders()
        week = [o for o in orders if o.at > now - WEEK]
        if len(week) >= ORDERS_PER_WEEK:
            until = sorted(o.at for o in week)[-ORDERS_PER_WEEK] + WEEK
            raise LedgerRefusal(f"{len(week)} orders in the last 7 days (the ledger allows {ORDERS_PER_WEEK})", until)
        issued = sorted(o.at for o in week if o.names == names and o.outcome in (None, "issued"))
        if len(issued) >= ISSUED_PER_WEEK:
            until = issued[-ISSUED_PER_WEEK] + WEEK
            raise LedgerRefusal(
                f"{len(issued)} certificates for these names in the last 7 days "
                f"(the ledger allows {ISSUED_PER_WEEK}, Let's Encrypt 5)",
                until,
            )
        for name in sorted(names):
            failed = sorted(o.ended for o in orders if o.ended and o.ended > now - HOUR and name in o.invalid)
            if len(failed) >= FAILED_VALIDATIONS_PER_HOUR:
                until = failed[-FAILED_VALIDATIONS_PER_HOUR] + HOUR
                raise LedgerRefusal(
                    f"{name}: {len(failed)} failed validations in the last hour "
                    f"(the ledger allows {FAILED_VALIDATIONS_PER_HOUR}, Let's Encrypt 5)",
                    until,
                )

    def counts(self, now: dt.datetime) -> dict[str, int]:
        """What the ledger holds for the last 7 days, for `status` and metrics."""
        week = [o for o in self._orders() if o.at > now - WEEK]
        return {"orders_7d": len(week), "issued_7d": sum(o.outcome in (None, "issued") for o in week)}

    # -- writing -------------------------------------------------------------------------------

    def ordered(self, names: Iterable[str], now: dt.datetime) -> str:
        """Record an order about to be placed; returns its id for `ended`."""
        oid = uuid.uuid4().hex[:12]
        self._append({"at": now.isoformat(), "order": oid, "names": sorted(names)}, now)
        return oid

    def ended(self, oid: str, outcome: str, now: dt.datetime, invalid: Iterable[str] = ()) -> None:
        self._append({"at": now.isoformat(), "order": oid, "outcome": outcome, "invalid": sorted(invalid)}, now)

    def _append(self, entry: dict[str, Any], now: dt.datetime) -> None:
        """Append one line and fsync it: raises OSError when it cannot, and an order that
        cannot be recorded is not placed."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._drop_old(now)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_old(self, now: dt.datetime) -> None:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        keep = []
        for raw in lines:
            try:
                if dt.datetime.fromisoformat(json.loads(raw)["at"]) <= now - WEEK:
                    continue
            except (ValueError, KeyError, TypeError):
                continue
            keep.append(raw)
        if len(keep) < len(lines):
            atomic_write(self.path, b"".join(line + b"\n" for line in keep), 0o600)
