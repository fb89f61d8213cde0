"""The one aiohttp server acmebox runs: HTTP-01 answers, /healthz, /metrics and, when
configured, the registry token service.

It is started before anything talks to the CA and stays up for the process's whole life.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from acmebox import challenges
from acmebox.config import HostPort
from acmebox.errors import ConfigError

if TYPE_CHECKING:  # imported when used: the token service (bcrypt, PyJWT) and prometheus cost start-up time
    from acmebox import registry_token
    from acmebox.metrics import Metrics

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]


def build_app(
    tokens: challenges.Http01Tokens,
    health: HealthCheck,
    metrics: Metrics | None = None,
    token_service: registry_token.TokenService | None = None,
) -> web.Application:
    app = web.Application()
    challenges.add_routes(app, tokens)
    if token_service is not None:
        from acmebox import registry_token

        registry_token.add_routes(app, token_service)

    async def healthz(request: web.Request) -> web.Response:
        ok, text = health()
        return web.Response(status=200 if ok else 503, text=text + "\n")

    app.router.add_get("/healthz", healthz)

    if metrics is not None:
        from acmebox.metrics import CONTENT_TYPE

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
    log.info("serving HTTP-01 challenges, /healthz and /metrics on %s", listen)
    return runner
