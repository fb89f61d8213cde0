"""Many frontends, one issuer: the nginx frontends acmebox keeps on the live certificate
(`--fleet-frontends`, e.g. `tasks.nginx` in a Docker Swarm), and the followers that copy the
certificate to each frontend's node.

Owned here: finding the frontends (every address the name resolves to: with
`endpoint_mode: dnsrr`, one per nginx task), learning each one's node (nginx answers
/.well-known/acmebox-frontend with its host name, which the Swarm overlay sets to the node's),
checking by TLS handshake which serial each presents for every certificate, asking the lagging
ones to reload (through their follower's next poll) with a backoff while the difference
lasts, remembering frontends that vanished (a node that died is named, not forgotten),
deciding each frontend's readiness (a frontend is *joining*, not to be routed to, from when it
appears until it is first seen serving the live certificate(s); its follower turns that into
the node's readiness path), and saying all of it in /healthz, metrics and <state>/fleet.json
for `acmebox status`.

Also here: the route followers poll (GET /fleet/v1/bundle/<name>, authenticated and sealed by
acmebox.sealed; a long poll that answers when the certificate or the node's reload count
changes) and the self-check through every frontend before the CA is asked to validate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, Gauge

from acmebox.challenges import SelfCheck
from acmebox.fleetspec import FleetSpec
from acmebox.fsutil import atomic_write_json
from acmebox.reload import ReloadFailed, served_certificate
from acmebox.sealed import BUNDLE_PATH, LONG_POLL_MAX, Bundle, Refused
from acmebox.statedir import StateDir
from acmebox.store import CertStore

log = logging.getLogger(__name__)

NODE_PATH = "/.well-known/acmebox-frontend"  # nginx answers its host name (the node's, in the Swarm overlay)
FAST, OBSERVE = 2.0, 30.0  # seconds between looks while a frontend lags / while all agree
GRACE = 4.0  # seconds a frontend may lag before it is asked to reload (its follower is fetching)
RETRY_FIRST, RETRY_MAX = 2.0, 300.0  # backoff between reload requests to one frontend
LOOK_TIMEOUT = 5.0  # seconds for one handshake or one node-name fetch
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # frontends are never behind a proxy


@dataclass
class Frontend:
    """One frontend as last seen; keyed by its node (or its address until the node is known)."""

    node: str
    address: str
    serials: dict[str, int | None] = field(default_factory=dict)  # certificate name -> presented serial
    error: str | None = None
    checked: str = ""  # ISO time of the last look
    missing_since: str | None = None  # no longer among the addresses the name resolves to
    lag_since: float | None = None  # loop time the difference was first seen
    asks: int = 0  # reload requests since it last agreed
    next_ask: float = 0.0
    ready: bool = False  # seen serving the live certificate(s) since it appeared; until then: joining


@dataclass
class Follower:
    node: str
    address: str
    last_poll: str
    has: str  # the serial (hex) the follower holds
    at: float = 0.0  # monotonic time of the last poll


FOLLOWER_FRESH = 2 * LONG_POLL_MAX + 10  # seconds a follower counts as running after its last poll


class Fleet:
    def __init__(self, spec: FleetSpec, store: CertStore, statedir: StateDir, names: list[str],
                 registry: CollectorRegistry | None = None, self_check: SelfCheck | None = None) -> None:
        self.spec, self.store, self.statedir, self.names = spec, store, statedir, names
        self.frontends: dict[str, Frontend] = {}
        self.followers: dict[str, Follower] = {}
        self.reloads: dict[str, int] = {}  # node -> reloads asked of it (followers compare with theirs)
        self.wanted: dict[str, int] = {}  # certificate name -> live serial
        self.looked = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # replaced on every change; held polls wait on it
        self._check = self_check or SelfCheck()
        self.serves_live = Gauge("acmebox_frontend_serves_live", "1 when the frontend presented the live "
                                 "certificate at the last look, 0 when not or when it is missing",
                                 ["frontend", "name"], registry=registry)
        self.count = Gauge("acmebox_frontends", "frontends found at the last look", registry=registry)
        self.ready = Gauge("acmebox_frontend_ready", "1 once the frontend was seen serving the live "
                           "certificate(s) since it appeared; 0 while it joins or is missing", ["frontend"],
                           registry=registry)

    # -- what should be served ------------------------------------------------------------------

    def want(self, name: str, serial: int) -> None:
        self.wanted[name] = serial
        self._notify()
        self._wake.set()

    def ask_reload(self, node: str) -> None:
        self.reloads[node] = self.reloads.get(node, 0) + 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- looking --------------------------------------------------------------------------------

    def _discover(self) -> list[str]:
        try:
            infos = socket.getaddrinfo(self.spec.frontends, self.spec.tls_port, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            return []
        return sorted({str(i[4][0]) for i in infos})

    def _node_of(self, address: str) -> str:
        url = f"http://{address}:{self.spec.http_port}{NODE_PATH}"
        try:
            with _DIRECT.open(url, timeout=LOOK_TIMEOUT) as resp:
                text = resp.read(256).decode(errors="replace").strip()
        except (OSError, ValueError):
            return address
        return text if text and text.isprintable() and " " not in text else address

    def _look_one(self, address: str, names: list[str]) -> tuple[str, dict[str, int | None], str | None]:
        serials: dict[str, int | None] = {}
        error = None
        for name in names:
            try:
                serials[name] = served_certificate(address, self.spec.tls_port, name, LOOK_TIMEOUT).serial_number
            except (OSError, ReloadFailed, ValueError) as e:
                serials[name], error = None, f"no TLS answer ({e or type(e).__name__})"
        return self._node_of(address), serials, error

    async def look(self) -> None:
        """Find the frontends and look at each (concurrently); update the records."""
        names = sorted(self.wanted)
        addresses = await asyncio.to_thread(self._discover)
        results = await asyncio.gather(*(asyncio.to_thread(self._look_one, a, names) for a in addresses))
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        verdicts = {node: f.ready for node, f in self.frontends.items()}
        seen = set()
        for address, (node, serials, error) in zip(addresses, results, strict=True):
            seen.add(node)
            f = self.frontends.get(node)
            if f is None or f.address != address:
                stale = [k for k, v in self.frontends.items() if v.address == address and k != node]
                for k in stale:  # known by its address before its node answered
                    del self.frontends[k]
                f = self.frontends[node] = Frontend(node, address)
            f.serials, f.error, f.checked, f.missing_since = serials, error, now, None
        for f in self.frontends.values():
            if f.node not in seen and f.missing_since is None:
                f.missing_since, f.ready = now, False  # when it returns, it joins again
                log.error("frontend %s (%s) is gone: %s no longer resolves to it", f.node, f.address,
                          self.spec.frontends)
        self.looked = True
        self.count.set(len(addresses))
        for f in self.frontends.values():
            if not f.ready and f.missing_since is None and all(self._agrees(f, n) for n in names):
                f.ready = True
                log.info("frontend %s (%s) is ready: it serves the live certificate(s)", f.node, f.address)
            self.ready.labels(f.node).set(int(f.ready))
            for name in names:
                self.serves_live.labels(f.node, name).set(int(self._agrees(f, name)))
        if {node: f.ready for node, f in self.frontends.items()} != verdicts:
            self._notify()  # held polls take the new verdicts to the nodes' readiness paths

    def _agrees(self, f: Frontend, name: str) -> bool:
        return f.missing_since is None and f.serials.get(name) == self.wanted.get(name)

    def state(self, f: Frontend) -> str:
        """"missing", "joining" (not yet seen on the live certificate(s) since it appeared: not
        to be routed to), "lags" (it was; now it presents another) or "serves live"."""
        if f.missing_since is not None:
            return "missing"
        if all(self._agrees(f, n) for n in self.wanted):
            return "serves live"
        return "lags" if f.ready else "joining"

    def node_ready(self, node: str) -> bool | None:
        """The verdict a node's follower turns into its readiness path: None while acmebox has
        not looked at that node's frontend (the follower keeps what it has)."""
        f = self.frontends.get(node)
        return None if f is None else f.ready

    def unseen(self) -> list[str]:
        """Nodes whose follower polls but whose nginx is not among the frontends (not started,
        not healthy, or not in DNS yet)."""
        now = time.monotonic()
        return sorted(n for n, f in self.followers.items()
                      if now - f.at < FOLLOWER_FRESH and n not in self.frontends)

    def recheck(self) -> None:
        """Look now, and ask lagging frontends at once (an operator fixed one: `acmebox renew`)."""
        for f in self.frontends.values():
            if f.lag_since is not None:
                f.next_ask = 0.0
        self._wake.set()

    def lagging(self) -> list[Frontend]:
        return [f for f in self.frontends.values()
                if f.missing_since is None and not all(self._agrees(f, n) for n in self.wanted)]

    def _act(self, now: float) -> None:
        """Ask lagging frontends to reload, with a backoff while the difference lasts."""
        for f in self.frontends.values():
            if f.missing_since is not None:
                continue
            if all(self._agrees(f, n) for n in self.wanted):
                if f.lag_since is not None:
                    log.info("frontend %s (%s) serves the live certificate(s)", f.node, f.address)
                f.lag_since, f.asks, f.next_ask = None, 0, 0.0
                continue
            if f.lag_since is None:
                f.lag_since, f.next_ask = now, now + GRACE
            if now >= f.next_ask:
                f.asks += 1
                f.next_ask = now + min(RETRY_FIRST * 2 ** (f.asks - 1), RETRY_MAX)
                log.warning("frontend %s (%s) presents %s; asking it to reload (request %d)", f.node, f.address,
                            self._describe(f), f.asks)
                self.ask_reload(f.node)

    def _describe(self, f: Frontend) -> str:
        parts = []
        for name in sorted(self.wanted):
            got = f.serials.get(name)
            parts.append(f"{name}: " + (f"serial {got:x}" if got is not None else (f.error or "nothing")))
        return "; ".join(parts)

    async def run(self) -> None:
        """Look, act, record; every FAST seconds while a frontend lags, else every OBSERVE."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if self.wanted:
                try:
                    await self.look()
                    self._act(loop.time())
                    self._record()
                except Exception:  # nothing a frontend does may end the service
                    log.exception("looking at the frontends failed")
            wait = FAST if (self.lagging() or self.unseen() or not self.looked) else OBSERVE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    # -- saying what is seen --------------------------------------------------------------------

    def health(self) -> tuple[bool, list[str]]:
        if not self.wanted:
            return True, []
        if not self.looked:
            return False, [f"frontends ({self.spec.frontends}): not looked at yet"]
        lines, ok = [], True
        if not any(f.missing_since is None for f in self.frontends.values()):
            ok = False
            lines.append(f"frontends: {self.spec.frontends} resolves to none")
        for node in self.unseen():
            ok = False
            lines.append(f"frontend {node}: not found (its follower polls, but {self.spec.frontends} does not "
                         "list its nginx)")
        for node in sorted(self.frontends):
            f = self.frontends[node]
            state = self.state(f)
            if state == "missing":
                ok = False
                lines.append(f"frontend {node} ({f.address}): missing since {f.missing_since}")
            elif state == "serves live":
                lines.append(f"frontend {node} ({f.address}): serves the live certificate")
            elif state == "joining":
                ok = False
                lines.append(f"frontend {node} ({f.address}): joining (not ready): presents {self._describe(f)}, "
                             "not yet the live " + ", ".join(f"{s:x}" for _, s in sorted(self.wanted.items())))
            else:
                ok = False
                lines.append(f"frontend {node} ({f.address}): presents {self._describe(f)}, not the live "
                             + ", ".join(f"{s:x}" for _, s in sorted(self.wanted.items()))
                             + f" (reload asked {f.asks} time(s))")
        return ok, lines

    def all_serve(self, name: str) -> bool:
        live = [f for f in self.frontends.values() if f.missing_since is None]
        return bool(live) and all(self._agrees(f, name) for f in live)

    def snapshot(self) -> dict[str, Any]:
        fronts = []
        for node in sorted(self.frontends):
            f = self.frontends[node]
            fronts.append({
                "node": node, "address": f.address, "checked": f.checked, "missing_since": f.missing_since,
                "serials": {n: (f"{s:x}" if s is not None else None) for n, s in sorted(f.serials.items())},
                "serves_live": all(self._agrees(f, n) for n in self.wanted), "error": f.error,
                "reloads_asked": f.asks, "ready": f.ready, "state": self.state(f),
            })
        followers = [{k: v for k, v in vars(self.followers[n]).items() if k != "at"} for n in sorted(self.followers)]
        return {"frontends_name": self.spec.frontends, "wanted": {n: f"{s:x}" for n, s in sorted(self.wanted.items())},
                "frontends": fronts, "followers": followers}

    def _record(self) -> None:
        try:
            atomic_write_json(self.statedir.fleet, self.snapshot(), 0o600)
        except OSError as e:
            log.debug("cannot record the frontends: %s", e)

    # -- the self-check through every frontend ---------------------------------------------------

    async def self_check(self, name: str, token: str, key_authorization: str) -> bool:
        """Fetch the challenge through every frontend (any may be the one the CA reaches)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._check.bound
        while not (addresses := await asyncio.to_thread(self._discover)):
            # at the stack's start acmebox runs before any nginx: a validation now would fail
            if loop.time() > deadline:
                log.warning("%s: self-check: %s resolves to no frontend; asking the CA anyway", name,
                            self.spec.frontends)
                return False
            await asyncio.sleep(1.0)
        checks = [SelfCheck((a, self.spec.http_port), self._check.bound, self._check.first_delay) for a in addresses]
        results = await asyncio.gather(*(c(name, token, key_authorization) for c in checks))
        if all(results):
            log.info("%s: self-check passed through all %d frontends", name, len(addresses))
        return all(results)

    # -- the followers' route -------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(BUNDLE_PATH + "{name}", self._bundle)

    async def _bundle(self, request: web.Request) -> web.Response:
        try:
            node, nonce = self.spec.keys.verify("GET", request.path_qs, dict(request.headers))
        except Refused as e:
            log.warning("fleet request from %s refused: %s", request.remote, e)
            raise web.HTTPForbidden(text="refused\n") from None
        name = request.match_info["name"]
        if name not in self.names:
            raise web.HTTPNotFound(text="no such certificate\n")
        try:
            have = request.query.get("have", "")
            applied = int(request.query.get("reload", "-1"))
            wait = min(float(request.query.get("wait", "0")), LONG_POLL_MAX)
            marked = {"1": True, "0": False, "": None}[request.query.get("ready", "")]
        except (ValueError, KeyError):
            raise web.HTTPBadRequest(text="bad query\n") from None
        if applied < 0 and (front := self.frontends.get(node)) is not None and front.ready:
            # its follower has just started, perhaps with the whole node: vouch for it only after
            # looking again (its nginx may be new, on an older certificate)
            front.ready = False
            self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        while True:
            changed = self._changed
            stored = self.store.current(name)
            current = f"{stored.serial:x}" if stored is not None and not stored.placeholder else ""
            self.followers[node] = Follower(node, str(request.remote), dt.datetime.now(dt.UTC).isoformat(
                timespec="seconds"), have, time.monotonic())
            verdict = self.node_ready(node)
            if stored is not None and current and (current != have or self.reloads.get(node, 0) != applied
                                                   or (verdict is not None and verdict != marked)):
                break
            left = deadline - loop.time()
            if left <= 0:
                return web.Response(status=204)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        try:
            key_pem = (self.store.live / name / "privkey.pem").read_bytes()
        except OSError as e:
            log.error("%s: cannot read the live key for a follower (%s)", name, e.strerror or e)
            raise web.HTTPServiceUnavailable(text="key unreadable\n") from None
        fullchain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in stored.chain)
        bundle = Bundle(name, key_pem, fullchain, stored.meta.to_json(), self.reloads.get(node, 0),
                        self.node_ready(node))
        return web.Response(body=self.spec.keys.seal(bundle.to_bytes(), nonce),
                            content_type="application/octet-stream")


# -- for `acmebox status` (another process: it reads what the service recorded) -----------------


def recorded(state_dir: StateDir | Path) -> dict[str, list[dict[str, Any]]]:
    """Per certificate name, what each frontend presented at the service's last look (from
    <state>/fleet.json): [{"node", "address", "serial", "serves_live", "missing_since",
    "checked", "state"}] (state: Fleet.state's words). Empty when the service runs without
    frontends."""
    try:
        data = json.loads(StateDir.of(state_dir).fleet.read_text())
        wanted, fronts = dict(data["wanted"]), list(data["frontends"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for name, serial in wanted.items():
        out[name] = [{"node": f.get("node"), "address": f.get("address"), "serial": (f.get("serials") or {}).get(name),
                      "serves_live": f.get("missing_since") is None and (f.get("serials") or {}).get(name) == serial,
                      "missing_since": f.get("missing_since"), "checked": f.get("checked"),
                      "state": f.get("state")}
                     for f in fronts]
    return out


def describe(front: dict[str, Any]) -> str:
    """One line of `acmebox status` for a frontend entry of `recorded`."""
    where = f"frontend {front['node']} ({front['address']})"
    if front["missing_since"]:
        return f"{where}: missing since {front['missing_since']}"
    if front["serves_live"]:
        return f"{where}: serves the live certificate"
    presents = front["serial"] or "nothing (no TLS answer)"
    if front.get("state") == "joining":
        return f"{where}: joining (not ready): presents {presents}, not yet the live one"
    return f"{where}: presents {presents}, not the live one"
