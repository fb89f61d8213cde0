"""A fault-injecting TLS reverse proxy in front of a real Pebble, for the reliability tests.

It terminates TLS with Pebble's own listener certificate (so acmebox's --ca-bundle stays
Pebble's) and forwards each request with the client's Host header, so Pebble builds every URL
(directory, Location, Link) pointing at the proxy. A test adds rules; the first rule whose
path regex, method and remaining `times` match decides what happens to a request:

    proxy.add(Rule(r"/order-plz", "POST", action="badjson", times=1))

actions: "status" (answer `status` itself: a problem+json document of `problem` type, or an
HTML page with html=True, plus Retry-After when given), "reset" (close the connection
without an answer), "badjson" (forward, then replace the body with invalid JSON),
"drop-location" (forward, then remove the Location header), "trickle" (forward, then send the
body one byte every `every` seconds), "hold" (keep the request unanswered, not forwarded,
until `release()`: a client waiting for it can be killed at that point), "pass" (forward, to
count).

Every request is recorded in `proxy.log` as (method, path, action), so tests count orders.
Runs in a thread of its own with its own event loop; `stop()` ends it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


@dataclass
class Rule:
    path: str
    method: str | None = None
    action: str = "status"
    times: int | None = None  # None: every matching request
    status: int = 503
    problem: str = "serverInternal"
    html: bool = False
    retry_after: str | None = None
    every: float = 1.0
    detail: str | None = None  # the problem document's detail (default: "injected <status>")


class FaultProxy:
    def __init__(self, upstream: str, run_dir: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.run_dir = run_dir
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._released: asyncio.Event | None = None  # made on the proxy's loop
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    # -- what tests use ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def add(self, rule: Rule) -> None:
        with self._lock:
            self.rules.append(rule)

    def release(self) -> None:
        """Let held requests go on to Pebble (and later ones matching a "hold" rule through)."""
        loop, event = self._loop, self._released
        if event is not None:
            loop.call_soon_threadsafe(event.set)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def count(self, path: str, method: str = "POST") -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.log if m == method and re.search(path, p))

    def orders(self) -> int:
        """newOrder requests that reached Pebble (answered by it, not by a rule)."""
        with self._lock:
            return sum(1 for m, p, a in self.log if m == "POST" and "/order-plz" in p and a not in ("status", "reset"))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the server ----------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.run_until_complete(self._session.close())

    async def _start(self) -> None:
        self._released = asyncio.Event()
        upstream_tls = ssl.create_default_context(cafile=str(self.run_dir / "listener-ca.pem"))
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=upstream_tls))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.run_dir / "listener.pem", self.run_dir / "listener.key")
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if re.search(rule.path, path) and rule.method in (None, method) and rule.times != 0:
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._match(request.method, request.path)
        action = rule.action if rule else "pass"
        with self._lock:
            self.log.append((request.method, request.path, action))
        if rule is not None and action == "status":
            return self._answer(rule)
        if rule is not None and action == "hold":
            assert self._released is not None
            await self._released.wait()
        if rule is not None and action == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = request.host
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers, allow_redirects=False
        ) as up:
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            status = up.status
        if action == "badjson":
            data = b'{"status": "valid", oops'
        elif action == "drop-location":
            out.pop("Location", None)
        elif action == "trickle" and rule is not None:
            resp = web.StreamResponse(status=status, headers=out)
            resp.content_length = len(data)
            await resp.prepare(request)
            for i in range(len(data)):
                await resp.write(data[i : i + 1])
                await asyncio.sleep(rule.every)
            return resp
        return web.Response(status=status, body=data, headers=out)

    @staticmethod
    def _answer(rule: Rule) -> web.Response:
        headers = {"Replay-Nonce": base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()}
        if rule.retry_after is not None:
            headers["Retry-After"] = rule.retry_after
        if rule.html:
            return web.Response(status=rule.status, text="<html><body>Down for maintenance</body></html>",
                                content_type="text/html", headers=headers)
        detail = rule.detail or f"injected {rule.status}"
        problem = {"type": f"urn:ietf:params:acme:error:{rule.problem}", "detail": detail}
        return web.json_response(problem, status=rule.status, headers=headers, content_type="application/problem+json")
