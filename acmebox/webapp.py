"""The one aiohttp server acmebox runs: HTTP-01 answers, /healthz, /readyz, /metrics and, when
configured, the registry token service.

It is started before anything talks to the CA and stays up for the process's whole life.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from acmebox import challenges, registry_token
from acmebox.config import HostPort
from acmebox.errors import ConfigError
from acmebox.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]


def build_app(
    tokens: challenges.Http01Tokens,
    health: HealthCheck,
    metrics: Metrics | None = None,
    token_service: registry_token.TokenService | None = None,
    ready: Callable[[], bool] | None = None,
) -> web.Application:
    """`health` backs /healthz (200 while every certificate is good, else 503); `ready` backs
    /readyz (200 once what nginx and the registry need to start is on disk, else 503)."""
    app = web.Application()
    challenges.add_routes(app, tokens)
    if token_service is not None:
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
        registry = metrics

        async def metrics_page(request: web.Request) -> web.Response:
            return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})

        app.router.add_get("/metrics", metrics_page)
    return app


async def start(app: web.Application, listen: HostPort) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}") from None
    log.info("serving HTTP-01 challenges, /healthz, /readyz and /metrics on %s", listen)
    return runner
