"""The order ledger: every order acmebox places at the CA and how it ended, one append-only
file per certificate, <state>/ledger/<name>.jsonl. It is the last line of defence against a
rate limit burned by a loop, whatever caused the loop (a bug, a wrong clock, a CA answer we
misread, a state file lost): before each newOrder the maintainer asks `check()`, forced renewals included, and nothing
but an operator's explicit `--ignore-ledger` goes past a refusal.

The limits stay below Let's Encrypt's (https://letsencrypt.org/docs/rate-limits/):
- ISSUED_PER_WEEK certificates for one exact set of names in any 7 days (LE: 5 duplicate
  certificates per week). An order whose outcome was never written (a crash, a lost answer)
  counts as issued.
- ORDERS_PER_WEEK orders of any outcome for one certificate in any 7 days (LE: 300 new orders
  per 3 hours per account; this bound is about loops, not that limit).
- FAILED_VALIDATIONS_PER_HOUR failed authorizations per name in any hour (LE: 5 per account,
  hostname and hour).

The counts are per CA directory (staging and production have separate limits), and the
lines of other directories do not count. A line that cannot be read counts as an issued order
for these names, at the file's last change: a damaged ledger errs on the safe side.

Each line is one JSON object: {"at": ISO time, "order": id, "names": [...], "directory": URL}
when an order is placed, {"at", "order", "outcome": "issued"|"failed", "invalid": [names whose validation
failed]} when it ends. Lines older than the longest window are dropped when the file is
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
from acmebox.statedir import StateDir

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

    def __init__(self, state_dir: StateDir | Path, name: str, directory: str) -> None:
        self.path = StateDir.of(state_dir).ledger / f"{name}.jsonl"
        self.directory = directory

    # -- reading -------------------------------------------------------------------------------

    def _orders(self, names: frozenset[str]) -> list[_Order]:
        """This directory's orders; an unreadable line is taken as an order for `names`."""
        try:
            lines = self.path.read_bytes().splitlines()
            changed = dt.datetime.fromtimestamp(self.path.stat().st_mtime, dt.UTC)
        except FileNotFoundError:
            return []
        orders: dict[str, _Order] = {}
        for i, raw in enumerate(lines):
            try:
                entry = json.loads(raw)
                at = dt.datetime.fromisoformat(entry["at"])
                oid = str(entry["order"])
                if "names" in entry:
                    if entry.get("directory", self.directory) == self.directory:
                        orders[oid] = _Order(oid, at, frozenset(map(str, entry["names"])))
                elif oid in orders:
                    o = orders[oid]
                    o.outcome, o.ended, o.invalid = str(entry["outcome"]), at, tuple(map(str, entry["invalid"]))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.warning("%s: line %d unreadable (%s); counted as an issued order", self.path, i + 1, e)
                orders[f"unreadable-{i}"] = _Order(f"unreadable-{i}", changed, names)
        return list(orders.values())

    def check(self, names: Iterable[str], now: dt.datetime) -> None:
        """Raise LedgerRefusal when one more order for `names` would pass a limit."""
        names = frozenset(names)
        orders = self._orders(names)
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

    # -- writing -------------------------------------------------------------------------------

    def ordered(self, names: Iterable[str], now: dt.datetime) -> str:
        """Record an order about to be placed; returns its id for `ended`."""
        oid = uuid.uuid4().hex[:12]
        self._append({"at": now.isoformat(), "order": oid, "names": sorted(names), "directory": self.directory}, now)
        return oid

    def ended(self, oid: str, outcome: str, now: dt.datetime, invalid: Iterable[str] = ()) -> None:
        self._append({"at": now.isoformat(), "order": oid, "outcome": outcome, "invalid": sorted(invalid)}, now)

    def _append(self, entry: dict[str, Any], now: dt.datetime) -> None:
        """Append one line and fsync it: raises OSError when it cannot, and an order that
        cannot be recorded is not placed."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._drop_old(now, entry.get("names") or ())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_old(self, now: dt.datetime, names: Iterable[str]) -> None:
        """Rewrite the file without lines older than the window; an unreadable line becomes an
        order for `names` dated now, so that it counts for a week and then ages out."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        keep, changed = [], False
        for raw in lines:
            try:
                old = dt.datetime.fromisoformat(json.loads(raw)["at"]) <= now - WEEK
            except (ValueError, KeyError, TypeError, AttributeError):
                entry = {"at": now.isoformat(), "order": f"unreadable-{uuid.uuid4().hex[:8]}",
                         "names": sorted(names), "directory": self.directory}
                keep.append(json.dumps(entry, sort_keys=True).encode())
                changed = True
                continue
            changed |= old
            if not old:
                keep.append(raw)
        if changed:
            atomic_write(self.path, b"".join(line + b"\n" for line in keep), 0o600)
