"""Error answers Pebble cannot produce (it has no rate limits): a 429 `rateLimited` problem
and a bare 503, each with Retry-After, as seen through the real `acme` library and requests.
The stand-in CA is an aiohttp app on loopback that answers just these requests, and answers
them as RFC 8555 says: nonces are base64url of random bytes (section 6.5.1), Location headers
are absolute URLs, problem documents are `application/problem+json` (section 6.7)."""

from __future__ import annotations

import base64
import email.utils
import secrets
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from acmebox.account import AccountFiles
from acmebox.client import AcmeClient
from acmebox.errors import CAProblem


def new_nonce() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


async def stand_in_ca(retry_after: str, status: int, problem: bool) -> TestServer:
    async def directory(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        return web.json_response({"newNonce": f"{base}/nonce", "newAccount": f"{base}/account",
                                  "newOrder": f"{base}/order"})

    async def nonce(request: web.Request) -> web.Response:
        return web.Response(headers={"Replay-Nonce": new_nonce(), "Cache-Control": "no-store"})

    async def account(request: web.Request) -> web.Response:
        return web.json_response({"status": "valid"}, status=200, headers={
            "Location": f"http://{request.host}/acct/1", "Replay-Nonce": new_nonce()})

    async def order(request: web.Request) -> web.Response:
        headers = {"Retry-After": retry_after, "Replay-Nonce": new_nonce()}
        if problem:
            body = {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many certificates"}
            return web.json_response(body, status=status, headers=headers, content_type="application/problem+json")
        return web.Response(status=status, text="busy", headers=headers)

    app = web.Application()
    app.router.add_get("/dir", directory)
    app.router.add_route("HEAD", "/nonce", nonce)
    app.router.add_post("/account", account)
    app.router.add_post("/order", order)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize(
    ("retry_after", "status", "problem", "typ"),
    [
        ("120", 429, True, "urn:ietf:params:acme:error:rateLimited"),
        (None, 429, True, "urn:ietf:params:acme:error:rateLimited"),  # as an HTTP-date
        ("300", 503, False, "urn:ietf:params:acme:error:serverInternal"),
    ],
)
async def test_retry_after_survives_error_answers(
    tmp_path: Path, retry_after: str | None, status: int, problem: bool, typ: str
) -> None:
    value = retry_after or email.utils.formatdate(time.time() + 600, usegmt=True)
    server = await stand_in_ca(value, status, problem)
    client = AcmeClient(str(server.make_url("/dir")))
    try:
        await client.connect()
        await client.login(AccountFiles(tmp_path).load_or_create_key(), None)
        with pytest.raises(CAProblem) as caught:
            await client._post(client.directory["newOrder"], None)
    finally:
        await client.close()
        await server.close()
    assert caught.value.typ == typ
    expected = float(retry_after) if retry_after else 600.0
    assert caught.value.retry_after is not None
    assert expected - 5 <= caught.value.retry_after <= expected
