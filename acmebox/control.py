"""How `acmebox renew` and `status` talk to the running service: a request file in
<state>/requests/, then SIGHUP to the PID in <state>/acmebox.pid. The service answers in the
certificate's state file (`handled_request`, `request_result`), which the command waits for,
and also through a named pipe next to the request (<id>.answer), which works where the service
cannot write the state dir (a read-only mount: writing to a FIFO does not write to the file
system). A request the service cannot remove is carried out once and remembered as taken.
The service also leaves what it saw served (served.json) and the certificates it was started
with (configured.json) for `status`. Paths: statedir.py.

A file plus a signal works inside one container (`docker compose exec acmebox acmebox renew`)
without opening another port.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acmebox.fsutil import atomic_write_json
from acmebox.statedir import StateDir

log = logging.getLogger(__name__)
ANSWER_MAX = 4000  # bytes: below PIPE_BUF, so an answer arrives in one piece

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


def submit(state_dir: StateDir | Path, name: str | None, force: bool, ignore_ledger: bool = False,
           pipe: bool = False) -> Request:
    """Write a request for the service to find at its next SIGHUP; with `pipe`, also the named
    pipe its answers come through (read it with AnswerReader, which removes it)."""
    req = Request(uuid.uuid4().hex, name, force, ignore_ledger)
    sd = StateDir.of(state_dir)
    sd.requests.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if pipe:
            os.mkfifo(sd.answer_pipe(req.id), 0o600)
    except OSError as e:  # the answer then comes through the state file only
        log.debug("no answer pipe for request %s: %s", req.id, e)
    atomic_write_json(sd.request(req.id), {"name": name, "force": force, "ignore_ledger": ignore_ledger}, 0o600)
    return req


def take_all(state_dir: StateDir | Path, taken: set[str]) -> list[Request]:
    """The pending requests, removed from disk as they are read. One that cannot be removed
    (a read-only state dir) is returned once and its id added to `taken`, so the next call
    skips it. Never raises: a request directory the service cannot read is logged."""
    d = StateDir.of(state_dir).requests
    try:
        files = sorted(d.glob("*.json")) if d.exists() else []
    except OSError as e:
        log.error("cannot read renew requests in %s (%s)", d, e.strerror or e)
        return []
    taken &= {f.stem for f in files}  # forget those removed meanwhile (by hand, or the dir became writable)
    out = []
    for f in files:
        if f.stem in taken:
            continue
        try:
            data = json.loads(f.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            out.append(Request(f.stem, data.get("name"), bool(data.get("force")), data.get("ignore_ledger") is True))
        except (OSError, ValueError) as e:
            log.error("renew request %s is unreadable (%s); ignored", f, e)
        try:
            f.unlink(missing_ok=True)
        except OSError as e:
            taken.add(f.stem)
            log.warning("cannot remove renew request %s (%s); it is carried out once, not again", f, e.strerror or e)
    return out


def answer(state_dir: StateDir | Path, request_id: str, name: str, result: str) -> None:
    """Send `name: result` to whoever waits on the request's named pipe; nothing when no one
    does (no pipe, no reader). Never blocks, never raises."""
    line = f"{name}\t{' '.join(result.split())}"[: ANSWER_MAX - 1] + "\n"
    path = StateDir.of(state_dir).answer_pipe(request_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENXIO):
            log.debug("cannot answer request %s through %s: %s", request_id, path, e)
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, line.encode())
    except OSError as e:
        log.debug("cannot answer request %s through %s: %s", request_id, path, e)
    finally:
        os.close(fd)


class AnswerReader:
    """The `renew` side of a request's pipe: answers as {certificate name: result}."""

    def __init__(self, state_dir: StateDir | Path, request_id: str) -> None:
        self.path = StateDir.of(state_dir).answer_pipe(request_id)
        self._buffer = b""
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            self._fd = None

    def read(self) -> dict[str, str]:
        """The answers complete since the last call (none when there is no pipe)."""
        if self._fd is None:
            return {}
        try:
            while chunk := os.read(self._fd, 65536):
                self._buffer += chunk
        except BlockingIOError:
            pass
        *lines, self._buffer = self._buffer.split(b"\n")
        out = {}
        for line in lines:
            name, _, result = line.decode(errors="replace").partition("\t")
            out[name] = result
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


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
