"""Telling nginx about new certificates, and checking that it listened.

Kinds (`--reload`): `file` writes the next generation number to a file that a watcher beside
nginx polls (nginx/reload-on-change.sh in the nginx container's /docker-entrypoint.d/ runs
`nginx -s reload` when it changes: no Docker socket, no shared PID namespace); `docker` sends
SIGHUP through the Docker API to the containers picked by name or label; `signal` sends SIGHUP
to a PID (or the PID in a PID file); `command` runs a command line (e.g. `nginx -s reload`);
`none` does nothing.

The Reloader reconciles what the server presents with what the store holds (see Reloader).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shlex
import shutil
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509

from acmebox.config import HostPort, ReloadSpec
from acmebox.fsutil import atomic_write

log = logging.getLogger(__name__)

# seconds the `file` kind waits after writing: nginx/reload-on-change.sh polls every second,
# then nginx starts new workers; the TLS check (--reload-verify) follows this wait
FILE_PICKUP = 2.0
VERIFY_DELAY = 0.5  # seconds between a reload and the look at what is served (nginx swaps workers gracefully)
RETRY_FIRST, RETRY_MAX = 1.0, 300.0  # seconds between reload attempts while a difference lasts
OBSERVE_INTERVAL = 300.0  # seconds between looks at what is served when nothing changed
LOOK_TIMEOUT = 30.0  # seconds for one look at every name
ONCE_ATTEMPTS = 5  # `run --once` gives up (exit 1) after this many


class ReloadFailed(Exception):
    pass


class ReloadTarget:
    """One way of telling nginx (config.ReloadSpec's kind), one subclass per kind: `run` performs one
    reload, `check` says whether it could (for `acmebox check`). This base is the `none` kind."""

    kind: ClassVar[str] = "none"

    def __init__(self, target: str = "") -> None:
        self.target = target

    @classmethod
    def parse(cls, kind: str, target: str | None) -> ReloadTarget:
        """The action for `--reload KIND --reload-target TARGET`; ConfigError for what config.ReloadSpec refuses."""
        return cls.of(ReloadSpec(kind, target))

    @staticmethod
    def of(spec: ReloadSpec) -> ReloadTarget:
        return BY_KIND[spec.kind](spec.target or "")

    async def run(self, pickup: float = FILE_PICKUP) -> str:
        """Perform one reload; returns what was done, raises ReloadFailed. `pickup`: seconds
        the `file` kind gives the watcher to notice the new generation."""
        return "nothing (reload none)"

    def check(self) -> tuple[bool, str]:
        """(usable, one line on what was found), without reloading."""
        return True, "none: nginx is not told about new certificates"


class FileReload(ReloadTarget):
    kind = "file"

    async def run(self, pickup: float = FILE_PICKUP) -> str:
        generation = _next_generation(Path(self.target))
        await asyncio.sleep(pickup)
        return f"generation {generation} written to {self.target}"

    def check(self) -> tuple[bool, str]:
        ok = Path(self.target).parent.is_dir()
        return ok, f"file {self.target}" + ("" if ok else ": its directory does not exist")


class SignalReload(ReloadTarget):
    kind = "signal"

    async def run(self, pickup: float = FILE_PICKUP) -> str:
        return _signal(self.target)

    def check(self) -> tuple[bool, str]:
        try:
            pid = _pid(self.target)
            Path(f"/proc/{pid}").stat()
        except (OSError, ValueError) as e:
            return False, f"signal {self.target}: {e}"
        return True, f"signal: PID {pid} is running"


class CommandReload(ReloadTarget):
    kind = "command"

    async def run(self, pickup: float = FILE_PICKUP) -> str:
        return await _command(self.target)

    def check(self) -> tuple[bool, str]:
        program = self.target.split()[0] if self.target.split() else ""
        ok = shutil.which(program) is not None
        return ok, f"command {self.target}" + ("" if ok else f": {program} not found")


class DockerReload(ReloadTarget):
    kind = "docker"

    async def run(self, pickup: float = FILE_PICKUP) -> str:
        return await asyncio.to_thread(_docker, self.target)

    def check(self) -> tuple[bool, str]:
        try:
            import docker

            docker.from_env().ping()
        except Exception as e:  # the SDK raises many kinds; each means "not reachable"
            return False, f"docker: {e}"
        return True, f"docker: the engine answers; target {self.target}"


BY_KIND: dict[str, type[ReloadTarget]] = {c.kind: c for c in (ReloadTarget, FileReload, SignalReload,
                                                               CommandReload, DockerReload)}


def _pid(target: str) -> int:
    """A PID, or the one in a PID file."""
    return int(target) if target.isdigit() else int(Path(target).read_text().strip())


def _next_generation(path: Path) -> int:
    """Write the number after the one in `path` (a missing or garbled file counts as 0):
    the watcher reloads nginx on any change, the number just makes each write differ."""
    try:
        current = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        current = 0
    except OSError as e:
        raise ReloadFailed(f"reading {path}: {e.strerror or e}") from None
    try:
        atomic_write(path, f"{current + 1}\n".encode())
    except OSError as e:
        raise ReloadFailed(f"writing {path}: {e.strerror or e}") from None
    return current + 1


def _signal(target: str) -> str:
    try:
        pid = _pid(target)
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as e:
        raise ReloadFailed(f"SIGHUP to {target}: {e}") from None
    return f"SIGHUP sent to PID {pid}"


async def _command(command: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    except (OSError, TimeoutError) as e:
        raise ReloadFailed(f"{command}: {e}") from None
    if proc.returncode != 0:
        raise ReloadFailed(f"{command} exited {proc.returncode}: {out.decode(errors='replace').strip()[:300]}")
    return f"ran {command}"


def _docker(selector: str) -> str:
    import docker  # imported here: only this reloader needs the SDK
    from docker.errors import DockerException

    try:
        api = docker.from_env()
        try:
            if selector.startswith("label="):
                containers = api.containers.list(filters={"label": selector[len("label=") :]})
            else:
                containers = [api.containers.get(selector)]
            if not containers:
                raise ReloadFailed(f"no running container matches {selector}")
            for c in containers:
                c.kill(signal="SIGHUP")
            return "SIGHUP sent to container(s) " + ", ".join(c.name for c in containers)
        finally:
            api.close()
    except DockerException as e:
        raise ReloadFailed(f"docker: {e}") from None


def served_certificate(host: str, port: int, server_name: str, timeout: float = 5) -> x509.Certificate:
    """The certificate a TLS server presents for `server_name` (not verified: we compare it
    with what we wrote, trust is not the question here). OSError or ReloadFailed when none."""
    import socket

    # A bare client context: create_default_context() would parse the system's CA store
    # (about 2 MiB of OpenSSL heap each time) only to switch verification off.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        ctx.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ReloadFailed("server presented no certificate")
    return x509.load_der_x509_certificate(der)


def served_serial(host: str, port: int, server_name: str, timeout: float = 5) -> int:
    return served_certificate(host, port, server_name, timeout).serial_number


OnResult = Callable[[str], None]  # called with "ok", "failed" or "mismatch" (for metrics)


@dataclass(frozen=True)
class Served:
    """What the front door presented for one name at the last look."""

    serial: int | None  # None: no answer
    error: str | None = None
    not_after: dt.datetime | None = None


class Reloader:
    """Makes the front door serve what the store holds, and says whether it does.

    Desired: for each name, the serial of its live certificate (`request`, at start for every
    live certificate and after every renewal). Observed, when `verify` is set: the serial the
    server presents to a TLS handshake with that name as SNI, looked at after each change, after
    each reload and every OBSERVE_INTERVAL. A difference has one action: reload, then look
    again, with a backoff from RETRY_FIRST to RETRY_MAX seconds, for as long as the difference
    lasts (`attempts` bounds it for `run --once`). Without `verify`, a change causes one reload,
    retried the same way until the reload itself succeeds. Requests that arrive together (several
    certificates renewed in one go) cause one reload. One task runs `run()`; the other methods
    are called from the same event loop.
    """

    def __init__(self, target: ReloadTarget, verify: HostPort | None = None, on_result: OnResult | None = None,
                 settle: float = 0.2, attempts: int | None = None,
                 on_observed: Callable[[str, bool], None] | None = None) -> None:
        self.target = target
        self.verify = verify
        self.on_result = on_result or (lambda result: None)
        self.on_observed = on_observed or (lambda name, matches: None)
        self.settle = settle  # wait this long for more requests before reloading
        self.attempts = attempts
        self.served: dict[str, Served] = {}  # name -> the last observation
        self.failed = False  # gave up after `attempts` (only with a bound)
        self._wanted: dict[str, int] = {}  # name -> serial it should present
        self._changed = False  # a request since the last successful reload
        self._event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def request(self, server_name: str, serial: int) -> None:
        self._wanted[server_name] = serial
        self._changed = True
        self._idle.clear()
        self._event.set()

    def matches(self, server_name: str) -> bool | None:
        """Whether the server presented the wanted serial at the last look (None: not looked)."""
        seen, wanted = self.served.get(server_name), self._wanted.get(server_name)
        return None if seen is None or wanted is None else seen.serial == wanted

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        failures = 0
        while True:
            if failures:
                wait: float | None = min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX)
            else:
                wait = OBSERVE_INTERVAL if self.verify is not None and self._wanted else None
            if wait is None:
                await self._event.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event.wait(), wait)  # a new request cuts the wait short
            await sleep(self.settle)
            self._event.clear()
            if await self._reconcile(sleep):
                failures = 0
            else:
                failures += 1
                if self.attempts is not None and failures >= self.attempts:
                    log.error("giving up after %d attempts: the server does not serve the live certificate(s)",
                              failures)
                    self.failed, failures, self._changed = True, 0, False
                    self._idle.set()
                    continue
            if not failures and not self._event.is_set():
                self._idle.set()

    async def _reconcile(self, sleep: Callable[[float], Awaitable[None]]) -> bool:
        """One look and, where it differs, one reload and another look. True when done."""
        if self.verify is not None:
            wrong = await self._observe()
            if not wrong:
                self._changed = False
                return True
        elif not self._changed:
            return True
        if self.target.kind == "none":
            self._changed = False
            return True  # nothing can be done; /healthz reports what the last look saw
        names = ", ".join(sorted(self._wanted))
        try:
            what = await self.target.run()
        except ReloadFailed as e:
            log.error("reload failed (%s); trying again", e)
            self.on_result("failed")
            return False
        log.info("reloaded: %s (for %s)", what, names)
        self.on_result("ok")
        self._changed = False
        if self.verify is None:
            return True
        await sleep(VERIFY_DELAY)
        wrong = await self._observe()
        if wrong:
            log.error("after reload %s:%d still presents %s", self.verify.host, self.verify.port, "; ".join(wrong))
            self.on_result("mismatch")
            return False
        log.info("verified: %s:%d now presents the new certificate(s)", self.verify.host, self.verify.port)
        return True

    async def _observe(self) -> list[str]:
        """Look at what is served for every wanted name; returns the differences, as text."""
        wanted = dict(self._wanted)
        try:
            seen = await asyncio.wait_for(asyncio.to_thread(self._look, list(wanted)), LOOK_TIMEOUT)
        except TimeoutError:
            seen = {name: Served(None, f"no TLS answer within {LOOK_TIMEOUT:.0f}s") for name in wanted}
        self.served.update(seen)
        wrong = []
        for name, serial in sorted(wanted.items()):
            got = seen[name]
            self.on_observed(name, got.serial == serial)
            if got.serial is None:
                wrong.append(f"{name}: no answer ({got.error})")
            elif got.serial != serial:
                wrong.append(f"{name}: serial {got.serial:x}, expected {serial:x}")
        return wrong

    def _look(self, names: list[str]) -> dict[str, Served]:
        assert self.verify is not None
        out = {}
        for name in names:
            try:
                cert = served_certificate(self.verify.host, self.verify.port, name)
                out[name] = Served(cert.serial_number, None, cert.not_valid_after_utc)
            except (OSError, ReloadFailed, ValueError) as e:
                out[name] = Served(None, str(e) or type(e).__name__)
        return out
