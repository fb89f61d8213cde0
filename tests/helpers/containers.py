"""A Docker engine of the tests' own for running the shipped image and compose file as a user
does: dockerd in private network and mount namespaces (so the compose file's ports 80/443 and
/var/run/docker.sock are used as written, and nothing on the machine changes), its
/etc/hosts saying registry.test is 127.0.0.1, its /etc/docker/certs.d trusting Pebble's root,
and no route out. Base images come from pebble-test/container-setup.sh (mmdebstrap rootfs
tars, imported here); the stand-ins for the official images are built from tests/standins/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tests.helpers import ROOT
from tests.helpers.docker import TEST_HOSTS
from tests.helpers.process import stop_process

CACHE = ROOT / "pebble-test" / ".container"
STANDINS = ROOT / "tests" / "standins"
DOMAIN = "registry.test"


class NotPrepared(Exception):
    """What pebble-test/container-setup.sh should have made is missing."""


def rootfs(name: str) -> Path:
    found = sorted((CACHE / "rootfs").glob(f"{name}-*.tar"))
    if not found:
        raise NotPrepared(f"no {name} root filesystem in {CACHE}/rootfs: run pebble-test/container-setup.sh")
    return found[-1]


def compose_v2() -> Path | None:
    path = CACHE / "compose-v2" / "docker-compose"
    return path if os.access(path, os.X_OK) else None


@dataclass
class Engine:
    """dockerd in its own namespaces; `pid` is the process to nsenter."""

    root: Path
    pid: int
    env: dict[str, str]  # DOCKER_HOST and DOCKER_CONFIG for clients outside the namespaces

    @property
    def certs_d(self) -> Path:
        return self.root / "etc-docker" / "certs.d"

    def in_ns(self, *command: str) -> list[str]:
        """`command` in the engine's mount and network namespaces (absolute paths only:
        nsenter -m changes the working directory)."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n", *command]

    def run(self, *command: str, ns: bool = False, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        full = self.in_ns(*command) if ns else list(command)
        out = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=stdin,
                             env={**os.environ, **self.env, **(env or {})})
        if check and out.returncode != 0:
            tail = f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            raise AssertionError(f"{' '.join(command)} exited {out.returncode}:\n{tail}")
        return out

    def docker(self, *args: str, check: bool = True, timeout: float = 600, stdin: str | None = None) -> str:
        return self.run("docker", *args, check=check, timeout=timeout, stdin=stdin).stdout

    def inspect(self, container: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.docker("inspect", container))[0]  # type: ignore[no-any-return]


@contextmanager
def engine(work: Path) -> Iterator[Engine]:
    """Start dockerd (overlay2, default bridge and iptables: all inside the private netns)."""
    d = work / "docker"
    for sub in ("etc-docker/certs.d", "data", "exec", "config"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text(TEST_HOSTS)
    script = (
        "set -e; ip link set lo up; "
        f'mount --bind "{d}/hosts" /etc/hosts; mount --bind "{d}/etc-docker" /etc/docker; '
        "mount -t tmpfs -o mode=755 tmpfs /run; "
        f'exec dockerd --data-root="{d}/data" --exec-root="{d}/exec" --pidfile="{d}/docker.pid" '
        f'--host=unix:///var/run/docker.sock --host="unix://{d}/docker.sock"'
    )
    log = (d / "dockerd.log").open("w")
    proc = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "bash", "-c", script],
                            stdout=log, stderr=subprocess.STDOUT)
    e = Engine(d, proc.pid, {"DOCKER_HOST": f"unix://{d}/docker.sock", "DOCKER_CONFIG": str(d / "config")})
    try:
        deadline = time.monotonic() + 60
        while e.run("docker", "info", check=False, timeout=30).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("dockerd did not start: " + (d / "dockerd.log").read_text()[-2000:])
            time.sleep(0.3)
        yield e
    finally:
        # Containers first (their mounts live in the engine's namespace), then the daemon.
        ids = e.run("docker", "ps", "-aq", check=False, timeout=60).stdout.split()
        if ids:
            e.run("docker", "rm", "-f", *ids, check=False, timeout=120)
        stop_process(proc, timeout=60)
        log.close()


REGISTRY3 = ROOT / "pebble-test" / ".registry3" / "registry"


def build_standins(e: Engine, work: Path) -> None:
    """Import the Debian root filesystems and build the stand-ins under the official names."""
    for name in ("python", "nginx", "registry", "registry3"):
        e.docker("import", str(rootfs(name)), f"local/{name}-rootfs:base")
    e.docker("build", "-q", "-t", "python:3.12-slim", str(STANDINS / "python"))
    e.docker("build", "-q", "-t", "nginx:1.27", str(STANDINS / "nginx"))
    e.docker("build", "-q", "-t", "registry:2", str(STANDINS / "registry"))
    if not REGISTRY3.is_file():
        raise NotPrepared(f"no {REGISTRY3}: run pebble-test/install-registry3.sh")
    registry3 = work / "registry3-context"
    shutil.copytree(STANDINS / "registry3", registry3)
    shutil.copy(REGISTRY3, registry3 / "registry")
    e.docker("build", "-q", "-t", "registry:3", str(registry3))
    context = work / "pebble-context"
    shutil.copytree(STANDINS / "pebble", context)
    shutil.copy(ROOT / "pebble-test" / ".pebble" / "usr" / "bin" / "pebble", context / "pebble")
    e.docker("build", "-q", "-t", "local/pebble", str(context))


PEBBLE_CONFIG = {
    "pebble": {
        "listenAddress": "0.0.0.0:14000",
        "managementListenAddress": "0.0.0.0:15000",
        "certificate": "/pebble/listener.pem",
        "privateKey": "/pebble/listener.key",
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "profiles": {"default": {"description": "default", "validityPeriod": 7776000}},
    }
}

# Test-only additions to the shipped compose file (COMPOSE_FILE=docker-compose.yml:<this>):
# Pebble as the CA on the compose network, nginx also named registry.test there (Pebble's VA
# resolves through Docker's DNS), acmebox trusting Pebble's listener, and the image built from
# the wheelhouse with no network.
TEST_OVERLAY = """\
services:
  pebble:
    image: local/pebble
    command: ["-config", "/pebble/pebble-config.json"]
    environment: {PEBBLE_VA_NOSLEEP: "1", PEBBLE_WFE_NONCEREJECT: "0"}
    volumes: ["${PEBBLE_DIR:?}:/pebble:ro"]
  nginx:
    networks:
      default:
        aliases: ["${DOCKER_REGISTRY_DOMAIN_NAME}"]
  acmebox:
    build:
      args: {PIP_NO_INDEX: "1", PIP_FIND_LINKS: /src/wheelhouse}
    environment: {ACMEBOX_CA_BUNDLE: /pebble/ca.pem}
    volumes: ["${PEBBLE_DIR:?}:/pebble:ro"]
    depends_on: {pebble: {condition: service_started}}
"""


def pebble_dir(work: Path) -> Path:
    """Pebble's config and a listener certificate for the name `pebble`, from a throwaway CA."""
    p = work / "pebble"
    p.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "7",
            "-subj", "/CN=pebble listener CA", "-keyout", str(p / "ca.key"), "-out", str(p / "ca.pem"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=pebble",
            "-keyout", str(p / "listener.key"), "-out", str(p / "listener.csr"))
    (p / "ext").write_text("subjectAltName=DNS:pebble\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(p / "listener.csr"), "-CA", str(p / "ca.pem"), "-CAkey", str(p / "ca.key"),
            "-CAcreateserial", "-days", "7", "-out", str(p / "listener.pem"), "-extfile", str(p / "ext"))
    (p / "listener.key").chmod(0o644)  # Pebble runs as root in its container; the dir is test-only
    (p / "pebble-config.json").write_text(json.dumps(PEBBLE_CONFIG))
    return p


def project_copy(work: Path) -> Path:
    """The repo's tracked files as a user's checkout (no .env, no data/), plus the wheelhouse."""
    repo = work / "repo"
    repo.mkdir()
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = ROOT / f.decode()
        if src.is_file():
            dst = repo / f.decode()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    wheels = CACHE / "wheelhouse"
    if not any(wheels.glob("*.whl")):
        raise NotPrepared(f"no wheels in {wheels}: run pebble-test/container-setup.sh")
    shutil.copytree(wheels, repo / "wheelhouse")
    (repo / "compose" / "docker-compose.test.yml").write_text(TEST_OVERLAY)
    return repo


def wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


USER, PASSWORD = "alice", "alice-s3cret"
ROOTS_URL = "https://pebble:15000/roots/0"


class Project:
    """The compose project in a copy of the repo, driven as a user drives it: start-registry.sh
    and compose commands run in the engine's namespaces, from the compose directory."""

    def __init__(self, e: Engine, work: Path, flavor: str, overlays: tuple[str, ...] = ()) -> None:
        self.e, self.flavor = e, flavor
        self.repo = project_copy(work)
        self.dir = self.repo / "compose"
        config = work / "docker-config"
        config.mkdir()
        if flavor == "v2":
            v2 = compose_v2()
            assert v2 is not None, "no Compose v2 binary"
            (config / "cli-plugins").mkdir()
            (config / "cli-plugins" / "docker-compose").symlink_to(v2)
        self.compose_cmd = ["docker", "compose"] if flavor == "v2" else ["docker-compose"]
        self.env = {
            "DOCKER_CONFIG": str(config),
            "COMPOSE_FILE": ":".join(("docker-compose.yml", *overlays, "docker-compose.test.yml")),
            "PEBBLE_DIR": str(pebble_dir(work)),
            "ACMEBOX_DIRECTORY": "https://pebble:14000/dir",
        }

    def start_script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.e.run("bash", str(self.dir / "start-registry.sh"), *args, DOMAIN, "ops@example.com",
                          ns=True, env=self.env, timeout=900)

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.e.run("sh", "-c", f'cd "{self.dir}" && exec "$@"', "compose", *self.compose_cmd, *args,
                          ns=True, env=self.env, check=check, timeout=600)

    def container(self, service: str) -> str:
        ids = self.e.docker("ps", "-aq", "--filter", f"label=com.docker.compose.service={service}").split()
        assert len(ids) == 1, (service, ids)
        return ids[0]

    def logs(self, service: str) -> str:
        out = self.e.run("docker", "logs", self.container(service), check=False)
        return out.stdout + out.stderr

    def health(self, service: str) -> str:
        state = self.e.inspect(self.container(service))["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def in_ns(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.e.run(*command, ns=True, check=check, timeout=120)

    def served_serial(self) -> int:
        code = f"from acmebox.reload import served_serial; print(served_serial('127.0.0.1', 443, {DOMAIN!r}))"
        return int(self.in_ns(sys.executable, "-c", code).stdout)

    def live_cert(self) -> x509.Certificate:
        pem = self.e.docker("exec", self.container("nginx"), "cat", f"/etc/letsencrypt/live/{DOMAIN}/cert.pem")
        return x509.load_pem_x509_certificate(pem.encode())

    def pebble_orders(self) -> int:
        return self.logs("pebble").count("POST /order-plz")

    def prepare(self) -> None:
        """start-registry.sh --prepare-only, then a user who may push (the README's htpasswd step)."""
        self.start_script("--prepare-only")
        subprocess.run(["htpasswd", "-Bb", str(self.dir / "data" / "auth" / "htpasswd"), USER, PASSWORD],
                       check=True, capture_output=True)

    def trust_pebble_root(self) -> Path:
        """Pebble's root as the engine's certs.d/registry.test/ca.crt (an operator's daemon
        trusts Let's Encrypt's the same way, built in); returns its path."""
        code = ("import ssl, urllib.request; ctx = ssl.create_default_context(cafile='/pebble/ca.pem'); "
                f"print(urllib.request.urlopen({ROOTS_URL!r}, context=ctx).read().decode(), end='')")
        ca = self.e.certs_d / DOMAIN / "ca.crt"
        ca.parent.mkdir(parents=True, exist_ok=True)
        ca.write_text(self.e.docker("exec", self.container("acmebox"), "python", "-c", code))
        return ca
