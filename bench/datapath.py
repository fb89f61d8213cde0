"""Data-path benchmark: pulls, pushes, manifest GETs and logins through the registry stack,
against the bare registry (the limit) and Caddy (the peer), all on 127.0.0.1.

    .venv/bin/python bench/datapath.py [--reps 3] [--size-mib 1024] [--chunk-mib 64]
                                       [--duration 5] [--logins 64] [--json FILE] [--perf DIR]

Three configurations, each measured in every repetition, their order rotating from one
repetition to the next (interleaved, so a noisy neighbour hits everyone alike):

  stack   the stack as tests/helpers/stack.py builds it: Debian's nginx with the project's template
          (TLS), the registry (distribution 3.x, or 2.8 with ACMEBOX_TEST_REGISTRY=2) with token
          auth, acmebox's token service; bearer tokens
  bare    the same registry alone, the project's registry config without `auth`, plain
          HTTP: what the machine can do without TLS, proxy or tokens (the limit)
  caddy   Debian's Caddy as the TLS reverse proxy in nginx's place, with the same certificate
          and token service, in front of a registry of its own with the project's config and
          token auth (the peer)

Both other registries run without the `redirect` storage middleware of the project's config:
its 307s to the storage are taken only by nginx's template (which then sends the blob from
the storage itself); a registry is not otherwise run that way.

Work, per repetition and configuration:

  push-put    one blob of --size-mib random bytes: POST, then one PUT with the digest (curl -T)
  push-patch  the same blob as --chunk-mib PATCH chunks, then PUT with the digest
  pull        GET of that blob (curl, to a file in /dev/shm); the file's SHA-256 is checked
  manifest16  GETs of one image manifest by tag with a bearer token for wrk's run of
  manifest128 --duration seconds, 16 and 128 connections; any non-2xx answer fails the run
  logins      (stack only) --logins concurrent logins of the htpasswd's users from one address,
              then a password guesser from the same address: the valid ones must all get a
              token and the guesser must end on 429

Every push must be answered 201 with the blob's digest, every pulled blob and manifest must
hash to its digest. Clients are curl and wrk (C, HTTP/1.1, OpenSSL) so the client's cost is
the same kind everywhere; each client's CPU comes from wait4, each server's from
/proc/PID/stat (nginx: master and workers). Ratios are taken within a repetition (stack ÷
bare, stack ÷ caddy; for pushes and pulls by throughput, for manifests by requests per
second) and given as median (min-max). acmebox's resident memory (VmRSS, as bench/compare.py
reads it) is taken after the logins with the token service on.

The stack runs from this work tree (tests/stack.py renders nginx/templates; the registry gets
compose/registry/config.yml). Each login repetition presents its own X-Forwarded-For address
(nginx passes it on, and acmebox believes 127.0.0.1 as the stack's proxy), so one
repetition's guesser does not throttle the next repetition's users. Needs Debian's caddy and
wrk (pebble-test/setup.sh installs them).

--perf DIR profiles each measured work with `perf record` (Profiler): where the CPU figures
say how much, the profiles say on what.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.helpers

from tests.helpers.docker import TEST_HOSTS, with_hosts  # noqa: E402
from tests.helpers.registries import default_registry, registry_command  # noqa: E402
from tests.helpers.stack import DOMAIN, REGISTRY_CONFIG, USERS, Stack, host_path_of, running_stack  # noqa: E402

CONFIGS = ("stack", "bare", "caddy")
REGISTRY = default_registry()
REGISTRY_COMM = {"3": "registry", "2": "docker-registry"}  # the process name in /proc/PID/comm
TRANSFERS = ("push-put", "push-patch", "pull")
LOADS = (16, 128)
WORKS = (*TRANSFERS, *(f"manifest{c}" for c in LOADS), "logins")
GUESSES = 30  # wrong passwords from the guesser: more than any per-address burst
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")

CADDYFILE = """
{{
    admin off
    auto_https off
    storage file_system {run}/caddy-data
    log {{
        output file {run}/caddy.log
    }}
}}
https://{domain}:{port} {{
    bind 127.0.0.1
    tls {cert} {key}
    handle /auth/token {{
        reverse_proxy {acmebox}
    }}
    handle {{
        reverse_proxy {registry}
    }}
}}
"""


# -- processes and their CPU -------------------------------------------------------------------


def proc_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes have used so far; ended ones count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def with_children(pid: int) -> list[int]:
    """`pid` and its direct children (nginx's master and its workers)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
    return pids


class Profiler:
    """--perf DIR: `perf record` (cpu-clock samples, which need no hardware counters) of the
    server processes during each measured work and of each client run, one file per work,
    configuration, repetition and side; summarized at the end by `perf report`. The figures
    of a profiled run carry perf's own cost: read its profiles, not its rates."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.label, self.clients = out, "", 0
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def record(self, name: str, target: list[str]) -> list[str]:
        assert self.out is not None
        return ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-o", str(self.out / f"{name}.data"), *target]

    def client(self, cmd: list[str]) -> list[str]:
        if self.out is None:
            return cmd
        self.clients += 1
        return self.record(f"{self.label}-client{self.clients}", ["--", *cmd])

    @contextlib.contextmanager
    def servers(self, label: str, pids: Sequence[int]) -> Iterator[None]:
        self.label, self.clients = label, 0
        if self.out is None:
            yield
            return
        proc = subprocess.Popen(self.record(f"{label}-servers", ["-p", ",".join(map(str, pids))]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)  # perf attaches before the work starts
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)

    def summarize(self) -> None:
        """Per data file, the top symbols (process, library, function) as DIR/NAME.txt."""
        if self.out is None:
            return
        for data in sorted(self.out.glob("*.data")):
            report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort",
                                     "comm,dso,sym", "--percent-limit", "1"], capture_output=True, text=True)
            data.with_suffix(".txt").write_text(report.stdout)


PROFILER = Profiler(None)


def run_client(cmd: list[str]) -> str:
    """Run one client to its end; its output. Raises on a non-zero exit. (Its CPU is counted
    by ChildCPU: communicate() reaps it.)"""
    proc = subprocess.Popen(PROFILER.client(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode()


class ChildCPU:
    """CPU of the bench's finished children (curl, wrk) between two readings."""

    def __enter__(self) -> ChildCPU:
        r = os.times()
        self.start = r.children_user + r.children_system
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        r = os.times()
        self.seconds = r.children_user + r.children_system - self.start


# -- the three configurations ------------------------------------------------------------------


@dataclass
class Frontend:
    """One way in: base URL clients use, how curl reaches it, where tokens come from, and the
    server processes whose CPU counts for it (role -> pids)."""

    name: str
    base: str  # https://registry.test:PORT or http://127.0.0.1:PORT
    port: int
    tls: bool
    root_pem: Path | None
    processes: dict[str, list[int]] = field(default_factory=dict)
    hosts: Path | None = None  # an /etc/hosts naming registry.test, for wrk (which has no --resolve)

    @property
    def host(self) -> str:
        return f"{DOMAIN}:{self.port}" if self.tls else f"127.0.0.1:{self.port}"

    def curl(self) -> list[str]:
        cmd = ["curl", "-sS", "--http1.1", "--noproxy", "*"]
        if self.tls:
            assert self.root_pem is not None
            cmd += ["--cacert", str(self.root_pem), "--resolve", f"{DOMAIN}:{self.port}:127.0.0.1"]
        return cmd

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        if not self.tls:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        assert self.root_pem is not None
        context = ssl.create_default_context(cafile=str(self.root_pem))
        conn = http.client.HTTPSConnection(DOMAIN, self.port, context=context, timeout=timeout)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        conn.sock = context.wrap_socket(sock, server_hostname=DOMAIN)
        return conn

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers={"Host": self.host, **(headers or {})})
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()

    def token(self, scope: str, basic: tuple[str, str] | None = None) -> dict[str, str]:
        """Authorization headers for `scope` (none for the bare registry, which has no auth)."""
        if not self.tls:
            return {}
        headers = {}
        if basic:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        status, _, body = self.request("GET", f"/auth/token?service=registry&scope={scope}", headers)
        if status != 200:
            raise RuntimeError(f"{self.name}: token for {scope}: {status} {body[:200]!r}")
        return {"Authorization": f"Bearer {json.loads(body)['token']}"}

    def cpu(self) -> dict[str, float]:
        return {role: proc_cpu(pids) for role, pids in self.processes.items()}


def upstreams(stack: Stack) -> tuple[str, str]:
    """The registry's and acmebox's addresses, as the rendered nginx config names them."""
    conf = (stack.run / "nginx" / "conf.d" / "registry.conf").read_text()
    registry = re.search(r"set \$registry ([0-9.:]+);", conf)
    acmebox = re.search(r"set \$acmebox ([0-9.:]+);", conf)
    assert registry and acmebox, "the template's upstream variables moved"
    return registry.group(1), acmebox.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}: {log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.05)


@contextlib.contextmanager
def plain_registry(run: Path, token_cert: Path | None) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A registry of its own with the project's config as a registry is usually run: without the
    `redirect` middleware (whose 307s only nginx's template takes), and without `auth` when
    `token_cert` is None (the bare registry), else trusting acmebox's tokens (Caddy's)."""
    service = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())["services"]["registry"]
    config = yaml.safe_load(host_path_of(service, REGISTRY_CONFIG).read_text())
    config.pop("middleware", None)
    port = free_port()
    env = {**os.environ, "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}", "REGISTRY_HTTP_SECRET": "bench",
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(run / "data")}
    if token_cert is None:
        config.pop("auth", None)
    else:
        env["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"] = str(token_cert)
    run.mkdir(parents=True)
    (run / "config.yml").write_text(yaml.safe_dump(config))
    yield from _serve(registry_command(default_registry(), run / "config.yml"), env, run / "registry.log", port)


@contextlib.contextmanager
def caddy(run: Path, stack: Stack, registry: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Caddy in nginx's place: TLS with the stack's certificate, /auth/token to the stack's
    acmebox, everything else to `registry` (HOST:PORT)."""
    _, acmebox = upstreams(stack)
    run.mkdir(parents=True)
    port = free_port()
    live = stack.certs / "live" / DOMAIN
    (run / "Caddyfile").write_text(CADDYFILE.format(run=run, domain=DOMAIN, port=port, cert=live / "fullchain.pem",
                                                    key=live / "privkey.pem", acmebox=acmebox,
                                                    registry=registry))
    env = {"PATH": os.environ["PATH"], "HOME": str(run), "XDG_DATA_HOME": str(run / "data"),
           "XDG_CONFIG_HOME": str(run / "config")}
    yield from _serve(["caddy", "run", "--config", str(run / "Caddyfile"), "--adapter", "caddyfile"], env,
                      run / "caddy.out", port)


def _serve(argv: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`argv` in the background, its output in `log`, until it listens on `port`; stopped after."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, log)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


# -- the work ----------------------------------------------------------------------------------


@dataclass
class Blob:
    path: Path
    chunks: list[Path]
    size: int
    digest: str


def make_blob(work: Path, size: int, chunk: int) -> Blob:
    """Random bytes in /dev/shm (no disk in the measurement), whole and in chunks."""
    path = work / "blob"
    h = hashlib.sha256()
    chunks = []
    with path.open("wb") as whole:
        for i in range(0, size, chunk):
            data = os.urandom(min(chunk, size - i))
            h.update(data)
            whole.write(data)
            part = work / f"chunk-{i // chunk:04d}"
            part.write_bytes(data)
            chunks.append(part)
    return Blob(path, chunks, size, "sha256:" + h.hexdigest())


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def location_path(location: str) -> str:
    """An upload Location (absolute for the registry's host, or relative) as a path."""
    return "/" + location.split("/", 3)[3] if location.startswith(("http://", "https://")) else location


def start_upload(front: Frontend, repo: str, auth: dict[str, str]) -> str:
    status, headers, body = front.request("POST", f"/v2/{repo}/blobs/uploads/", auth)
    if status != 202:
        raise RuntimeError(f"{front.name}: upload start {status} {body[:200]!r}")
    return location_path(headers["Location"])


def curl_call(front: Frontend, method: str, path: str, auth: dict[str, str], upload: Path | None = None,
              headers: dict[str, str] | None = None, output: str = "/dev/null") -> dict[str, str]:
    """One curl request; returns its status and the response headers (lower-case names)."""
    with tempfile.NamedTemporaryFile("r", dir="/dev/shm") as head:
        cmd = [*front.curl(), "-X", method, "-D", head.name, "-o", output, "-w", "%{http_code}"]
        for k, v in {**auth, **(headers or {})}.items():
            cmd += ["-H", f"{k}: {v}"]
        if upload is not None:
            cmd += ["-T", str(upload), "-H", "Content-Type: application/octet-stream"]
        out = run_client([*cmd, front.base + path])
        answer = {"status": out.strip()}
        for line in head.read().splitlines():
            name, sep, value = line.partition(":")
            if sep:
                answer[name.strip().lower()] = value.strip()
        return answer


def push(front: Frontend, blob: Blob, repo: str, chunked: bool, auth: dict[str, str]) -> None:
    location = start_upload(front, repo, auth)
    if chunked:
        offset = 0
        for part in blob.chunks:
            size = part.stat().st_size
            r = curl_call(front, "PATCH", location, auth, part, {"Content-Range": f"{offset}-{offset + size - 1}"})
            if r["status"] != "202":
                raise RuntimeError(f"{front.name}: PATCH at {offset}: {r['status']}")
            location, offset = location_path(r["location"]), offset + size
        r = curl_call(front, "PUT", location + ("&" if "?" in location else "?") + f"digest={blob.digest}", auth)
    else:
        r = curl_call(front, "PUT", location + ("&" if "?" in location else "?") + f"digest={blob.digest}", auth,
                      blob.path)
    if r["status"] != "201" or r.get("docker-content-digest") != blob.digest:
        raise RuntimeError(f"{front.name}: push ended {r['status']} with digest {r.get('docker-content-digest')}")


def pull(front: Frontend, blob: Blob, repo: str, auth: dict[str, str], into: Path) -> None:
    r = curl_call(front, "GET", f"/v2/{repo}/blobs/{blob.digest}", auth, output=str(into))
    if r["status"] != "200":
        raise RuntimeError(f"{front.name}: pull {r['status']}")


def check_pulled(front: Frontend, blob: Blob, into: Path) -> None:
    got = file_digest(into)
    into.unlink()
    if got != blob.digest:
        raise RuntimeError(f"{front.name}: pulled blob hashes to {got}, not {blob.digest}")


def push_manifest(front: Frontend, repo: str, auth: dict[str, str]) -> str:
    """A one-layer image (tiny config and layer) tagged `latest`; returns the manifest digest."""
    blobs = []
    for content in (b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}',
                    b"bench layer"):
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        location = start_upload(front, repo, auth)
        status, _, body = front.request("PUT", location + ("&" if "?" in location else "?") + f"digest={digest}",
                                        {**auth, "Content-Type": "application/octet-stream"}, content)
        if status != 201:
            raise RuntimeError(f"{front.name}: blob {status} {body[:200]!r}")
        blobs.append({"digest": digest, "size": len(content)})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blobs[0]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blobs[1]}],
    }).encode()
    status, _, body = front.request("PUT", f"/v2/{repo}/manifests/latest",
                                          {**auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                                          manifest)
    if status != 201:
        raise RuntimeError(f"{front.name}: manifest {status} {body[:200]!r}")
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def check_manifest(front: Frontend, repo: str, digest: str, auth: dict[str, str]) -> None:
    status, headers, body = front.request("GET", f"/v2/{repo}/manifests/latest", {**auth, "Accept": ACCEPT})
    got = "sha256:" + hashlib.sha256(body).hexdigest()
    if status != 200 or got != digest or headers.get("Docker-Content-Digest") != digest:
        raise RuntimeError(f"{front.name}: manifest GET {status}, body {got}, header "
                           f"{headers.get('Docker-Content-Digest')}, want {digest}")


def wrk(front: Frontend, repo: str, auth: dict[str, str], connections: int, seconds: float) -> tuple[float, int]:
    """Manifest GETs by tag for `seconds` over `connections` connections: (requests/s, count).
    Any non-2xx answer or socket error fails the run."""
    # --timeout: wrk's 2 s default counts slow answers on a busy machine as errors
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "60s",
           "-H", f"Host: {front.host}", "-H", f"Accept: {ACCEPT}"]
    for k, v in auth.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"{front.base}/v2/{repo}/manifests/latest")
    if front.tls:  # wrk takes the URL's host as the TLS server name: it must resolve
        assert front.hosts is not None
        cmd = with_hosts(front.hosts, cmd)
    out = run_client(cmd)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{front.name}: wrk saw failures:\n{out}")
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if rate is None or count is None or int(count.group(1)) == 0:
        raise RuntimeError(f"{front.name}: wrk answered nothing or its output changed:\n{out}")
    return float(rate.group(1)), int(count.group(1))


@dataclass
class Logins:
    valid: int
    ok: int
    other: dict[int, int]  # status -> count for the valid users' logins that did not get 200
    guesses: dict[int, int]  # status -> count for the guesser
    seconds: float  # from the first connection made to the last valid login answered


def logins(front: Frontend, users: dict[str, str], count: int, address: str) -> Logins:
    """`count` logins at once, the users taken in turn, all from `address`: every connection is
    made (TLS included) before any request is sent; then GUESSES wrong passwords from there, one
    after another."""
    names = sorted(users)
    ready = threading.Barrier(count)

    def login(i: int, password: str | None = None, together: bool = False) -> int:
        user = names[i % len(names)]
        basic = base64.b64encode(f"{user}:{password or users[user]}".encode()).decode()
        conn = front.connection()
        try:
            if conn.sock is None:  # plain HTTP; TLS connections come connected
                conn.connect()
            if together:
                ready.wait(60)
            conn.request("GET", f"/auth/token?service=registry&scope=repository:bench/l{i}:pull,push",
                         headers={"Host": front.host, "Authorization": f"Basic {basic}", "X-Forwarded-For": address})
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(partial(login, together=True), range(count)))
    seconds = time.perf_counter() - t0
    guesses: dict[int, int] = {}
    for i in range(GUESSES):
        s = login(i, f"wrong-{i}")
        guesses[s] = guesses.get(s, 0) + 1
    other: dict[int, int] = {}
    for s in statuses:
        if s != 200:
            other[s] = other.get(s, 0) + 1
    return Logins(count, statuses.count(200), other, guesses, seconds)


def rss_kib(pid: int) -> dict[str, int]:
    status = {line.split(":")[0]: line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
              if line.startswith(("VmRSS:", "VmHWM:", "Threads:"))}
    anon = next(line.split()[1] for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                if line.startswith("Anonymous:"))
    return {"rss": int(status["VmRSS"]), "hwm": int(status["VmHWM"]), "anon": int(anon),
            "threads": int(status["Threads"])}


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Row:
    work: str
    config: str
    rep: int
    seconds: float
    amount: float  # bytes moved, or requests answered
    cpu: dict[str, float]  # role -> CPU seconds (client included)

    @property
    def rate(self) -> float:
        return self.amount / self.seconds


def measure(front: Frontend, work: str, rep: int, fn: Callable[[], Any], amount: float | None = None) -> Row:
    before = front.cpu()
    pids = [pid for role, pids in front.processes.items() if role != "acmebox" for pid in pids]
    with PROFILER.servers(f"{front.name}-{work}-r{rep + 1}", pids), ChildCPU() as client:
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    after = front.cpu()
    cpu = {role: after[role] - before[role] for role in before}
    cpu["client"] = client.seconds
    if amount is None:
        rate, n = result
        return Row(work, front.name, rep, n / rate, float(n), cpu)
    return Row(work, front.name, rep, seconds, amount, cpu)


def run(args: argparse.Namespace) -> dict[str, Any]:
    size, chunk = args.size_mib * MIB, args.chunk_mib * MIB
    rows: list[Row] = []
    login_runs: list[Logins] = []
    memory: list[dict[str, int]] = []
    checked = {"pushes": 0, "pulls": 0, "manifests": 0}
    with contextlib.ExitStack() as stack_ctx:
        tmp = Path(stack_ctx.enter_context(tempfile.TemporaryDirectory(prefix="acmebox-datapath-")))
        shm = Path(stack_ctx.enter_context(tempfile.TemporaryDirectory(prefix="acmebox-datapath-", dir="/dev/shm")))
        print(f"making a {args.size_mib} MiB blob in {shm}", file=sys.stderr, flush=True)
        blob = make_blob(shm, size, chunk)
        stack = stack_ctx.enter_context(running_stack(tmp / "stack", registry_version=REGISTRY))
        registry_addr, _ = upstreams(stack)
        root = tmp / "root.pem"
        root.write_text(stack.root_pem())
        hosts = tmp / "hosts"
        hosts.write_text(TEST_HOSTS)
        registry_pid = next(p for p in with_children(os.getpid()) if _comm(p) == REGISTRY_COMM[REGISTRY])
        nginx_pid = int((stack.run / "nginx" / "nginx.pid").read_text())
        acmebox_pid = stack.acmebox.proc.pid
        bare_port, bare_proc = stack_ctx.enter_context(plain_registry(tmp / "bare", None))
        token_cert = stack.run / "registry-auth" / "token.crt"
        peer_port, peer_registry = stack_ctx.enter_context(plain_registry(tmp / "caddy-registry", token_cert))
        caddy_port, caddy_proc = stack_ctx.enter_context(caddy(tmp / "caddy", stack, f"127.0.0.1:{peer_port}"))
        fronts = {
            "stack": Frontend("stack", f"https://{DOMAIN}:{stack.https_port}", stack.https_port, True, root,
                              {"nginx": with_children(nginx_pid), "registry": [registry_pid],
                               "acmebox": [acmebox_pid]}, hosts),
            "bare": Frontend("bare", f"http://127.0.0.1:{bare_port}", bare_port, False, None,
                             {"registry": [bare_proc.pid]}),
            "caddy": Frontend("caddy", f"https://{DOMAIN}:{caddy_port}", caddy_port, True, root,
                              {"caddy": [caddy_proc.pid], "registry": [peer_registry.pid],
                               "acmebox": [acmebox_pid]}, hosts),
        }
        alice = next(iter(USERS.items()))
        for rep in range(args.reps):
            order = list(CONFIGS[rep % 3 :] + CONFIGS[: rep % 3])
            for work in [w for w in WORKS if w in args.works and w != "logins"]:
                for name in order:
                    front = fronts[name]
                    repo = f"bench/{name}-r{rep}"
                    print(f"  rep {rep + 1} {work:11} {name}", file=sys.stderr, flush=True)
                    if work.startswith("push"):
                        auth = front.token(f"repository:{repo}-{work}:pull,push", basic=alice)
                        job = partial(push, front, blob, f"{repo}-{work}", work == "push-patch", auth)
                        row = measure(front, work, rep, job, size)
                        checked["pushes"] += 1
                    elif work == "pull":
                        auth = front.token(f"repository:{repo}-push-put:pull")
                        into = shm / f"pulled-{name}"
                        job = partial(pull, front, blob, f"{repo}-push-put", auth, into)
                        row = measure(front, work, rep, job, size)
                        check_pulled(front, blob, into)
                        checked["pulls"] += 1
                    else:
                        connections = int(work.removeprefix("manifest"))
                        image = f"{repo}-image"
                        if connections == LOADS[0]:
                            push_manifest(front, image, front.token(f"repository:{image}:pull,push", basic=alice))
                        auth = front.token(f"repository:{image}:pull")
                        digest = _manifest_digest(front, image, auth)
                        check_manifest(front, image, digest, auth)
                        row = measure(front, work, rep, partial(wrk, front, image, auth, connections, args.duration))
                        check_manifest(front, image, digest, auth)
                        checked["manifests"] += 2
                    rows.append(row)
            if "logins" in args.works:
                print(f"  rep {rep + 1} logins      stack", file=sys.stderr, flush=True)
                login_runs.append(logins(fronts["stack"], USERS, args.logins, f"198.51.100.{rep + 1}"))
                memory.append(rss_kib(acmebox_pid))
        versions = _versions(registry_addr)
    return {"rows": [vars(r) for r in rows], "logins": [vars(run) for run in login_runs], "acmebox_memory": memory,
            "checked": checked, "versions": versions, "size": size, "chunk": chunk, "reps": args.reps,
            "duration": args.duration}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _manifest_digest(front: Frontend, repo: str, auth: dict[str, str]) -> str:
    status, headers, _ = front.request("HEAD", f"/v2/{repo}/manifests/latest", {**auth, "Accept": ACCEPT})
    if status != 200:
        raise RuntimeError(f"{front.name}: manifest HEAD {status}")
    return str(headers["Docker-Content-Digest"])


def _versions(registry: str) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"

    registry_binary = registry_command(REGISTRY, Path("-"))[0]
    return {"nginx": first_line(["nginx", "-v"]), "registry": first_line([registry_binary, "--version"]),
            "caddy": first_line(["caddy", "version"]), "curl": first_line(["curl", "--version"]),
            "wrk": first_line(["wrk", "--version"]), "openssl": first_line(["openssl", "version"])}


# -- the report --------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


LABELS = {"push-put": "push, one PUT", "push-patch": "push, PATCH chunks", "pull": "blob pull",
          "manifest16": "manifest GET, 16 connections", "manifest128": "manifest GET, 128 connections"}


def report(raw: dict[str, Any]) -> str:
    rows = [Row(**r) for r in raw["rows"]]
    by = {(r.work, r.config, r.rep): r for r in rows}
    reps = range(raw["reps"])
    size = raw["size"] / MIB
    out = []
    v = raw["versions"]
    out.append(f"data path: {raw['reps']} interleaved repetition(s), {size:.0f} MiB blob "
               f"({raw['chunk'] / MIB:.0f} MiB PATCH chunks), manifest loads {raw['duration']:.0f} s, "
               f"{os.cpu_count()} CPUs, all on 127.0.0.1")
    out.append("; ".join(v.values()))
    c = raw["checked"]
    out.append(f"digests checked: {c['pushes']} pushes answered with the blob's digest, {c['pulls']} pulled "
               f"blobs and {c['manifests']} manifests hashed to theirs\n")
    out.append("Ratios per repetition, median (min-max); above 1: the stack is faster.\n")
    out.append("| work | stack | bare | caddy | stack ÷ bare | stack ÷ caddy |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for work in (*TRANSFERS, *(f"manifest{c}" for c in LOADS)):
        if any((work, cfg, r) not in by for cfg in CONFIGS for r in reps):
            continue
        unit, scale = ("MiB/s", MIB) if not work.startswith("manifest") else ("req/s", 1)
        cells = [spread([by[(work, cfg, r)].rate / scale for r in reps], "{:.0f}") + f" {unit}" for cfg in CONFIGS]
        ratios = [spread([by[(work, "stack", r)].rate / by[(work, peer, r)].rate for r in reps])
                  for peer in ("bare", "caddy")]
        out.append(f"| {LABELS[work]} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    out.append("\nCPU seconds per GiB moved (pushes, pulls) or per 10,000 requests (manifests), median:\n")
    out.append("| work | stack: client / nginx / registry / acmebox | bare: client / registry "
               "| caddy: client / caddy / registry / acmebox |")
    out.append("|---|---|---|---|")
    for work in (*TRANSFERS, *(f"manifest{c}" for c in LOADS)):
        if any((work, cfg, r) not in by for cfg in CONFIGS for r in reps):
            continue
        cells = []
        for cfg in CONFIGS:
            measured = by[(work, cfg, 0)].cpu
            per = []
            for role in [r for r in ("client", "nginx", "caddy", "registry", "acmebox") if r in measured]:
                vals = []
                for r in reps:
                    row = by[(work, cfg, r)]
                    per_unit = row.amount / (1 << 30) if not work.startswith("manifest") else row.amount / 10_000
                    vals.append(row.cpu[role] / per_unit)
                per.append(f"{statistics.median(vals):.2f}")
            cells.append(" / ".join(per))
        out.append(f"| {LABELS[work]} | {' | '.join(cells)} |")
    out.append("\nLogins through the stack (one address per repetition):\n")
    for i, lg in enumerate(raw["logins"]):
        other = ", ".join(f"{n}x {s}" for s, n in sorted(lg["other"].items())) or "none refused"
        guesses = ", ".join(f"{n}x {s}" for s, n in sorted(lg["guesses"].items()))
        out.append(f"  rep {i + 1}: {lg['ok']}/{lg['valid']} concurrent valid logins got a token ({other}) in "
                   f"{lg['seconds']:.2f} s; the guesser's {GUESSES} wrong passwords: {guesses}")
    mem = raw["acmebox_memory"]
    if mem:
        last = mem[-1]
        out.append(f"\nacmebox after the logins: resident {last['rss'] / 1024:.1f} MiB ({last['rss'] * 1024 / 1e6:.1f} "
                   f"MB; anonymous {last['anon'] / 1024:.1f} MiB), peak {last['hwm'] / 1024:.1f} MiB, "
                   f"{last['threads']} threads")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    parser.add_argument("--size-mib", type=int, default=1024, help="the blob pushed and pulled, MiB")
    parser.add_argument("--chunk-mib", type=int, default=64, help="PATCH chunk size, MiB")
    parser.add_argument("--duration", type=float, default=5, help="seconds of each manifest load")
    parser.add_argument("--logins", type=int, default=64, help="concurrent valid logins")
    parser.add_argument("--works", default=",".join(WORKS), help="comma-separated subset of " + ",".join(WORKS))
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--perf", type=Path, help="profile servers and clients with perf into this directory")
    args = parser.parse_args(argv)
    args.works = args.works.split(",")
    if not set(args.works) <= set(WORKS):
        print(f"datapath: --works takes {','.join(WORKS)}", file=sys.stderr)
        return 2
    for tool in ("caddy", "wrk", "curl", "nginx"):
        if shutil.which(tool) is None:
            print(f"datapath: {tool} is not installed (bash pebble-test/setup.sh installs it)", file=sys.stderr)
            return 2
    global PROFILER
    PROFILER = Profiler(args.perf)
    raw = run(args)
    PROFILER.summarize()
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=1))
    print(report(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
