"""How `acmebox renew` talks to the running service: a request file in <state>/requests/,
then SIGHUP to the PID in <state>/acmebox.pid. The service answers in the certificate's
state file (`handled_request`, `request_result`), which the command waits for.

A file plus a signal works inside one container (`docker compose exec acmebox acmebox renew`)
without opening another port.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from acmebox.errors import ConfigError
from acmebox.fsutil import atomic_write_json


@dataclass(frozen=True)
class Request:
    id: str
    name: str | None  # None: every certificate
    force: bool


def hold_lock(state_dir: Path) -> IO[str]:
    """Take <state>/acmebox.lock for this process's life (release: close the returned file).
    Two instances on one state dir would order the same certificate at once and fail each
    other's challenges; the second gets a ConfigError naming the PID of the first."""
    path = state_dir / "acmebox.lock"
    try:
        f = open(path, "a+")  # noqa: SIM115 - held open on purpose, closed by the caller
    except OSError as e:
        raise ConfigError(f"state dir {state_dir} is not usable: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(
            f"state dir {state_dir} is in use by another acmebox (PID {holder}); run one instance per state dir"
        ) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def pid_file(state_dir: Path) -> Path:
    return state_dir / "acmebox.pid"


def running_pid(state_dir: Path) -> int | None:
    try:
        pid = int(pid_file(state_dir).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def submit(state_dir: Path, name: str | None, force: bool) -> Request:
    req = Request(uuid.uuid4().hex, name, force)
    d = state_dir / "requests"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_json(d / f"{req.id}.json", {"name": name, "force": force}, 0o600)
    return req


def take_all(state_dir: Path) -> list[Request]:
    """The pending requests, removed from disk as they are read."""
    d = state_dir / "requests"
    out = []
    for f in sorted(d.glob("*.json")) if d.exists() else []:
        try:
            data = json.loads(f.read_text())
            out.append(Request(f.stem, data.get("name"), bool(data.get("force"))))
        except (OSError, ValueError):
            pass
        f.unlink(missing_ok=True)
    return out


def wake_service(state_dir: Path) -> bool:
    pid = running_pid(state_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    return True
