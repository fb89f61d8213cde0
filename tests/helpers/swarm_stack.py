"""The registry stack deployed on the tests' 3-node Swarm (tests/helpers/swarm.py) the way an operator
deploys it (compose/start-registry.sh --swarm), and what the Swarm test and bench/swarm.py ask
of it: acmebox's health, status and live serial, what each node serves, a client looping over
every node, memory per node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.containers import compose_v2, wait
from tests.helpers.swarm import DOMAIN, FABRIC_IP, Node, Swarm, build_images, served_serial, swarm

STACK = "registry"
USER, PASSWORD = "alice", "alice-s3cret"

# Test-only additions (COMPOSE_FILE=docker-compose.yml:docker-compose.swarm.yml:<this>): acmebox
# trusts Pebble's listener certificate.
TEST_OVERLAY = """\
services:
  acmebox:
    environment: {ACMEBOX_CA_BUNDLE: /pebble/listener-ca.pem}
    volumes: ["${PEBBLE_DIR:?}:/pebble:ro"]
"""


class Deployed:
    def __init__(self, s: Swarm, repo: Path) -> None:
        self.s, self.repo = s, repo
        self.measured: dict[str, Any] = {}
        self.deploy_output = ""  # what start-registry.sh --swarm printed

    @property
    def nodes(self) -> list[Node]:
        return [n for n in self.s.nodes if n.proc is not None]

    def acmebox(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        first = self.s.node(1)
        cid = first.container(f"{STACK}_acmebox")
        if cid is None and not check:
            return subprocess.CompletedProcess(args, 1, "", "acmebox is not running on node1")
        assert cid is not None, "acmebox is not running on node1"
        return first.engine.run("docker", "exec", cid, *args, check=check, timeout=300)

    def health(self) -> tuple[int, str]:
        code = ("import urllib.request, urllib.error\ntry:\n r = urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
                "\n print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n print(e.code);"
                " print(e.read().decode())")
        out = self.acmebox("python", "-c", code, check=False)
        if out.returncode != 0:  # not answering yet (starting): no status
            return 0, out.stderr[-500:]
        status, _, text = out.stdout.partition("\n")
        return int(status), text

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.acmebox("acmebox", "status", "--json", check=False).stdout)  # type: ignore[no-any-return]

    def live_serial(self) -> int | None:
        if self.s.node(1).container(f"{STACK}_acmebox") is None:
            return None
        rows = self.status()  # [] until the service recorded its configuration
        if not rows:
            return None
        row = rows[0]
        return int(row["serial"], 16) if row["serial"] and row["issuer"] != "(self-signed placeholder)" else None

    def diagnose(self) -> str:
        """What the stack's tasks and logs say (for a failure's message)."""
        first = next(n for n in self.nodes)
        out = [first.docker("stack", "ps", "--no-trunc", STACK, check=False)]
        for svc in ("acmebox", "follower", "nginx", "registry"):
            logs = first.engine.run("docker", "service", "logs", "--tail", "40", f"{STACK}_{svc}", check=False,
                                    timeout=60)
            out.append(f"--- {svc}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        return "\n".join(out)

    def served(self) -> dict[str, int | None]:
        return {n.name: served_serial(self.s, n) for n in self.nodes}

    def all_serve(self, serial: int | None, names: list[str] | None = None) -> bool:
        served = self.served()
        return serial is not None and all(served[n] == serial for n in (names or list(served)))

    def readiness(self, node: Node) -> int:
        """The HTTP status of `node`'s readiness path (/.well-known/acmebox-ready on port 80, what
        a load balancer polls), asked from the fabric namespace; 0 when nothing answers."""
        out = self.s.fabric("curl", "-s", "-o", "/dev/null", "--max-time", "5", "-w", "%{http_code}",
                            f"http://{node.ip}/.well-known/acmebox-ready", check=False).stdout.strip()
        return int(out) if out.isdigit() else 0

    def containers(self) -> dict[str, str | None]:
        return {f"{n.name}/{svc}": n.container(f"{STACK}_{svc}") for n in self.nodes for svc in ("nginx", "follower")}




@contextmanager
def deployed_stack(work: Path) -> Iterator[Deployed]:
    """A swarm, Pebble, the images, and the stack deployed until every node serves the first
    certificate. `measured` holds the seconds each phase took."""
    work.chmod(0o755)
    with swarm(work) as s:
        pebble = s.pebble_up()
        started = time.monotonic()
        repo = build_images(s)
        d = Deployed(s, repo)
        d.measured["seconds_images"] = round(time.monotonic() - started, 1)
        (repo / "compose" / "docker-compose.swarmtest.yml").write_text(TEST_OVERLAY)
        config = work / "docker-config"
        (config / "cli-plugins").mkdir(parents=True)
        (config / "cli-plugins" / "docker-compose").symlink_to(compose_v2() or "")
        first = s.node(1)
        env = {"DOCKER_CONFIG": str(config), "PEBBLE_DIR": str(pebble),
               "COMPOSE_FILE": "docker-compose.yml:docker-compose.swarm.yml:docker-compose.swarmtest.yml",
               "ACMEBOX_DIRECTORY": f"https://{FABRIC_IP}:14000/dir"}
        script = str(repo / "compose" / "start-registry.sh")
        first.in_ns("bash", script, "--prepare-only", DOMAIN, "ops@example.com", env=env, timeout=300)
        subprocess.run(["htpasswd", "-Bb", str(repo / "compose" / "data" / "auth" / "htpasswd"), USER, PASSWORD],
                       check=True, capture_output=True)
        deploy_started = time.monotonic()
        up = first.in_ns("bash", script, "--swarm", DOMAIN, "ops@example.com", env=env, timeout=300)
        d.deploy_output = up.stdout + up.stderr
        try:
            wait(lambda: d.live_serial() is not None, 240, "the first certificate")
            wait(lambda: d.all_serve(d.live_serial()), 120, "every node to serve the certificate")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{d.diagnose()}") from None
        d.measured["seconds_deploy_to_every_node_serving"] = round(time.monotonic() - deploy_started, 1)
        yield d


def start_client(d: Deployed, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    stop, result = d.s.work / f"{name}.stop", d.s.work / f"{name}.json"
    ca = d.s.work / "pebble-root.pem"
    ca.write_text(d.s.pebble_root())
    assert d.s.fabric_proc is not None
    proc = subprocess.Popen(["nsenter", "-t", str(d.s.fabric_proc.pid), "-n", sys.executable,
                             str(Path(__file__).parent / "swarm_client.py"), str(ca), DOMAIN, str(stop), str(result),
                             *(n.ip for n in d.s.nodes)])
    return proc, stop, result


def stop_client(proc: subprocess.Popen[bytes], stop: Path, result: Path) -> dict[str, Any]:
    stop.touch()
    proc.wait(timeout=60)
    return json.loads(result.read_text())  # type: ignore[no-any-return]



def _tree_pss_kib(roots: set[int]) -> int:
    """PSS of the processes in `roots` and all their descendants."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    seen, todo, total = set(), list(roots), 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def memory_mib(node: Node) -> dict[str, int]:
    """PSS in MiB on `node`: "total" (dockerd, containerd, the shims and every container's
    processes: everything in the node's network namespace and below it), and per service."""
    assert node.proc is not None
    ns = Path(f"/proc/{node.proc.pid}/ns/net").readlink()
    roots = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "ns" / "net").readlink() == ns:
                    roots.add(int(proc.name))
            except OSError:
                continue
    out = {"total": _tree_pss_kib(roots) // 1024}
    for svc in ("nginx", "follower", "acmebox", "registry"):
        cid = node.container(f"{STACK}_{svc}")
        if cid is not None:
            pid = int(node.docker("inspect", "-f", "{{.State.Pid}}", cid).strip())
            out[svc] = _tree_pss_kib({pid}) // 1024
    return out
