"""The token service on its own: claims and expiry, what each identity gets, refused hash
formats, and the HTTP answers (401 for wrong credentials, 404 for the OAuth2 POST)."""

from __future__ import annotations

import base64
import datetime as dt
import stat
import subprocess
from pathlib import Path

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from acmebox import webapp
from acmebox.challenges import Http01Tokens
from acmebox.errors import ConfigError
from acmebox.registry_token import Htpasswd, Scope, TokenService, build, libtrust_kid

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def service(tmp_path: Path) -> TokenService:
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", str(htpasswd), "alice", "pw-alice"], check=True, capture_output=True)
    subprocess.run(["htpasswd", "-Bb", str(htpasswd), "carol", "pw-carol"], check=True, capture_output=True)
    acl = tmp_path / "acl.toml"
    acl.write_text('carol = ["carol/*", "shared/*"]\n')
    return build(htpasswd, tmp_path / "state" / "token.key", tmp_path / "shared" / "token.crt",
                 "registry", "acmebox", 300, acl)  # fmt: skip


def decode(service: TokenService, token: str) -> dict:  # type: ignore[type-arg]
    lenient = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    return jwt.decode(token, service.key.public_key(), algorithms=["ES256"], audience="registry", issuer="acmebox",
                      options=lenient)  # fmt: skip


def test_claims_and_expiry(service: TokenService, tmp_path: Path) -> None:
    body = service.issue("alice", [Scope.parse("repository:team/app:pull,push")], now=NOW)
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256" and header["kid"] == service.kid
    claims = decode(service, body["token"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 300
    assert claims["iat"] == int(NOW.timestamp()) and claims["nbf"] <= claims["iat"]
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(body["token"], service.key.public_key(), algorithms=["ES256"], audience="registry")
    # the certificate the registry trusts carries the signing key; the key file is private
    cert = x509.load_pem_x509_certificate((tmp_path / "shared" / "token.crt").read_bytes())
    assert libtrust_kid(cert.public_key()) == service.kid  # type: ignore[arg-type]
    assert stat.S_IMODE((tmp_path / "state" / "token.key").stat().st_mode) == 0o600
    assert len(service.kid) == 59 and service.kid.count(":") == 11  # libtrust: 12 groups of 4


def test_scopes_per_identity(service: TokenService) -> None:
    everything = Scope.parse("repository:shared/x:pull,push,delete")
    assert service.grant(None, everything) == {"pull"}
    assert service.grant("alice", everything) == {"pull", "push", "delete"}
    assert service.grant("carol", everything) == {"pull", "push", "delete"}
    assert service.grant("carol", Scope.parse("repository:alice/x:pull,push")) == {"pull"}  # ACL narrows
    assert service.grant(None, Scope.parse("registry:catalog:*")) == {"*"}
    assert service.grant("alice", Scope.parse("registry:other:*")) == frozenset()
    assert Scope.parse("repository:host:5000/a/b:pull").name == "host:5000/a/b"
    with pytest.raises(ValueError):
        Scope.parse("repository:nothing")


@pytest.mark.parametrize(
    "line",
    ["bob:$apr1$abc$0123456789abcdefghij01", "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "bob:plaintext",
     "bob:abJnggxhB/yWI"],
)  # fmt: skip
def test_refused_hash_formats(tmp_path: Path, line: str) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(line + "\n")
    with pytest.raises(ConfigError, match=r"line 1 \(bob\): only bcrypt entries are accepted"):
        Htpasswd(htpasswd)


def test_refused_at_startup_with_one_line(tmp_path: Path) -> None:
    from conftest import run_acmebox

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("bob:$apr1$abc$0123456789abcdefghij01\n")
    result = run_acmebox("run", "--once", "--domain", "a.test", "--auth-htpasswd", str(htpasswd),
                         "--certs-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"),
                         "--listen", "127.0.0.1:0")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("acmebox: error: htpasswd file")
    assert "Traceback" not in result.stderr


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_http_answers(service: TokenService, tmp_path: Path) -> None:
    app = webapp.build_app(Http01Tokens(), lambda: (True, ""), token_service=service)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        url = "/auth/token?service=registry&scope=repository:a/b:pull,push"
        anon = await client.get(url)
        assert anon.status == 200
        assert decode(service, (await anon.json())["token"])["access"][0]["actions"] == ["pull"]
        good = await client.get(url, headers=basic("alice", "pw-alice"))
        assert decode(service, (await good.json())["token"])["access"][0]["actions"] == ["pull", "push"]
        bad = await client.get(url, headers=basic("alice", "nope"))
        assert bad.status == 401 and bad.headers["WWW-Authenticate"].startswith("Basic")
        unknown = await client.get(url, headers=basic("mallory", "pw"))
        assert unknown.status == 401
        assert (await client.post("/auth/token", data={"grant_type": "password"})).status == 404
        assert (await client.get("/auth/token?service=other")).status == 400
        login = await client.get("/auth/token?service=registry&account=alice", headers=basic("alice", "pw-alice"))
        assert login.status == 200 and decode(service, (await login.json())["token"])["access"] == []

        # a user added while running is seen without a restart
        subprocess.run(["htpasswd", "-Bb", str(tmp_path / "htpasswd"), "dave", "pw-dave"], check=True,
                       capture_output=True)  # fmt: skip
        assert (await client.get(url, headers=basic("dave", "pw-dave"))).status == 200
    finally:
        await client.close()
