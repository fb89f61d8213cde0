"""HTTP-01: the tokens acmebox is presenting right now, the handler that serves them, and
the self-check that fetches them through the front door before the CA is asked to.

A token maps to its key authorization only while an authorization is pending. Anything that
is not a currently presented base64url token is a 404: the path is never used to look up
a file.

The self-check (cert-manager does the same) exists because a failed validation costs: Let's
Encrypt counts it (5 per account, hostname and hour) and the next try is minutes away. At
start, acmebox is up before nginx listens; a redirect or a proxy in front may not route the
path. So before telling the CA to validate, acmebox fetches
`http://<name>/.well-known/acme-challenge/<token>` the way the CA will (or through `via`, with
`Host: <name>`) until it answers the key authorization, within a bounded backoff. A check
that still fails then lets the order go on with a warning: hairpin NAT can make the check
fail where the CA would succeed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from acmebox.identifiers import url_host

log = logging.getLogger(__name__)

PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class Http01Tokens:
    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def present(self, token: str, key_authorization: str) -> None:
        if not _TOKEN.match(token):
            raise ValueError("HTTP-01 token is not base64url")
        self._tokens[token] = key_authorization

    def withdraw(self, token: str) -> None:
        self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        return self._tokens.get(token) if _TOKEN.match(token) else None

    def __len__(self) -> int:
        return len(self._tokens)


def add_routes(app: web.Application, tokens: Http01Tokens) -> None:
    async def answer(request: web.Request) -> web.Response:
        key_authz = tokens.get(request.match_info["token"])
        if key_authz is None:
            raise web.HTTPNotFound(text="no such challenge\n")
        return web.Response(text=key_authz, content_type="text/plain")

    app.router.add_get(PREFIX + "{token}", answer)


@dataclass(frozen=True)
class SelfCheck:
    """`via`: HOST:PORT to connect to instead of the name on port 80 (e.g. `nginx:80` inside
    compose). `bound`: seconds to keep trying before letting the order go on (RFC 8555 leaves
    the timing to the client; the CA validates once it is told to)."""

    via: tuple[str, int] | None = None
    bound: float = 30.0
    first_delay: float = 0.1

    async def __call__(self, name: str, token: str, key_authorization: str) -> bool:
        """True when the front door answered `key_authorization`; False (after a warning) when
        it did not within the bound, or when `name` does not resolve from here at all."""
        host, port = self.via or (name, 80)
        url = f"http://{url_host(host)}:{port}{PREFIX}{token}"
        headers = {"Host": url_host(name)}  # RFC 8738 section 3: an IPv6 address in brackets
        delay, waited, last = self.first_delay, 0.0, ""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            while True:
                try:
                    async with session.get(url, headers=headers, allow_redirects=True) as resp:
                        body = (await resp.content.read(4096)).decode(errors="replace").strip()
                        if resp.status == 200 and body == key_authorization:
                            if waited:
                                log.info("%s: self-check passed after %.1fs", name, waited)
                            return True
                        last = f"HTTP {resp.status} from {resp.url}" + ("" if resp.status != 200 else ", wrong body")
                except aiohttp.ClientConnectorDNSError as e:
                    log.warning("%s: self-check skipped: %s does not resolve here (%s); asking the CA anyway",
                                name, host, e.os_error)
                    return False
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    last = f"{type(e).__name__}: {e}"
                if waited >= self.bound:
                    log.warning("%s: self-check through %s still fails after %.0fs (%s); asking the CA anyway",
                                name, url, waited, last)
                    return False
                if not waited:
                    log.info("%s: self-check through %s not yet answered (%s); waiting", name, url, last)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)
