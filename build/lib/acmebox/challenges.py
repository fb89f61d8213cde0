"""HTTP-01: the tokens acmebox is presenting right now, and the handler that serves them.

A token maps to its key authorization only while an authorization is pending. Anything that
is not a currently presented base64url token is a 404: the path is never used to look up
a file.
"""

from __future__ import annotations

import re

from aiohttp import web

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
