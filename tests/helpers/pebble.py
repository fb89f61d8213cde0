"""A real Pebble, started by pebble-test/start.sh on free loopback ports (its defaults: no VA
sleeps, no nonce rejection), its management API, and the acmebox flags that point at it.
Shared by the tests' fixtures and bench/compare.py."""

from __future__ import annotations

import os
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tests.helpers import ROOT
from tests.helpers.process import free_port

PEBBLE_TEST = ROOT / "pebble-test"
PEBBLE_BINARY = PEBBLE_TEST / ".pebble" / "usr" / "bin" / "pebble"


class PebbleError(RuntimeError):
    """Pebble is not installed, or pebble-test/start.sh failed."""


@dataclass
class Pebble:
    run_dir: Path
    directory: str
    management: str
    ca_bundle: Path
    http_port: int
    env: dict[str, str]

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.management + path, context=self._context(), timeout=10) as r:
            return bytes(r.read())

    def post(self, path: str, body: bytes) -> int:
        req = urllib.request.Request(self.management + path, data=body, method="POST")
        with urllib.request.urlopen(req, context=self._context(), timeout=10) as r:
            return int(r.status)

    def root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.get("/roots/0"))

    def log(self) -> str:
        return (self.run_dir / "pebble.log").read_text(errors="replace")

    def orders_in_log(self) -> int:
        return self.log().count("POST /order-plz")


def pebble_installed() -> bool:
    return PEBBLE_BINARY.exists()


def start_pebble(run_dir: Path, **env: str) -> Pebble:
    """Start Pebble through pebble-test/start.sh; ports are free ones unless `env` names them.
    Raises PebbleError when Pebble is not installed or does not start."""
    if not pebble_installed():
        raise PebbleError("Pebble is not installed: run pebble-test/setup.sh (tests/run.sh does)")
    settings = {
        "PEBBLE_RUN_DIR": str(run_dir),
        "PEBBLE_PORT": str(free_port()),
        "PEBBLE_MGMT_PORT": str(free_port()),
        "PEBBLE_HTTP_PORT": str(free_port()),
        "PEBBLE_DNS_PORT": str(free_port()),
        "PEBBLE_CHALLTESTSRV_MGMT_PORT": str(free_port()),
        **env,
    }
    full_env = {**os.environ, **settings}
    out = subprocess.run(
        ["bash", str(PEBBLE_TEST / "start.sh")], env=full_env, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise PebbleError(f"pebble-test/start.sh failed: {out.stderr}")
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return Pebble(
        run_dir=run_dir,
        directory=values["PEBBLE_DIRECTORY"],
        management=values["PEBBLE_MANAGEMENT"],
        ca_bundle=Path(values["PEBBLE_CA_BUNDLE"]),
        http_port=int(values["PEBBLE_HTTP_PORT"]),
        env=settings,
    )


def stop_pebble(pebble: Pebble) -> None:
    subprocess.run(
        ["bash", str(PEBBLE_TEST / "stop.sh")], env={**os.environ, "PEBBLE_RUN_DIR": str(pebble.run_dir)}, timeout=30
    )


@dataclass
class Dirs:
    """A test's own certs volume and state dir."""

    certs: Path
    state: Path


def pebble_args(pebble: Pebble, dirs: Dirs) -> list[str]:
    """The `run` flags that point acmebox at `pebble` with `dirs`."""
    return [
        "--directory", pebble.directory,
        "--ca-bundle", str(pebble.ca_bundle),
        "--certs-dir", str(dirs.certs),
        "--state-dir", str(dirs.state),
        "--listen", f"127.0.0.1:{pebble.http_port}",
    ]
