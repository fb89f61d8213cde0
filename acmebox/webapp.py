"""The one aiohttp server acmebox runs: HTTP-01 answers, /healthz, /readyz, /metrics and, when
configured, the registry token service.

It is started before anything talks to the CA and stays up for the process's whole life.
It faces the internet (through nginx), so it bounds what clients can hold: at most
`max_connections` connections (never more than the file-descriptor limit allows; at the cap,
the oldest connection is closed to make room), a connection must send a whole request head
within `header_timeout` seconds of opening or of its last answer, no connection lives longer
than `max_age` seconds (the only handler that waits, the token service's, has its own
deadline). Malformed requests and refused accepts are logged as one line each, at a bounded
rate, without the request's bytes (a too-long header line could be a credential).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from acmebox import challenges, limits
from acmebox.config import HostPort
from acmebox.errors import ConfigError

if TYPE_CHECKING:  # imported when used: the token service (bcrypt, PyJWT) and prometheus cost start-up time
    from acmebox import registry_token
    from acmebox.metrics import Metrics

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]

MAX_CONNECTIONS = 4096
HEADER_TIMEOUT = 15.0  # seconds to send a request head, on a new or an idle kept-alive connection
MAX_AGE = 300.0  # seconds a connection may live at all
SWEEP_EVERY = 5.0
BACKLOG = 128
ACCEPT_BATCH = 16  # connections taken per wake-up of the listening socket
SHUTDOWN_TIMEOUT = 5.0  # seconds open requests get to finish when the service stops


def build_app(
    tokens: challenges.Http01Tokens,
    health: HealthCheck,
    metrics: Metrics | None = None,
    token_service: registry_token.TokenService | None = None,
    ready: Callable[[], bool] | None = None,
    routes: Sequence[Callable[[web.Application], None]] = (),
) -> web.Application:
    """`health` backs /healthz (200 while every certificate is good, else 503); `ready` backs
    /readyz (200 once what nginx and the registry need to start is on disk, else 503);
    `routes` add more (e.g. the fleet's route for followers)."""
    app = web.Application()
    challenges.add_routes(app, tokens)
    for install in routes:
        install(app)
    if token_service is not None:
        from acmebox import registry_token

        registry_token.add_routes(app, token_service)

    async def healthz(request: web.Request) -> web.Response:
        ok, text = health()
        return web.Response(status=200 if ok else 503, text=text + "\n")

    app.router.add_get("/healthz", healthz)

    async def readyz(request: web.Request) -> web.Response:
        if ready is not None and ready():
            return web.Response(text="ready: certificates (or placeholders) and the token certificate are written\n")
        return web.Response(status=503, text="starting\n")

    app.router.add_get("/readyz", readyz)

    if metrics is not None:
        from acmebox.metrics import CONTENT_TYPE

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
            text += f": {type(exc).__name__}"
        self.limiter(min(level, logging.WARNING), "%s", text)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kw)

    def warning(self, msg: object, *args: object, **kw: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kw)

    def error(self, msg: object, *args: object, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kw)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=exc_info, **kw)


class _Handler(RequestHandler):
    """aiohttp's handler, telling its site when its connection is gone."""

    site: LimitedSite
    doomed = False  # closed by the cap before its transport existed: close it on arrival

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.doomed:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.site.forget(self)
        super().connection_lost(exc)


class LimitedSite(web.BaseSite):
    """A TCP site that holds at most `cap` connections and closes the ones past `max_age`.

    Connections are counted from the moment asyncio asks for their protocol (in a burst, it
    accepts up to BACKLOG of them before any is registered with aiohttp's server)."""

    def __init__(self, runner: web.AppRunner, listen: HostPort, cap: int, max_age: float,
                 handler_args: dict[str, Any]) -> None:  # fmt: skip
        super().__init__(runner)
        self.listen, self.cap, self.max_age = listen, cap, max_age
        self.handler_args = handler_args
        self.evicted = 0
        self._born: dict[_Handler, float] = {}  # insertion order: oldest first
        self._sweeper: asyncio.Task[None] | None = None
        self._open = asyncio.Event()  # set while connections exist: an idle sidecar stays asleep
        self._connecting: set[asyncio.Task[Any]] = set()
        self.sock: socket.socket | None = None
        self._full_log = limits.LogLimiter(log, burst=1, per=60.0)

    @property
    def name(self) -> str:
        return f"http://{self.listen}"

    def __len__(self) -> int:
        return len(self._born)

    def forget(self, handler: _Handler) -> None:
        self._born.pop(handler, None)

    def _protocol(self) -> RequestHandler:
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        if len(self._born) >= self.cap:
            # Oldest first: a held-open connection is older than the CA's validation request.
            old = next(iter(self._born))
            old.doomed = True
            old.force_close()  # a no-op until its transport exists; then `doomed` closes it
            self.forget(old)
            self.evicted += 1
            self._full_log(logging.WARNING, "%d connections open (the limit): closing the oldest ones "
                           "to take new ones (%d closed so far)", self.cap, self.evicted)  # fmt: skip
        handler = _Handler(server, loop=loop, **self.handler_args)
        handler.site = self
        self._born[handler] = loop.time()
        self._open.set()
        return handler

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._born:
                self._open.clear()
                await self._open.wait()
            await asyncio.sleep(SWEEP_EVERY)
            for handler, born in list(self._born.items()):
                age = loop.time() - born
                # Never connected (asyncio failed to make its transport) or too old.
                if age > self.max_age or (handler.transport is None and age > SWEEP_EVERY):
                    handler.force_close()
                    self.forget(handler)

    # The site accepts connections itself instead of through loop.create_server: asyncio's own
    # accept loop takes up to `backlog` sockets per wake-up, and several wake-ups pass before
    # their protocols exist, so a flood could run out of descriptors before any cap applied.
    # Here each accepted socket is counted (and the oldest closed) before the next accept.

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.listen.host, self.listen.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)  # fmt: skip
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = asyncio.ensure_future(self._sweep())

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        sock = self.sock
        assert sock is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._full_log(logging.ERROR, "cannot accept connections: %s; pausing for a second", e)
                    loop.remove_reader(sock.fileno())
                    loop.call_later(1.0, loop.add_reader, sock.fileno(), self._accept)
                    return
                continue  # the client went away before we took it (ECONNABORTED)
            conn.setblocking(False)
            handler = self._protocol()
            task = loop.create_task(loop.connect_accepted_socket(lambda h=handler: h, sock=conn))  # type: ignore[misc]
            self._connecting.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("incoming connection failed: %s", task.exception())

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
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
    """Serve `app` on `listen` (ConfigError when that fails). `bound_port(runner)` gives the
    port (port 0 picks one)."""
    soft, hard = limits.raise_fd_limit()
    # Closing a connection frees its descriptor a loop iteration or two later: keep room for
    # the few batches accepted meanwhile.
    cap = limits.connection_cap(soft, max_connections, 4 * ACCEPT_BATCH)
    log.info("file-descriptor limit %s (hard %s): at most %d client connections", soft, hard, cap)
    if cap < max_connections:
        log.warning("the file-descriptor limit %s allows only %d connections; raise it to at least %d "
                    "(compose: ulimits: nofile: 65536)", soft, cap, limits.FD_WANTED)  # fmt: skip
    server_log = _OneLineLog(logging.getLogger("aiohttp.server"), limits.LogLimiter(log))
    # What each connection's handler gets (the site makes the handlers, to count them).
    logger = cast(logging.Logger, server_log)
    handler_args: dict[str, Any] = {"access_log": None, "keepalive_timeout": header_timeout, "logger": logger}
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None, keepalive_timeout=header_timeout,
                           logger=logger)  # fmt: skip
    await runner.setup()
    _quiet_accept_errors(asyncio.get_running_loop())
    try:
        await LimitedSite(runner, listen, cap, max_age, handler_args).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}") from None
    log.info("serving HTTP-01 challenges, /healthz, /readyz and /metrics on %s", listen)
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner made by `start` listens on."""
    return next(site.port for site in runner.sites if isinstance(site, LimitedSite))
