"""`acmebox follow`: the certificate follower beside each frontend (a global Swarm service).

It keeps the node-local certs volume that nginx reads on the certificate acmebox holds, with no
Docker socket and no disk shared between nodes: it long-polls acmebox's fleet route over the
overlay network (requests authenticated, the answer sealed: acmebox.sealed), installs a new
certificate with the store's atomic layout (acmebox.store) and bumps the generation file that
nginx's watcher (nginx/reload-on-change.sh) turns into `nginx -s reload`. It also bumps it when
acmebox asks (acmebox saw this node's nginx present an old serial). Before anything arrives it
writes a self-signed placeholder, so nginx can start while acmebox is not there yet.

It also keeps the node's readiness marker, READY_FILE on the certs volume, which nginx's
readiness path (/.well-known/acmebox-ready, nginx/swarm-ready.conf) answers 200 from and 503
without: removed at start, written once acmebox says it saw this node's nginx serve the live
certificate, removed again when acmebox says this frontend is new (joining). While acmebox cannot
be reached the marker stays as it is: an issuer that is away takes no frontend out of routing.

Nothing acmebox, the network or the disk does ends it: it logs and tries again with a backoff
(RETRY_FIRST to RETRY_MAX seconds). nginx keeps serving what is on the volume meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from acmebox import placeholder
from acmebox.config import CertSpec, HostPort
from acmebox.errors import ConfigError
from acmebox.fsutil import atomic_write
from acmebox.reload import ReloadFailed, ReloadTarget
from acmebox.sealed import BUNDLE_PATH, LONG_POLL_MAX, NONCE_HEADER, Bundle, FleetKeys, Refused, read_secret
from acmebox.store import CertStore, split_chain

if TYPE_CHECKING:  # imported when following: `acmebox --help` stays fast
    import aiohttp

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 1.0, 30.0
READY_FILE = "acmebox-ready"  # in the certs dir; nginx/swarm-ready.conf serves it


@dataclass(frozen=True)
class FollowSpec:
    source: HostPort  # acmebox's HTTP server on the overlay, e.g. acmebox:8080
    keys: FleetKeys
    node: str
    certs: tuple[CertSpec, ...]
    certs_dir: Path
    generation: ReloadTarget


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"ACMEBOX_{name}") or default


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("follow", help="copy the certificate from acmebox to this node's frontend (Swarm)")
    p.add_argument("--from", dest="source", default=_env("FOLLOW_FROM", "acmebox:8080"),
                   help="acmebox's HOST:PORT on the overlay network [ACMEBOX_FOLLOW_FROM; default: acmebox:8080]")
    p.add_argument("--fleet-secret-file", type=Path, default=_env("FLEET_SECRET_FILE"),
                   help="the fleet secret shared with acmebox [ACMEBOX_FLEET_SECRET_FILE]")
    p.add_argument("--node", default=_env("FOLLOW_NODE"),
                   help="this node's name, as its nginx says it [ACMEBOX_FOLLOW_NODE; default: the host name]")
    p.add_argument("--domain", "-d", action="append", metavar="NAME",
                   help="the certificate's name; repeat for more certificates "
                        "[ACMEBOX_DOMAIN or DOCKER_REGISTRY_DOMAIN_NAME]")
    p.add_argument("--certs-dir", type=Path, default=Path(_env("CERTS_DIR", "/etc/letsencrypt") or ""),
                   help="the node's certs volume [ACMEBOX_CERTS_DIR; default: /etc/letsencrypt]")
    p.add_argument("--reload-target", default=_env("RELOAD_TARGET", "/etc/letsencrypt/reload-generation"),
                   help="the generation file nginx's watcher polls "
                        "[ACMEBOX_RELOAD_TARGET; default: /etc/letsencrypt/reload-generation]")


def spec_from_args(args: argparse.Namespace) -> FollowSpec:
    if args.fleet_secret_file is None:
        raise ConfigError("follow needs --fleet-secret-file (the Swarm secret shared with acmebox)")
    raw = args.domain or [n for n in (_env("DOMAIN") or os.environ.get("DOCKER_REGISTRY_DOMAIN_NAME") or "")
                          .replace(",", " ").split() if n]
    certs = tuple(CertSpec.build([n]) for n in raw) if raw else (CertSpec.build([]),)
    node = args.node or socket.gethostname()
    if not node.isprintable() or " " in node or len(node) > 253:
        raise ConfigError(f"bad --node {node[:80]!r}: want a host name")
    return FollowSpec(HostPort.parse(args.source, "--from address"), read_secret(args.fleet_secret_file), node,
                      certs, args.certs_dir, ReloadTarget.parse("file", args.reload_target))


class Follower:
    def __init__(self, spec: FollowSpec) -> None:
        self.spec = spec
        self.store = CertStore(spec.certs_dir)
        self.applied: dict[str, int] = {}  # certificate name -> acmebox's reload count last acted on

    @property
    def ready_file(self) -> Path:
        return self.spec.certs_dir / READY_FILE

    def prepare(self) -> None:
        self.store.prepare()
        # not routed to until acmebox has seen this node's nginx serve the live certificate
        self.ready_file.unlink(missing_ok=True)
        for cert in self.spec.certs:
            if self.store.current(cert.name) is None:
                key_pem, cert_pem = placeholder.make(cert.names, cert.key_type, _now())
                self.store.save(cert.name, key_pem, cert_pem, {"placeholder": True, "names": list(cert.names)})
                log.info("%s: wrote a self-signed placeholder so nginx can start", cert.name)

    async def reload(self, why: str) -> None:
        try:
            what = await self.spec.generation.run(pickup=0)
        except ReloadFailed as e:
            log.error("cannot ask nginx to reload (%s): %s", why, e)
            return
        log.info("%s: %s", why, what)

    async def poll(self, session: aiohttp.ClientSession, name: str, wait: float) -> bool:
        """One long poll for `name`; True when something was installed or reloaded."""
        stored = self.store.current(name)
        have = f"{stored.serial:x}" if stored is not None and not stored.placeholder else ""
        marked = "1" if self.ready_file.exists() else "0"
        query = urllib.parse.urlencode({"have": have, "reload": self.applied.get(name, -1), "ready": marked,
                                        "wait": f"{wait:g}"})
        path = f"{BUNDLE_PATH}{urllib.parse.quote(name)}?{query}"
        headers = self.spec.keys.sign("GET", path, self.spec.node)
        url = f"http://{self.spec.source}{path}"
        async with session.get(url, headers=headers) as resp:
            if resp.status == 204:
                return False
            if resp.status != 200:
                raise Refused(f"acmebox answered HTTP {resp.status}: {(await resp.text())[:100].strip()}")
            blob = await resp.read()
        bundle = Bundle.from_bytes(self.spec.keys.open(blob, headers[NONCE_HEADER]))
        if bundle.name != name:
            raise Refused(f"asked for {name}, got {bundle.name}")
        before = self.applied.get(name)
        self.applied[name] = bundle.reload
        if stored is None or stored.placeholder or have != _serial_of(bundle):
            new = self.store.save(name, bundle.key_pem, bundle.fullchain_pem, bundle.meta)
            await self.reload(f"{name}: installed serial {new.serial:x} from acmebox")
        elif before is not None and before != bundle.reload:
            await self.reload(f"{name}: acmebox asks for a reload (request {bundle.reload})")
        if bundle.ready is not None and bundle.ready != (marked == "1"):
            self.mark_ready(bundle.ready)
        return True

    def mark_ready(self, ready: bool) -> None:
        """Write or remove the readiness marker (acmebox's verdict on this node's nginx)."""
        if ready:
            atomic_write(self.ready_file, f"{self.spec.node}: acmebox saw this node's nginx serve the live "
                         f"certificate at {_now().isoformat(timespec='seconds')}\n".encode(), 0o644)
            log.info("ready: acmebox saw this node's nginx serve the live certificate (readiness path: 200)")
        else:
            self.ready_file.unlink(missing_ok=True)
            log.info("not ready: acmebox has not seen this node's nginx serve the live certificate yet "
                     "(readiness path: 503)")

    async def follow(self, name: str) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=LONG_POLL_MAX + 15, connect=10)
        failures = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.poll(session, name, LONG_POLL_MAX)
                    if failures:
                        log.info("%s: acmebox at %s answers again", name, self.spec.source)
                    failures = 0
                except (aiohttp.ClientError, TimeoutError, OSError, Refused, ValueError) as e:
                    failures += 1
                    wait = min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX)
                    level = logging.WARNING if failures in (1, 5) or failures % 60 == 0 else logging.DEBUG
                    log.log(level, "%s: cannot fetch from acmebox at %s (%s: %s); nginx keeps what it has; "
                            "trying again in %.0fs", name, self.spec.source, type(e).__name__, e, wait)
                    await asyncio.sleep(wait)

    async def run(self) -> int:
        log.info("following acmebox at %s for %s as node %s", self.spec.source,
                 ", ".join(c.name for c in self.spec.certs), self.spec.node)
        async with asyncio.TaskGroup() as tasks:
            for cert in self.spec.certs:
                tasks.create_task(self.follow(cert.name))
        return 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _serial_of(bundle: Bundle) -> str:
    return f"{split_chain(bundle.fullchain_pem)[0].serial_number:x}"


async def main(spec: FollowSpec) -> int:
    follower = Follower(spec)
    try:
        follower.prepare()
    except OSError as e:
        raise ConfigError(f"certs dir {spec.certs_dir}: {e.strerror or e}") from None
    return await follower.run()
