"""How `acmebox renew` and `status` talk to the running service: a request file in
<state>/requests/, then SIGHUP to the PID in <state>/acmebox.pid. The service answers in the
certificate's state file (`handled_request`, `request_result`), which the command waits for.
The service also leaves what it saw served (served.json) and the certificates it was started
with (configured.json) for `status`. Paths: statedir.py.

A file plus a signal works inside one container (`docker compose exec acmebox acmebox renew`)
without opening another port.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acmebox.fsutil import atomic_write_json
from acmebox.statedir import StateDir


@dataclass(frozen=True)
class Request:
    id: str
    name: str | None  # None: every certificate
    force: bool
    ignore_ledger: bool = False  # with force: past the order ledger's limits


def pid_file(state_dir: StateDir | Path) -> Path:
    return StateDir.of(state_dir).pid


def running_pid(state_dir: StateDir | Path) -> int | None:
    try:
        pid = int(pid_file(state_dir).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def submit(state_dir: StateDir | Path, name: str | None, force: bool, ignore_ledger: bool = False) -> Request:
    req = Request(uuid.uuid4().hex, name, force, ignore_ledger)
    d = StateDir.of(state_dir).requests
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_json(d / f"{req.id}.json", {"name": name, "force": force, "ignore_ledger": ignore_ledger}, 0o600)
    return req


def take_all(state_dir: StateDir | Path) -> list[Request]:
    """The pending requests, removed from disk as they are read."""
    d = StateDir.of(state_dir).requests
    out = []
    for f in sorted(d.glob("*.json")) if d.exists() else []:
        try:
            data = json.loads(f.read_text())
            out.append(Request(f.stem, data.get("name"), bool(data.get("force")), data.get("ignore_ledger") is True))
        except (OSError, ValueError):
            pass
        f.unlink(missing_ok=True)
    return out


def wake_service(state_dir: StateDir | Path) -> bool:
    pid = running_pid(state_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    return True


def write_served(state_dir: StateDir | Path, served: dict[str, dict[str, str | None]]) -> None:
    """What the service last saw served, per name ({"serial": hex or None, "at": ISO time}),
    for `acmebox status` in another process."""
    atomic_write_json(StateDir.of(state_dir).served, served, 0o600)


def read_served(state_dir: StateDir | Path) -> dict[str, Any]:
    try:
        data = json.loads(StateDir.of(state_dir).served.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_configured(state_dir: StateDir | Path, names: list[str]) -> None:
    """The certificates the service (or `run --once`) was started with, for `status` and
    `renew` in another process: a certificate dropped from the configuration is no longer
    managed, whatever its leftovers on disk."""
    atomic_write_json(StateDir.of(state_dir).configured, names, 0o600)


def read_configured(state_dir: StateDir | Path) -> list[str] | None:
    try:
        data = json.loads(StateDir.of(state_dir).configured.read_text())
    except (OSError, ValueError):
        return None
    return [str(n) for n in data] if isinstance(data, list) else None
