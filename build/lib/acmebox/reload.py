"""Telling nginx about new certificates, and checking that it listened.

Kinds (`--reload`): `docker` sends SIGHUP through the Docker API to the containers picked by
name or label; `signal` sends SIGHUP to a PID (or the PID in a PID file, e.g. with a shared
PID namespace); `command` runs a command line (e.g. `nginx -s reload`); `none` does nothing.

The Reloader coalesces: requests that arrive together (several certificates renewed in one
go) cause one reload. After reloading it can check, by a TLS handshake with SNI to a given
address, that the server now presents each new certificate's serial, and reloads again with
backoff when it does not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from acmebox.config import HostPort
from acmebox.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("docker", "signal", "command", "none")
VERIFY_ATTEMPTS = 5
VERIFY_FIRST_DELAY = 0.5  # seconds; doubles per attempt (nginx swaps workers gracefully)


class ReloadFailed(Exception):
    pass


@dataclass(frozen=True)
class ReloadTarget:
    kind: str
    target: str | None = None

    @classmethod
    def parse(cls, kind: str, target: str | None) -> ReloadTarget:
        if kind not in KINDS:
            raise ConfigError(f"unknown reload kind {kind!r}; choose one of {', '.join(KINDS)}")
        if kind != "none" and not target:
            hint = {"docker": "container name or label=KEY=VALUE", "signal": "a PID or PID file",
                    "command": "a command line"}[kind]  # fmt: skip
            raise ConfigError(f"--reload {kind} needs --reload-target ({hint})")
        if kind == "signal" and not (target or "").isdigit() and not Path(target or "").parent.is_dir():
            raise ConfigError(f"--reload-target {target!r} is neither a PID nor a PID file path")
        return cls(kind, target)

    async def run(self) -> str:
        """Perform one reload; returns what was done, raises ReloadFailed."""
        if self.kind == "none":
            return "nothing (reload none)"
        if self.kind == "signal":
            return _signal(self.target or "")
        if self.kind == "command":
            return await _command(self.target or "")
        return await asyncio.to_thread(_docker, self.target or "")


def _signal(target: str) -> str:
    try:
        pid = int(target) if target.isdigit() else int(Path(target).read_text().strip())
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


def served_serial(host: str, port: int, server_name: str, timeout: float = 5) -> int:
    """The serial of the certificate a TLS server presents for `server_name` (not verified:
    we compare it with what we just wrote, trust is not the question here)."""
    import socket

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        ctx.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ReloadFailed("server presented no certificate")
    return x509.load_der_x509_certificate(der).serial_number


OnResult = Callable[[str], None]  # called with "ok", "failed" or "mismatch" (for metrics)


class Reloader:
    """Coalesces reload requests; one task performs them, then verifies."""

    def __init__(self, target: ReloadTarget, verify: HostPort | None = None,
                 on_result: OnResult | None = None, settle: float = 0.2) -> None:  # fmt: skip
        self.target = target
        self.verify = verify
        self.on_result = on_result or (lambda result: None)
        self.settle = settle  # wait this long for more requests before reloading
        self._wanted: dict[str, int] = {}  # server name -> serial it should present
        self._event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def request(self, server_name: str, serial: int) -> None:
        if self.target.kind == "none":
            return
        self._wanted[server_name] = serial
        self._idle.clear()
        self._event.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        while True:
            await self._event.wait()
            await sleep(self.settle)
            self._event.clear()
            wanted, self._wanted = self._wanted, {}
            await self._reload_and_verify(wanted, sleep)
            if not self._event.is_set():
                self._idle.set()

    async def _reload_and_verify(self, wanted: dict[str, int], sleep: Callable[[float], Awaitable[None]]) -> None:
        delay = VERIFY_FIRST_DELAY
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            try:
                what = await self.target.run()
            except ReloadFailed as e:
                log.error("reload failed (attempt %d/%d): %s", attempt, VERIFY_ATTEMPTS, e)
                self.on_result("failed")
            else:
                log.info("reloaded: %s (for %s)", what, ", ".join(sorted(wanted)))
                self.on_result("ok")
                if self.verify is None or self.target.kind == "none":
                    return
                await sleep(delay)
                wrong = await asyncio.to_thread(self._check, wanted)
                if not wrong:
                    log.info("verified: %s:%d now presents the new certificate(s)", self.verify.host, self.verify.port)
                    return
                log.error("after reload %s:%d still presents %s (attempt %d/%d)", self.verify.host,
                          self.verify.port, "; ".join(wrong), attempt, VERIFY_ATTEMPTS)  # fmt: skip
                self.on_result("mismatch")
            await sleep(delay)
            delay *= 2
        log.error("giving up on reloading after %d attempts; will try again with the next change", VERIFY_ATTEMPTS)

    def _check(self, wanted: dict[str, int]) -> list[str]:
        assert self.verify is not None
        wrong = []
        for name, serial in wanted.items():
            try:
                seen = served_serial(self.verify.host, self.verify.port, name)
            except (OSError, ReloadFailed) as e:
                wrong.append(f"{name}: no answer ({e})")
                continue
            if seen != serial:
                wrong.append(f"{name}: serial {seen:x}, expected {serial:x}")
        return wrong
