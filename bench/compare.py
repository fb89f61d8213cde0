"""Side-by-side benchmark: acmebox against certbot, acme-tiny and lego on one private Pebble.

    .venv/bin/python bench/compare.py [--reps 3] [--certs 50] [--names 50] [--idle 60]

Scenarios, each run by every client in every repetition, the clients' order rotating from one
repetition to the next (interleaved, so a noisy neighbour hits everyone alike):

  cold      1 certificate with 1 name, one fresh process (account registration included)
  names     1 certificate with --names names
  many      --certs certificates of 1 name each: acmebox as one `run --once` with one --cert
            per certificate; each peer as a loop of one process per certificate

Every client starts each scenario with empty state and unique names (Pebble reuses valid
authorizations of an account, which would favour whoever runs second). Times are wall-clock
seconds of the client's processes only; acme-tiny gets its account key, domain keys and CSRs
made beforehand (its documented workflow), and its webroot server (run here, as a user must
run one) is not counted. The table gives, per repetition, peer seconds / acmebox seconds
(above 1: acmebox is faster), then the median and min-max over the repetitions. Every
certificate any client gets is verified afterwards: the chain to Pebble's root (fetched from
its management port, /roots/0) by X.509 path validation, the SANs, and the key.

Memory: peak RSS of each client's largest process (wait4's ru_maxrss). The sidecar: `acmebox
run` as a service with 1 and with --certs certificates, its RSS after issuing and settling,
its CPU over --idle seconds scaled to a day plus 4 checks of every certificate a day (one
is timed by sending SIGHUP; 4 is the ARI re-fetch a Retry-After of 6 h brings), against
`certbot renew` (the certbot loop's work, twice a day from its systemd timer) over the
--certs certificates certbot got.

The stack's time to the first served certificate comes from the container test (issue 12),
which writes test-artifacts/container-stack-<compose>.json ("seconds_up_to_first_certificate",
from `start-registry.sh` returning to nginx serving the verified certificate); without such a
file the line says "not measured".

acmebox runs as its image installs it: the lock file's packages and an acmebox wheel built
from this work tree, in bench/.peers/acmebox (rebuilt on every run). Peers: certbot and
acme-tiny from PyPI in their own venv (bench/.peers/venv, made on first use with pip), lego
from Debian; lego and GNU time (which measures every client's peak RSS) are installed with
apt-get when missing, which needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.helpers

from tests.helpers.pebble import Pebble, start_pebble, stop_pebble  # noqa: E402

PEERS = ROOT / "bench" / ".peers"
ACMEBOX_VENV = PEERS / "acmebox"
ACMEBOX_BIN = ACMEBOX_VENV / "bin" / "acmebox"
PEER_PACKAGES = ("certbot>=3,<6", "acme-tiny>=5,<6")
CLIENTS = ("acmebox", "acme-tiny", "certbot", "lego")
SCENARIOS = ("cold", "names", "many")
TIME = "/usr/bin/time"  # GNU time, Debian package "time"
STACK_TIMINGS = ROOT / "test-artifacts"
ARI_WAKES_PER_DAY = 4  # acmebox asks for renewal info every 6 h, Let's Encrypt's usual Retry-After
CERTBOT_WAKES_PER_DAY = 2  # certbot's systemd timer / cron entry runs `certbot renew` twice a day


# -- processes --------------------------------------------------------------------------------


@dataclass
class Run:
    """What one client did in one scenario: wall seconds, peak RSS (KiB) of its largest
    process, CPU seconds of all of them, and the certificates it left (fullchain, key, names)."""

    seconds: float = 0.0
    peak_kib: int = 0
    cpu: float = 0.0
    certs: list[tuple[bytes, bytes, list[str]]] = field(default_factory=list)


def run_process(cmd: Sequence[str], env: dict[str, str], stdout: Path | None = None, into: Run | None = None) -> Run:
    """Run one command to its end; its time, peak RSS and CPU are added to `into`.

    The command runs under GNU time, which reports its ru_maxrss: a child forked straight from
    this (large) Python process would carry this process's high-water mark through exec in its
    own ru_maxrss (Linux keeps the pre-exec peak), inflating every client's figure."""
    into = into or Run()
    with (
        open(stdout or os.devnull, "wb") as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as usage,
    ):
        t0 = time.perf_counter()
        proc = subprocess.run([TIME, "-q", "-f", "%M %U %S", "-o", usage.name, *cmd], env=env, stdout=out,
                              stderr=err, stdin=subprocess.DEVNULL)
        into.seconds += time.perf_counter() - t0
        fields = usage.read().split()
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n  " + "\n  ".join(tail))
    into.peak_kib = max(into.peak_kib, int(fields[-3]))
    into.cpu += float(fields[-2]) + float(fields[-1])
    return into


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACMEBOX_", "DOCKER_REGISTRY_", "LEGO_"))}
    env.update(extra)
    return env


# -- Pebble -----------------------------------------------------------------------------------


def verify(pebble: Pebble, fullchain: bytes, key_pem: bytes, names: list[str]) -> None:
    """Raises unless `fullchain` chains to Pebble's root, names exactly `names` and matches the key."""
    root = pebble.root()
    chain = x509.load_pem_x509_certificates(fullchain)
    leaf = chain[0]
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(names[0]))
    path = verifier.verify(leaf, chain[1:])
    if path[-1] != root:
        raise ValueError(f"{names[0]}: chain ends at {path[-1].subject.rfc4514_string()}, not Pebble's root")
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if sorted(sans.get_values_for_type(x509.DNSName)) != sorted(names):
        raise ValueError(f"{names[0]}: SANs {sans.get_values_for_type(x509.DNSName)} != {names}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    key = serialization.load_pem_private_key(key_pem, None)
    pub = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    if pub != leaf.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ValueError(f"{names[0]}: the private key does not match the certificate")


# -- the clients ------------------------------------------------------------------------------

Client = Callable[[Pebble, list[list[str]], Path], Run]


def run_acmebox(pebble: Pebble, groups: list[list[str]], work: Path) -> Run:
    certs, state = work / "certs", work / "state"
    cmd = [str(ACMEBOX_BIN), "--log-level", "warning", "run", "--once",
           "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle), "--certs-dir", str(certs),
           "--state-dir", str(state), "--listen", f"127.0.0.1:{pebble.http_port}"]
    for names in groups:
        cmd += ["--cert", ",".join(names)]
    run = run_process(cmd, clean_env())
    for names in groups:
        live = certs / "live" / names[0]
        run.certs.append(((live / "fullchain.pem").read_bytes(), (live / "privkey.pem").read_bytes(), names))
    return run


def run_certbot(pebble: Pebble, groups: list[list[str]], work: Path) -> Run:
    env = clean_env(REQUESTS_CA_BUNDLE=str(pebble.ca_bundle))
    run = Run()
    for names in groups:
        cmd = [str(PEERS / "venv" / "bin" / "certbot"), "certonly", "--standalone", "--non-interactive",
               "--agree-tos", "--register-unsafely-without-email", "--server", pebble.directory,
               "--http-01-port", str(pebble.http_port), "--http-01-address", "127.0.0.1",
               "--config-dir", str(work / "config"), "--work-dir", str(work / "work"),
               "--logs-dir", str(work / "logs"), "--cert-name", names[0], "--quiet"]
        for n in names:
            cmd += ["-d", n]
        run_process(cmd, env, into=run)
    for names in groups:
        live = work / "config" / "live" / names[0]
        run.certs.append(((live / "fullchain.pem").read_bytes(), (live / "privkey.pem").read_bytes(), names))
    return run


class _Webroot(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _key_and_csr(names: list[str]) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import hashes

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def run_acme_tiny(pebble: Pebble, groups: list[list[str]], work: Path) -> Run:
    # Prepared beforehand, as acme-tiny's README has its users do: the account key (RSA, the
    # only kind it takes), each domain's key and CSR, and a web server for the challenge dir.
    webroot = work / "www"
    challenge_dir = webroot / ".well-known" / "acme-challenge"
    challenge_dir.mkdir(parents=True)
    account = work / "account.key"
    subprocess.run(["openssl", "genrsa", "-out", str(account), "2048"], check=True, capture_output=True)
    prepared = []
    for i, names in enumerate(groups):
        key_pem, csr_pem = _key_and_csr(names)
        (work / f"{i}.csr").write_bytes(csr_pem)
        prepared.append((key_pem, work / f"{i}.csr", work / f"{i}.crt", names))

    def handler(*args: object, **kw: object) -> _Webroot:
        return _Webroot(*args, directory=str(webroot), **kw)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble.http_port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = clean_env(SSL_CERT_FILE=str(pebble.ca_bundle))
    run = Run()
    try:
        for _, csr, crt, _ in prepared:
            cmd = [str(PEERS / "venv" / "bin" / "acme-tiny"), "--account-key", str(account), "--csr", str(csr),
                   "--acme-dir", str(challenge_dir), "--directory-url", pebble.directory, "--disable-check",
                   "--quiet"]
            run_process(cmd, env, stdout=crt, into=run)
    finally:
        server.shutdown()
        server.server_close()
    for key_pem, _, crt, names in prepared:
        run.certs.append((crt.read_bytes(), key_pem, names))
    return run


def run_lego(pebble: Pebble, groups: list[list[str]], work: Path) -> Run:
    env = clean_env(LEGO_CA_CERTIFICATES=str(pebble.ca_bundle))
    run = Run()
    for names in groups:
        cmd = ["lego", "--server", pebble.directory, "--accept-tos", "--email", "bench@acmebox-bench.test",
               "--path", str(work), "--key-type", "ec256", "--http", "--http.port",
               f"127.0.0.1:{pebble.http_port}"]
        for n in names:
            cmd += ["--domains", n]
        run_process([*cmd, "run"], env, into=run)
    for names in groups:
        base = work / "certificates"
        run.certs.append(((base / f"{names[0]}.crt").read_bytes(), (base / f"{names[0]}.key").read_bytes(), names))
    return run


RUNNERS: dict[str, Client] = {"acmebox": run_acmebox, "acme-tiny": run_acme_tiny, "certbot": run_certbot,
                              "lego": run_lego}


def install_acmebox() -> None:
    """acmebox as its image installs it: the lock file's packages, then acmebox itself as a
    wheel (not the development venv's editable install, whose import hook costs start-up time
    no user pays). Reinstalled on every run, so the bench measures the work tree's code."""
    venv = ACMEBOX_VENV
    stamp = venv / ".requirements-installed"
    lock = ROOT / "requirements.txt"
    if not stamp.exists() or lock.stat().st_mtime > stamp.stat().st_mtime:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "--no-deps", "-r", str(lock)],
                       check=True)
        stamp.touch()
    with tempfile.TemporaryDirectory() as wheels, tempfile.TemporaryDirectory() as source:
        # from a clean copy: an in-tree build/ left by an earlier build can hold stale modules
        for part in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / part, Path(source) / part)
        shutil.copytree(ROOT / "acmebox", Path(source) / "acmebox", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([str(venv / "bin" / "pip"), "wheel", "-q", "--no-deps", "--wheel-dir", wheels, source],
                       check=True, capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--force-reinstall",
                        *map(str, Path(wheels).glob("*.whl"))], check=True)


def ensure_peers(clients: Sequence[str], install: bool = True) -> dict[str, str]:
    """Installs what is missing; returns each client's version line."""
    if install:
        install_acmebox()
    venv = PEERS / "venv"
    if {"certbot", "acme-tiny"} & set(clients) and not (venv / "bin" / "acme-tiny").exists():
        print(f"bench: installing {', '.join(PEER_PACKAGES)} into {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PEER_PACKAGES], check=True)
    debian = [p for p, path in (("lego", "lego"), ("time", TIME)) if shutil.which(path) is None
              and (p != "lego" or "lego" in clients)]
    if debian:
        print(f"bench: installing {' '.join(debian)} from Debian", file=sys.stderr)
        subprocess.run(["flock", "/tmp/apt.lock", "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *debian], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    versions = {}
    for c in clients:
        if c == "acmebox":
            cmd = [str(ACMEBOX_BIN), "--version"]
        elif c == "lego":
            out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "lego"], capture_output=True, text=True)
            versions[c] = f"lego {out.stdout.strip()} (Debian)"
            continue
        elif c == "acme-tiny":
            out = subprocess.run([str(venv / "bin" / "pip"), "show", "acme-tiny"], capture_output=True, text=True)
            version = next((line.split()[1] for line in out.stdout.splitlines() if line.startswith("Version:")), "?")
            versions[c] = f"acme-tiny {version}"
            continue
        else:
            cmd = [str(venv / "bin" / "certbot"), "--version"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        versions[c] = (out.stdout + out.stderr).strip()
    return versions


# -- the sidecar --------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """CPU seconds of all the process's threads, to the nanosecond (/proc/PID/task/*/schedstat):
    /proc/PID/stat counts whole clock ticks, too coarse for an idle process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _smaps_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    return 0


@dataclass
class Sidecar:
    certs: int
    rss_kib: int  # resident after issuing and settling
    anon_kib: int  # of which anonymous (heap, stacks): what is private to the process
    peak_kib: int  # VmHWM: the peak while issuing
    idle_cpu_s: float  # CPU seconds over the idle window
    idle_s: float
    wake_cpu_s: float  # CPU seconds of one check of every certificate (SIGHUP: plans and ARI asked anew)

    def per_day(self) -> float:
        """Idle CPU seconds a day: the idle rate, plus ARI_WAKES_PER_DAY checks of every certificate."""
        return self.idle_cpu_s / self.idle_s * 86400 + ARI_WAKES_PER_DAY * self.wake_cpu_s


def sidecar(pebble: Pebble, groups: list[list[str]], work: Path, idle: float) -> Sidecar:
    """`acmebox run` as a service: until every certificate is issued (healthz 200), then idle."""
    listen = f"127.0.0.1:{pebble.http_port}"
    cmd = [str(ACMEBOX_BIN), "--log-level", "warning", "run", "--directory", pebble.directory,
           "--ca-bundle", str(pebble.ca_bundle), "--certs-dir", str(work / "certs"), "--state-dir",
           str(work / "state"), "--listen", listen]
    for names in groups:
        cmd += ["--cert", ",".join(names)]
    log = (work / "sidecar.log").open("wb")
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sidecar did not get its certificates; see {work / 'sidecar.log'}")
            try:
                with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        for names in groups:
            live = work / "certs" / "live" / names[0]
            verify(pebble, (live / "fullchain.pem").read_bytes(), (live / "privkey.pem").read_bytes(), names)
        time.sleep(min(5.0, idle))  # the reloader and the plans settle
        cpu0, t0 = _proc_cpu(proc.pid), time.monotonic()
        time.sleep(idle)
        cpu1, t1 = _proc_cpu(proc.pid), time.monotonic()
        rss, anon, hwm = _proc_status(proc.pid, "VmRSS"), _smaps_anon(proc.pid), _proc_status(proc.pid, "VmHWM")
        proc.send_signal(signal.SIGHUP)
        last, settled = cpu1, time.monotonic() + 30
        while time.monotonic() < settled:  # until the checks are over: one second without CPU
            time.sleep(1.0)
            now = _proc_cpu(proc.pid)
            if now == last and now > cpu1:
                break
            last = now
        return Sidecar(len(groups), rss, anon, hwm, cpu1 - cpu0, t1 - t0, last - cpu1)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def certbot_renew(pebble: Pebble, config_dir: Path) -> Run:
    """One wake of the certbot loop: `certbot renew` over the certificates certbot got."""
    cmd = [str(PEERS / "venv" / "bin" / "certbot"), "renew", "--no-random-sleep-on-renew", "--non-interactive",
           "--config-dir", str(config_dir / "config"), "--work-dir", str(config_dir / "work"),
           "--logs-dir", str(config_dir / "logs"), "--quiet"]
    return run_process(cmd, clean_env(REQUESTS_CA_BUNDLE=str(pebble.ca_bundle)))


# -- reporting ----------------------------------------------------------------------------------


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def spread(values: list[float], fmt: Callable[[float], str] = _num) -> str:
    if not values:
        return "-"
    med = fmt(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt(min(values))}-{fmt(max(values))})"


def stack_timing() -> str:
    found = []
    for path in sorted(STACK_TIMINGS.glob("container-stack-*.json")):
        try:
            data = json.loads(path.read_text())
            found.append(f"{float(data['seconds_up_to_first_certificate']):.1f} s with compose {data['compose']}")
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        return "not measured (no test-artifacts/container-stack-*.json from the container test)"
    return "; ".join(found) + " (from start-registry.sh returning; the container test's last run)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    parser.add_argument("--certs", type=int, default=50, help="certificates in the 'many' scenario and the sidecar")
    parser.add_argument("--names", type=int, default=50, help="names in the 'names' scenario")
    parser.add_argument("--idle", type=float, default=60, help="seconds the sidecar is watched idle")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset (acmebox always runs)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--dev", action="store_true", help="run the development venv's acmebox (.venv, editable "
                        "install) instead of building and installing a wheel: quicker, for the smoke test")
    args = parser.parse_args(argv)
    clients = ["acmebox", *[c for c in args.clients.split(",") if c in CLIENTS and c != "acmebox"]]
    peers = clients[1:]
    global ACMEBOX_BIN
    if args.dev:
        ACMEBOX_BIN = ROOT / ".venv" / "bin" / "acmebox"
    versions = ensure_peers(clients, install=not args.dev)

    def groups(scenario: str, client: str, rep: int) -> list[list[str]]:
        tag = f"{client}-r{rep}-{scenario}.bench.test"
        if scenario == "cold":
            return [[tag]]
        if scenario == "names":
            return [[f"n{i}.{tag}" for i in range(args.names)]]
        return [[f"c{i}.{tag}"] for i in range(args.certs)]

    times: dict[tuple[str, str, int], Run] = {}
    verified = 0
    with tempfile.TemporaryDirectory(prefix="acmebox-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pebble = start_pebble(tmp / "pebble", PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        try:
            for rep in range(args.reps):
                order = clients[rep % len(clients) :] + clients[: rep % len(clients)]
                for scenario in SCENARIOS:
                    for client in order:
                        work = tmp / f"{client}-{scenario}-{rep}"
                        work.mkdir()
                        g = groups(scenario, client, rep)
                        run = RUNNERS[client](pebble, g, work)
                        for fullchain, key, names in run.certs:
                            verify(pebble, fullchain, key, names)
                            verified += 1
                        if len(run.certs) != len(g):
                            raise RuntimeError(f"{client} {scenario}: {len(run.certs)} certificates, not {len(g)}")
                        times[(scenario, client, rep)] = run
                        print(f"  rep {rep + 1} {scenario:5} {client:9} {run.seconds:7.2f} s  peak "
                              f"{run.peak_kib / 1024:5.1f} MiB  {len(run.certs)} certificate(s) verified",
                              file=sys.stderr, flush=True)
            side = [sidecar(pebble, [[f"s{i}.side{n}.bench.test"] for i in range(n)], _mk(tmp / f"side{n}"), args.idle)
                    for n in sorted({1, args.certs})]
            verified += sum(s.certs for s in side)
            renew = None
            if "certbot" in peers:
                renew = certbot_renew(pebble, tmp / f"certbot-many-{args.reps - 1}")
        finally:
            stop_pebble(pebble)

    pebble_version = (ROOT / "pebble-test" / ".pebble" / "VERSION").read_text().strip()
    print(f"acmebox benchmark: {args.reps} interleaved repetition(s), Pebble {pebble_version} on loopback "
          f"(PEBBLE_VA_NOSLEEP=1), {os.cpu_count()} CPUs")
    print("clients: " + "; ".join(versions[c] for c in clients))
    print(f"{verified} certificates issued, every one verified (chain to Pebble's root, SANs, key)\n")
    labels = {"cold": "1 certificate, cold process", "names": f"1 certificate with {args.names} names",
              "many": f"{args.certs} certificates (acmebox: one run --once)"}
    print("Time ratio peer ÷ acmebox, per repetition; median (min-max). Above 1: acmebox is faster.\n")
    print(f"| scenario | acmebox s | {' | '.join(peers)} |")
    print(f"|---|---:|{'---:|' * len(peers)}")
    ratios: dict[tuple[str, str], list[float]] = {}
    for s in SCENARIOS:
        ours = [times[(s, "acmebox", r)].seconds for r in range(args.reps)]
        cells = []
        for p in peers:
            ratios[(s, p)] = [times[(s, p, r)].seconds / times[(s, "acmebox", r)].seconds for r in range(args.reps)]
            cells.append(spread(ratios[(s, p)]))
        print(f"| {labels[s]} | {spread(ours, '{:.2f}'.format)} | {' | '.join(cells)} |")
    print("\nPeak RSS of the largest process, MiB, median over the repetitions:\n")
    print(f"| scenario | {' | '.join(clients)} |")
    print(f"|---|{'---:|' * len(clients)}")
    peaks: dict[tuple[str, str], float] = {}
    for s in SCENARIOS:
        for c in clients:
            peaks[(s, c)] = statistics.median(times[(s, c, r)].peak_kib / 1024 for r in range(args.reps))
        print(f"| {labels[s]} | {' | '.join(f'{peaks[(s, c)]:.1f}' for c in clients)} |")
    print("\nThe sidecar (`acmebox run`), after issuing and settling:")
    for sc in side:
        print(f"  {sc.certs:3} certificate(s): resident {sc.rss_kib / 1024:.1f} MiB (anonymous {sc.anon_kib / 1024:.1f}"
              f"), peak while issuing {sc.peak_kib / 1024:.1f} MiB; idle CPU {sc.idle_cpu_s * 1000:.1f} ms over "
              f"{sc.idle_s:.0f} s, {sc.wake_cpu_s * 1000:.0f} ms per check of every certificate, "
              f"x{ARI_WAKES_PER_DAY} a day = {sc.per_day():.2f} CPU s/day")
    if renew is not None:
        certbot_day = renew.cpu * CERTBOT_WAKES_PER_DAY
        print(f"  certbot loop, one `certbot renew` over {args.certs} certificates: peak "
              f"{renew.peak_kib / 1024:.1f} MiB, {renew.cpu:.2f} CPU s; x{CERTBOT_WAKES_PER_DAY} a day = "
              f"{certbot_day:.1f} CPU s/day")
    print(f"\nStack (compose/start-registry.sh to nginx serving the verified certificate): {stack_timing()}")

    print("\nTargets:")
    big = side[-1]

    def target(text: str, ok: bool | None) -> None:
        print(f"  [{'met' if ok else 'NOT met' if ok is not None else 'n/a'}] {text}")

    def med(s: str, p: str) -> str:
        return f"{statistics.median(ratios[(s, p)]):.3g}" if (s, p) in ratios else "not run"

    def at_least(s: str, p: str, goal: float) -> bool | None:
        return statistics.median(ratios[(s, p)]) >= goal if (s, p) in ratios else None

    target(f"{args.certs} certificates: >= 100x certbot (median {med('many', 'certbot')})",
           at_least("many", "certbot", 100))
    target(f"{args.certs} certificates: >= 8x acme-tiny (median {med('many', 'acme-tiny')})",
           at_least("many", "acme-tiny", 8))
    target(f"1 certificate with {args.names} names: >= 4x acme-tiny (median {med('names', 'acme-tiny')})",
           at_least("names", "acme-tiny", 4))
    target(f"1 certificate cold: no slower than acme-tiny (median {med('cold', 'acme-tiny')})",
           at_least("cold", "acme-tiny", 1))
    target(f"sidecar with {big.certs} certificates resident <= 40 MB ({big.rss_kib / 1024:.1f} MiB)",
           big.rss_kib * 1024 <= 40e6)
    target(f"peak while issuing {args.certs} at once <= 48 MB ({peaks[('many', 'acmebox')]:.1f} MiB)",
           peaks[("many", "acmebox")] * 1024 * 1024 <= 48e6)
    if renew is not None:
        ours_day = big.per_day()
        certbot_day = renew.cpu * CERTBOT_WAKES_PER_DAY
        target(f"idle CPU per day <= the certbot loop's ({ours_day:.1f} vs {certbot_day:.1f} CPU s)",
               ours_day <= certbot_day)

    if args.json is not None:
        raw = {
            "runs": [{"scenario": s, "client": c, "rep": r, "seconds": v.seconds, "peak_kib": v.peak_kib, "cpu": v.cpu}
                     for (s, c, r), v in times.items()],
            "sidecar": [vars(s) for s in side],
            "certbot_renew": None if renew is None else {"peak_kib": renew.peak_kib, "cpu": renew.cpu},
            "verified": verified,
        }
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


def _mk(path: Path) -> Path:
    path.mkdir()
    return path


if __name__ == "__main__":
    sys.exit(main())
