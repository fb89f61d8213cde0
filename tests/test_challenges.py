"""The challenge server's rules: presented tokens answer, everything else is a 404."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from acmebox import webapp
from acmebox.challenges import Http01Tokens

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


async def client_for(tokens: Http01Tokens, healthy: bool = True) -> TestClient:  # type: ignore[type-arg]
    app = webapp.build_app(tokens, lambda: (healthy, "status"))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def test_presented_token_answers_then_disappears() -> None:
    tokens = Http01Tokens()
    tokens.present(TOKEN, f"{TOKEN}.thumbprint")
    client = await client_for(tokens)
    try:
        r = await client.get(f"/.well-known/acme-challenge/{TOKEN}")
        assert r.status == 200
        assert await r.text() == f"{TOKEN}.thumbprint"
        assert r.content_type == "text/plain"
        tokens.withdraw(TOKEN)
        assert (await client.get(f"/.well-known/acme-challenge/{TOKEN}")).status == 404
    finally:
        await client.close()


async def test_everything_else_is_404() -> None:
    tokens = Http01Tokens()
    tokens.present(TOKEN, "ka")
    client = await client_for(tokens)
    try:
        for path in (
            "/.well-known/acme-challenge/unknownToken",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/..%2F..%2Fetc%2Fpasswd",
            "/.well-known/acme-challenge/../../etc/passwd",
            f"/.well-known/acme-challenge/{TOKEN}.txt",
            f"/.well-known/acme-challenge/{TOKEN}/extra",
            "/.well-known/acme-challenge/%00",
            f"/.well-known/acme-challenge/{TOKEN[:-1]}",
            "/",
            "/etc/passwd",
        ):
            r = await client.get(path)
            assert r.status == 404, path
            assert await r.text() != "ka"
        assert (await client.post(f"/.well-known/acme-challenge/{TOKEN}")).status == 405
    finally:
        await client.close()


def test_tokens_must_be_base64url() -> None:
    tokens = Http01Tokens()
    for bad in ("../x", "a/b", "a.b", "", "a b"):
        try:
            tokens.present(bad, "ka")
        except ValueError:
            continue
        raise AssertionError(f"accepted token {bad!r}")
    assert len(tokens) == 0


async def test_healthz() -> None:
    for healthy, status in ((True, 200), (False, 503)):
        client = await client_for(Http01Tokens(), healthy)
        try:
            r = await client.get("/healthz")
            assert r.status == status
            assert await r.text() == "status\n"
        finally:
            await client.close()


async def test_readyz_is_separate_from_healthz() -> None:
    """Ready (what nginx and the registry need is on disk) while not yet healthy (no real
    certificate): compose starts them on /readyz, /healthz stays about the certificate."""
    state = {"ready": False}
    app = webapp.build_app(Http01Tokens(), lambda: (False, "a.test: no certificate yet"),
                           ready=lambda: (state["ready"], "ready: written" if state["ready"] else "starting"))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert (await client.get("/readyz")).status == 503
        state["ready"] = True
        r = await client.get("/readyz")
        assert r.status == 200 and (await r.text()).startswith("ready:")
        assert (await client.get("/healthz")).status == 503
    finally:
        await client.close()
