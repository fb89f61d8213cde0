"""acmebox run the way a user runs it (`python -m acmebox ...`, in the foreground or as a
background service with its log in a file), free loopback ports, waiting for a condition,
and stopping a process the tests started."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.helpers import ROOT


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (Pebble's DNS server takes both)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def acmebox_env(**extra: str) -> dict[str, str]:
    """This process's environment without the ACMEBOX_* and DOCKER_REGISTRY_* variables a
    user's own stack may set, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACMEBOX_", "DOCKER_REGISTRY_"))}
    env.update(extra)
    return env


def user_free_env(**extra: str) -> dict[str, str]:
    """acmebox_env with the test virtualenv's python3 first on PATH (compose/start-registry.sh
    asks acmebox for the canonical name)."""
    env = acmebox_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return {**env, **extra}


def run_acmebox(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acmebox", *args],
        env=env if env is not None else acmebox_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """Bad input: exit 2, no traceback, and one last line `acmebox: error: ...` holding `expected`."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("acmebox: error: "), last
    assert expected in last, last


async def wait_for(predicate: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def wait_sync(predicate: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL when it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServiceProcess:
    """`python -m acmebox run ...` (without --once) in the background, its log in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acmebox", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or acmebox_env(),
            cwd=ROOT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        wait_sync(lambda: self.log().count(text) >= count or self.proc.poll() is not None, timeout, repr(text))
        assert self.log().count(text) >= count, f"service exited ({self.proc.returncode}):\n{self.log()}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def healthz(port: int) -> tuple[int, str]:
    """GET http://127.0.0.1:`port`/healthz: the status and the body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
