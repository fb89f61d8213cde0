"""Fixtures: a real Pebble (started by pebble-test/start.sh on free loopback ports) and a
helper that runs `python -m acmebox` the way a user does."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from acmebox.clock import Clock

ROOT = Path(__file__).resolve().parent.parent
PEBBLE_TEST = ROOT / "pebble-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def start_pebble(run_dir: Path, **env: str) -> Pebble:
    """Start Pebble through pebble-test/start.sh; ports are free ones unless `env` names them."""
    if not (PEBBLE_TEST / ".pebble" / "usr" / "bin" / "pebble").exists():
        pytest.fail("Pebble is not installed: run pebble-test/install.sh (tests/run.sh does)")
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
        pytest.fail(f"pebble-test/start.sh failed: {out.stderr}")
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


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """Pebble 2.10 without VA sleeps or nonce rejection: fast and deterministic."""
    p = start_pebble(tmp_path_factory.mktemp("pebble"))
    yield p
    stop_pebble(p)


@pytest.fixture(scope="session")
def pebble_nonce_reject(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """Pebble with its default 5% badNonce rejection on."""
    p = start_pebble(tmp_path_factory.mktemp("pebble-nonce"), PEBBLE_WFE_NONCEREJECT="5")
    yield p
    stop_pebble(p)


@dataclass
class Dirs:
    certs: Path
    state: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path / "certs", tmp_path / "state")


def acmebox_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACMEBOX_", "DOCKER_REGISTRY_"))}
    env.update(extra)
    return env


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


def pebble_args(pebble: Pebble, dirs: Dirs) -> list[str]:
    return [
        "--directory", pebble.directory,
        "--ca-bundle", str(pebble.ca_bundle),
        "--certs-dir", str(dirs.certs),
        "--state-dir", str(dirs.state),
        "--listen", f"127.0.0.1:{pebble.http_port}",
    ]  # fmt: skip


class FakeClock(Clock):
    """Real time plus an offset that a test moves forward; sleeps notice the move."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, delta: dt.timedelta) -> None:
        self.offset += delta

    async def sleep_until(self, when: dt.datetime, wake: asyncio.Event) -> None:
        while self.now() < when and not wake.is_set():
            await asyncio.sleep(0.02)


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


class ServiceProcess:
    """`python -m acmebox run ...` (without --once) in the background, its log in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "acmebox", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env or acmebox_env(), cwd=ROOT)  # fmt: skip

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


TEST_HOSTS = "127.0.0.1 localhost\n::1 localhost\n127.0.0.1 registry.test\n"


@pytest.fixture(scope="session")
def test_hosts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An /etc/hosts in which registry.test is 127.0.0.1, for clients run by `with_hosts`."""
    path = tmp_path_factory.mktemp("hosts") / "hosts"
    path.write_text(TEST_HOSTS)
    return path


def with_hosts(hosts: Path, command: list[str]) -> list[str]:
    """`command` in a private mount namespace that sees `hosts` as /etc/hosts: the client
    resolves registry.test to loopback, nothing on the machine changes."""
    return ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *command]


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory, test_hosts: Path) -> Iterator[str]:
    """A real dockerd of our own (vfs, no iptables, no bridge, own roots and socket, and the
    test /etc/hosts). Yields its DOCKER_HOST. Skips, saying why, only where dockerd cannot start."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.skip("dockerd is not installed (Debian package docker.io)")
    root = tmp_path_factory.mktemp("docker")
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("w")
    command = [dockerd, "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none",
               f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}", f"--pidfile={root / 'docker.pid'}",
               f"--host=unix://{sock}"]  # fmt: skip
    proc = subprocess.Popen(with_hosts(test_hosts, command), stdout=log, stderr=subprocess.STDOUT)
    host = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["docker", "-H", host, "info"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "dockerd.log").read_text()[-500:]
                pytest.skip(f"dockerd could not start here: {tail}")
            time.sleep(0.2)
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def busybox_image(docker_host: str, tmp: Path, tag: str) -> str:
    """An image made with `docker import` from a root filesystem holding static busybox."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        pytest.fail("busybox is not installed (Debian package busybox-static)")
    rootfs = tmp / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "tmp").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in ("sh", "sleep", "echo"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True).stdout
    subprocess.run(["docker", "-H", docker_host, "import", "-", tag], input=tar, check=True, capture_output=True)
    return tag


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Any]]:
    """The registry stacks on loopback (see stack.py), one per registry version ("3", "2"),
    each started when a test first asks for it and kept for the session."""
    import contextlib

    from stack import running_stack

    with contextlib.ExitStack() as running:
        made: dict[str, Any] = {}

        def get(version: str) -> Any:
            if version not in made:
                run = tmp_path_factory.mktemp(f"stack-registry{version}")
                made[version] = running.enter_context(running_stack(run, registry_version=version))
            return made[version]

        yield get


@pytest.fixture(scope="session")
def stack(stacks: Callable[[str], Any]) -> Any:
    """The loopback stack with the default registry (ACMEBOX_TEST_REGISTRY, else 3)."""
    from registries import default_registry

    return stacks(default_registry())


@pytest.fixture(params=["3", "2"], ids=["registry3", "registry2.8"])
def each_stack(request: pytest.FixtureRequest, stacks: Callable[[str], Any]) -> Any:
    """The loopback stack with distribution 3.x, then with 2.8: for the tests that must hold on both."""
    return stacks(request.param)


NGINX_MAIN = """
worker_processes 1;
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
{servers}
}}
"""


class Nginx:
    """Debian's nginx with its own prefix `run`, serving the given `server { ... }` blocks."""

    def __init__(self, run: Path, servers: str) -> None:
        run.mkdir(parents=True, exist_ok=True)
        self.run = run
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.conf = run / "nginx.conf"
        self.conf.write_text(NGINX_MAIN.format(run=run, servers=servers))

    @property
    def pid_file(self) -> Path:
        return self.run / "nginx.pid"

    def start(self) -> None:
        subprocess.run([self.binary, "-c", str(self.conf), "-p", str(self.run)], check=True, capture_output=True)

    def stop(self) -> None:
        if self.pid_file.exists():
            subprocess.run([self.binary, "-c", str(self.conf), "-p", str(self.run), "-s", "stop"], capture_output=True)
