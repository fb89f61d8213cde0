"""A 3-node Docker Swarm of the tests' own, inside namespaces (after the recipe in the shared
research, swarm-3node.sh), with Pebble beside it; more nodes can join it later (`Swarm.join`).

    fabric netns (unshare --net --uts): bridge br0 192.168.77.1/24, Pebble and its DNS
       (pebble-challtestsrv) listening there
    node N (N = 1..3, and 4.. when they join): dockerd in its own network, mount and UTS namespaces, hostname nodeN,
       eth0 192.168.77.1N/24 on a veth to br0 (both ends made inside the fabric namespace),
       its own data-root, /run, /etc/docker (certs.d trusts Pebble's root) and /etc/hosts
       (registry.test is the node's own address)

Nothing is added to the host's network namespace; the nodes have no default route. Every
probe of a node address runs inside the namespaces (`Node.run(..., ns=True)` or `fabric()`),
never from the host's. Processes are stopped by the PIDs recorded here, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.containers import REGISTRY3, STANDINS, Engine, NotPrepared, project_copy, rootfs, wait
from tests.helpers.process import stop_process

NET = "192.168.77"
FABRIC_IP = f"{NET}.1"
DOMAIN = "registry.test"
PEBBLE_BIN = ROOT / "pebble-test" / ".pebble" / "usr" / "bin"


def _own_netns(pid: int, timeout: float = 10) -> None:
    """Wait until `pid` is in a network namespace of its own: a veth made before unshare() ran
    would put its peer into the host's namespace."""
    mine = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/net") != mine:
                return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never left the host's network namespace")


@dataclass
class Node:
    n: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ip(self) -> str:
        return f"{NET}.1{self.n}"

    @property
    def name(self) -> str:
        return f"node{self.n}"

    @property
    def engine(self) -> Engine:
        assert self.proc is not None, f"{self.name} is down"
        return Engine(self.root, self.proc.pid, {"DOCKER_HOST": f"unix://{self.root}/docker.sock",
                                                  "DOCKER_CONFIG": str(self.root / "config")})

    def docker(self, *args: str, check: bool = True, timeout: float = 600, stdin: str | None = None) -> str:
        return self.engine.docker(*args, check=check, timeout=timeout, stdin=stdin)

    def in_ns(self, *command: str, check: bool = True, timeout: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        assert self.proc is not None
        full = ["nsenter", "-t", str(self.proc.pid), "-m", "-n", "-u", *command]
        out = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **self.engine.env, **(env or {})})
        if check and out.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(command)} exited {out.returncode}:\n"
                                 f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return out

    def container(self, service: str) -> str | None:
        """The running container of stack service `service` on this node."""
        ids = self.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").split()
        return ids[0] if ids else None


@dataclass
class Swarm:
    work: Path
    nodes: list[Node] = field(default_factory=list)
    fabric_proc: subprocess.Popen[bytes] | None = None
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)  # Pebble, its DNS

    def fabric(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self.fabric_proc is not None
        out = subprocess.run(["nsenter", "-t", str(self.fabric_proc.pid), "-n", "-u", *command],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"fabric: {' '.join(command)} exited {out.returncode}: {out.stderr[-2000:]}")
        return out

    def fabric_up(self) -> None:
        script = (f"hostname fabric; ip link set lo up; ip link add br0 type bridge; "
                  f"ip addr add {FABRIC_IP}/24 dev br0; ip link set br0 up; exec sleep infinity")
        self.fabric_proc = subprocess.Popen(["unshare", "--net", "--uts", "bash", "-c", script])
        _own_netns(self.fabric_proc.pid)
        wait(lambda: self.fabric("ip", "link", "show", "br0", check=False).returncode == 0, 10, "the bridge")

    def node_up(self, n: int) -> Node:
        """Start node n's dockerd (the same data-root on a restart) and wire it to the bridge."""
        d = self.work / f"node{n}"
        for sub in ("data", "exec", "etc-docker/certs.d", "config"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{NET}.1{n} {DOMAIN}\n"
                                 + "".join(f"{NET}.1{i} node{i}\n" for i in range(1, max(n, 3) + 1)))
        script = (
            f'set -e; hostname node{n}; ip link set lo up; '
            'for _ in $(seq 500); do ip link show eth0 >/dev/null 2>&1 && break; sleep 0.02; done; '
            f'ip addr add {NET}.1{n}/24 dev eth0; ip link set eth0 up; '
            f'mount --bind "{d}/hosts" /etc/hosts; mount --bind "{d}/etc-docker" /etc/docker; '
            'mount -t tmpfs -o mode=755 tmpfs /run; '
            f'exec dockerd --data-root="{d}/data" --exec-root="{d}/exec" --pidfile="{d}/docker.pid" '
            f'--host=unix:///var/run/docker.sock --host="unix://{d}/docker.sock"'
        )
        log = (d / "dockerd.log").open("ab")
        proc = subprocess.Popen(["unshare", "--net", "--mount", "--uts", "--propagation", "private", "bash", "-c",
                                 script], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _own_netns(proc.pid)
        # both ends inside the fabric namespace; the peer goes straight into the node's
        self.fabric("ip", "link", "add", f"n{n}", "type", "veth", "peer", "name", "eth0", "netns", str(proc.pid))
        self.fabric("ip", "link", "set", f"n{n}", "master", "br0", "up")
        node = next((x for x in self.nodes if x.n == n), None)
        if node is None:
            node = Node(n, d)
            self.nodes.append(node)
        node.proc = proc

        def answers() -> bool:
            assert proc.poll() is None, (d / "dockerd.log").read_text()[-2000:]
            return node.engine.run("docker", "info", check=False, timeout=30).returncode == 0

        wait(answers, 60, f"node{n}'s dockerd")
        return node

    def node_down(self, n: int) -> None:
        """SIGTERM to node n's dockerd (it stops its containers), by PID."""
        node = self.node(n)
        if node.proc is not None:
            stop_process(node.proc, 90)
            node.proc = None

    def node(self, n: int) -> Node:
        return next(x for x in self.nodes if x.n == n)

    def form(self) -> None:
        first = self.node(1)
        first.docker("swarm", "init", "--advertise-addr", first.ip)
        token = first.docker("swarm", "join-token", "-q", "manager").strip()
        for node in self.nodes[1:]:  # three managers: the swarm keeps quorum with one node down
            node.docker("swarm", "join", "--token", token, "--advertise-addr", node.ip, f"{first.ip}:2377")

    def join(self, n: int, images: list[str]) -> Node:
        """Node n joins the running swarm as a worker, as an operator adds a node: its dockerd,
        the images from node1 (`docker save | docker load`), then `docker swarm join`."""
        node = self.node_up(n)
        load_images(self, images, [node])
        manager = self.node(1)
        token = manager.docker("swarm", "join-token", "-q", "worker").strip()
        node.docker("swarm", "join", "--token", token, "--advertise-addr", node.ip, f"{manager.ip}:2377")
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with suppress(Exception):
                    ids = node.docker("ps", "-aq", check=False, timeout=60).split()
                    if ids:
                        node.docker("rm", "-f", *ids, check=False, timeout=120)
        for node in self.nodes:
            if node.proc is not None:
                stop_process(node.proc, 90)
        for proc in self.others:
            stop_process(proc, 10)
        if self.fabric_proc is not None:
            stop_process(self.fabric_proc, 10)

    # -- Pebble in the fabric namespace ------------------------------------------------------------

    def pebble_up(self) -> Path:
        """challtestsrv (every name -> node1 until rotated) and Pebble, on FABRIC_IP; returns
        Pebble's directory of files (listener-ca.pem, pebble.log)."""
        p = self.work / "pebble"
        p.mkdir()

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "7",
                "-subj", "/CN=swarm test listener CA", "-keyout", str(p / "ca.key"), "-out",
                str(p / "listener-ca.pem"))
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=pebble",
                "-keyout", str(p / "listener.key"), "-out", str(p / "listener.csr"))
        (p / "ext").write_text(f"subjectAltName=IP:{FABRIC_IP}\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", str(p / "listener.csr"), "-CA", str(p / "listener-ca.pem"), "-CAkey",
                str(p / "ca.key"), "-CAcreateserial", "-days", "7", "-out", str(p / "listener.pem"), "-extfile",
                str(p / "ext"))
        (p / "listener-ca.pem").chmod(0o644)
        p.chmod(0o755)
        config = {"pebble": {
            "listenAddress": f"{FABRIC_IP}:14000", "managementListenAddress": f"{FABRIC_IP}:15000",
            "certificate": str(p / "listener.pem"), "privateKey": str(p / "listener.key"),
            "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
            "profiles": {"default": {"description": "default", "validityPeriod": 7776000}},
        }}
        (p / "pebble-config.json").write_text(json.dumps(config))
        assert self.fabric_proc is not None
        ns = ["nsenter", "-t", str(self.fabric_proc.pid), "-n"]
        with (p / "challtestsrv.log").open("wb") as log:
            self.others.append(subprocess.Popen(
                [*ns, str(PEBBLE_BIN / "pebble-challtestsrv"), "-dnsserver", f"{FABRIC_IP}:8053", "-management",
                 f"{FABRIC_IP}:8055", "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
                 "-defaultIPv4", f"{NET}.11", "-defaultIPv6", ""], stdout=log, stderr=subprocess.STDOUT))
        with (p / "pebble.log").open("wb") as log:
            self.others.append(subprocess.Popen(
                [*ns, str(PEBBLE_BIN / "pebble"), "-config", str(p / "pebble-config.json"), "-dnsserver",
                 f"{FABRIC_IP}:8053"], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}))

        def up() -> bool:
            return self.fabric("curl", "-fsS", "--cacert", str(p / "listener-ca.pem"),
                               f"https://{FABRIC_IP}:14000/dir", check=False).returncode == 0

        wait(up, 30, "Pebble")
        self.pebble = p
        return p

    def point_dns_at(self, n: int) -> None:
        """Pebble's validation of any name goes to node n from now on."""
        body = json.dumps({"ip": f"{NET}.1{n}"})
        self.fabric("curl", "-fsS", "-d", body, f"http://{FABRIC_IP}:8055/set-default-ipv4")

    def orders(self) -> int:
        return (self.pebble / "pebble.log").read_text(errors="replace").count("POST /order-plz")

    def pebble_root(self) -> str:
        return self.fabric("curl", "-fsS", "--cacert", str(self.pebble / "listener-ca.pem"),
                           f"https://{FABRIC_IP}:15000/roots/0").stdout


def served_serial(s: Swarm, target: Node) -> int | None:
    """The serial `target`'s port 443 presents for DOMAIN, looked at from the fabric namespace."""
    code = (f"from acmebox.reload import served_serial\ntry: print(served_serial({target.ip!r}, 443, {DOMAIN!r}))\n"
            "except Exception: print('none')")
    out = s.fabric("env", f"PYTHONPATH={ROOT}", sys.executable, "-c", code).stdout.strip()
    return None if out == "none" else int(out)


def load_images(swarm: Swarm, images: list[str], targets: list[Node] | None = None) -> None:
    """`docker save` on node1 into `docker load` on `targets` (every other node), in parallel."""
    first = swarm.node(1)
    tar = swarm.work / "images.tar"
    first.docker("save", "-o", str(tar), *images)
    loads = [subprocess.Popen(["docker", "load", "-q", "-i", str(tar)], stdout=subprocess.DEVNULL,
                              env={**os.environ, **node.engine.env}) for node in targets or swarm.nodes[1:]]
    assert all(p.wait() == 0 for p in loads)
    tar.unlink()


def build_images(swarm: Swarm) -> Path:
    """The stand-ins and acmebox:local (offline, from the wheelhouse) on node1, loaded into
    the other nodes; returns the repo copy the stack is deployed from."""
    first = swarm.node(1)
    for name in ("python", "nginx", "registry3"):
        first.docker("import", str(rootfs(name)), f"local/{name}-rootfs:base")
    for tag, standin in (("python:3.12-slim", "python"), ("nginx:1.27", "nginx")):
        first.docker("build", "-q", "-t", tag, str(STANDINS / standin))
    if not REGISTRY3.is_file():
        raise NotPrepared(f"no {REGISTRY3}: run pebble-test/install-registry3.sh")
    registry3 = swarm.work / "registry3-context"
    shutil.copytree(STANDINS / "registry3", registry3)
    shutil.copy(REGISTRY3, registry3 / "registry")
    first.docker("build", "-q", "-t", "registry:3", str(registry3))
    repo = project_copy(swarm.work)
    first.docker("build", "-q", "-t", "acmebox:local", "--build-arg", "PIP_NO_INDEX=1",
                 "--build-arg", "PIP_FIND_LINKS=/src/wheelhouse", str(repo))
    load_images(swarm, ["acmebox:local", "nginx:1.27", "registry:3"])
    return repo


def busybox_tar(work: Path) -> bytes:
    rootfs = work / "bb-rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    return subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True).stdout


@contextmanager
def swarm(work: Path) -> Iterator[Swarm]:
    s = Swarm(work)
    try:
        s.fabric_up()
        for n in (1, 2, 3):
            s.node_up(n)
        s.form()
        yield s
    finally:
        s.stop_all()
