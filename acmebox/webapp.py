"""The one aiohttp server acmebox runs: HTTP-01 answers, /healthz, /metrics and, when
configured, the registry token service.

It is started before anything talks to the CA and stays up for the process's whole life.
It faces the internet (through nginx), so it bounds what clients can hold: at most
`max_connections` connections (never more than the file-descriptor limit allows; at the cap,
the oldest connection is closed to make room), a connection must send a whole request head
within `header_timeout` seconds of opening or of its last answer, no connection lives longer
than `max_age` seconds, no request is handled for longer than REQUEST_TIMEOUT. Malformed
requests and refused accepts are logged as one line each, at a bounded rate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from acmebox import challenges, limits, registry_token
from acmebox.config import HostPort
from acmebox.errors import ConfigError
from acmebox.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]

MAX_CONNECTIONS = 4096
HEADER_TIMEOUT = 15.0  # seconds to send a request head, on a new or an idle kept-alive connection
MAX_AGE = 300.0  # seconds a connection may live at all
REQUEST_TIMEOUT = 60.0  # seconds a handler may take
SWEEP_EVERY = 5.0


@web.middleware
async def _deadline(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await handler(request)
    except TimeoutError:
        return web.Response(status=503, text="timed out\n", headers={"Retry-After": "10"})


def build_app(
    tokens: challenges.Http01Tokens,
    health: HealthCheck,
    metrics: Metrics | None = None,
    token_service: registry_token.TokenService | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_deadline])
    challenges.add_routes(app, tokens)
    if token_service is not None:
        registry_token.add_routes(app, token_service)

    async def healthz(request: web.Request) -> web.Response:
        ok, text = health()
        return web.Response(status=200 if ok else 503, text=text + "\n")

    app.router.add_get("/healthz", healthz)

    if metrics is not None:
        registry = metrics

        async def metrics_page(request: web.Request) -> web.Response:
            return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})

        app.router.add_get("/metrics", metrics_page)
    return app


class _OneLineLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What aiohttp logs about a bad request (`Error handling request` with a traceback, for
    every malformed line or oversized header) as one rate-limited line: a stranger's garbage is
    not worth a traceback, and must not be able to fill the disk."""

    def __init__(self, logger: logging.Logger, limiter: limits.LogLimiter) -> None:
        super().__init__(logger, {})
        self.limiter = limiter

    def log(self, level: int, msg: object, *args: object, exc_info: Any = None, **kw: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if exc is not None:
            detail = " ".join(str(exc).split())[:200]
            text += f": {type(exc).__name__}" + (f": {detail}" if detail else "")
        self.limiter(min(level, logging.WARNING), "%s", text)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kw)

    def warning(self, msg: object, *args: object, **kw: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kw)

    def error(self, msg: object, *args: object, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kw)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=exc_info, **kw)


class LimitedSite(web.BaseSite):
    """A TCP site that holds at most `cap` connections and closes the ones past `max_age`."""

    def __init__(self, runner: web.AppRunner, listen: HostPort, cap: int, max_age: float) -> None:
        super().__init__(runner)
        self.listen, self.cap, self.max_age = listen, cap, max_age
        self.evicted = 0
        # RequestHandler takes no weak references: entries of closed connections are pruned.
        self._born: dict[RequestHandler, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._full_log = limits.LogLimiter(log, burst=1, per=60.0)

    @property
    def name(self) -> str:
        return f"http://{self.listen}"

    def _protocol(self) -> RequestHandler:
        server = self._runner.server
        assert server is not None
        open_ = [h for h in server.connections if h.transport is not None]
        if len(open_) >= self.cap:
            # Oldest first: a held-open connection is older than the CA's validation request.
            open_[0].force_close()
            self.evicted += 1
            self._full_log(logging.WARNING, "%d connections open (the limit): closing the oldest ones "
                           "to take new ones (%d closed so far)", len(open_), self.evicted)  # fmt: skip
        if len(self._born) > 2 * self.cap:
            self._prune()
        handler = server()
        self._born[handler] = asyncio.get_running_loop().time()
        return handler

    def _prune(self) -> None:
        server = self._runner.server
        live = set(server.connections) if server is not None else set()
        self._born = {h: t for h, t in self._born.items() if h in live}

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self._prune()
            for handler, born in list(self._born.items()):
                if loop.time() - born > self.max_age:
                    handler.force_close()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.listen.host, self.listen.port, backlog=512)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().stop()


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports each failed accept() (EMFILE: out of descriptors) with a traceback; make
    that one rate-limited line."""
    previous = loop.get_exception_handler()
    limiter = limits.LogLimiter(log, burst=1, per=10.0)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            limiter(logging.ERROR, "cannot accept connections: %s", context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def start(
    app: web.Application,
    listen: HostPort,
    *,
    max_connections: int = MAX_CONNECTIONS,
    header_timeout: float = HEADER_TIMEOUT,
    max_age: float = MAX_AGE,
) -> web.AppRunner:
    """Serve `app` on `listen` (ConfigError when that fails). The runner's `addresses` give the
    bound address (port 0 picks one)."""
    soft, hard = limits.raise_fd_limit()
    cap = limits.connection_cap(soft, max_connections)
    log.info("file-descriptor limit %s (hard %s): at most %d client connections", soft, hard, cap)
    if cap < max_connections:
        log.warning("the file-descriptor limit %s allows only %d connections; raise it to at least %d "
                    "(compose: ulimits: nofile: 65536)", soft, cap, limits.FD_WANTED)  # fmt: skip
    server_log = _OneLineLog(logging.getLogger("aiohttp.server"), limits.LogLimiter(log))
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=header_timeout,
                           logger=cast(logging.Logger, server_log))  # fmt: skip
    await runner.setup()
    _quiet_accept_errors(asyncio.get_running_loop())
    try:
        await LimitedSite(runner, listen, cap, max_age).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}") from None
    log.info("serving HTTP-01 challenges, /healthz and /metrics on %s", listen)
    return runner
