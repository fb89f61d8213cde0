"""The token service on its own: claims and expiry, what each identity gets, refused hash
formats, the HTTP answers (401 for wrong credentials, 404 for the OAuth2 POST, 429 when
throttled), and hostile input: long passwords, path tricks in repository names, forged
X-Forwarded-For. Throttling is asserted by counts, with a clock the test moves."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acmebox import webapp
from acmebox.challenges import Http01Tokens
from acmebox.config import TokenAuth
from acmebox.errors import ConfigError
from acmebox.registry.htpasswd import Htpasswd
from acmebox.registry.signing import Keyring, jwk_thumbprint
from acmebox.registry.token import Scope, TokenService
from tests.helpers.clock import FakeSeconds
from tests.helpers.process import free_port, run_acmebox
from tests.helpers.registries import REGISTRIES, registry_command

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def service(tmp_path: Path) -> TokenService:
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", str(htpasswd), "alice", "pw-alice"], check=True, capture_output=True)
    subprocess.run(["htpasswd", "-Bb", str(htpasswd), "carol", "pw-carol"], check=True, capture_output=True)
    acl = tmp_path / "acl.toml"
    acl.write_text('alice = ["**"]\ncarol = ["carol/*", "shared/*"]\n')
    return TokenService.from_settings(
        TokenAuth(htpasswd, tmp_path / "state" / "token.key", tmp_path / "shared" / "token.crt", acl=acl)
    )


def decode(service: TokenService, token: str) -> dict:  # type: ignore[type-arg]
    lenient = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    return jwt.decode(token, service.key.public_key(), algorithms=["ES256"], audience="registry", issuer="acmebox",
                      options=lenient)


def rfc7638(public_key: object) -> str:
    """RFC 7638's SHA-256 thumbprint, computed from PyJWT's JWK (fixed-length coordinates)."""
    import hashlib
    import json

    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public_key))  # type: ignore[arg-type]
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


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
    # the bundle the registry trusts: the signing key's certificate first, then the next key's
    bundle = x509.load_pem_x509_certificates((tmp_path / "shared" / "token.crt").read_bytes())
    assert len(bundle) == 2
    assert bundle[0].public_key() == service.key.public_key()
    assert bundle[1].public_key() != service.key.public_key()
    # x5c: exactly the bundle's first certificate (standard base64 DER), so 2.8 and 3.x verify it
    assert header["x5c"] == [base64.b64encode(bundle[0].public_bytes(serialization.Encoding.DER)).decode()]
    # kid: the RFC 7638 thumbprint distribution 3.x computes for the bundle's keys
    assert header["kid"] == rfc7638(bundle[0].public_key()) == jwk_thumbprint(bundle[0].public_key())  # type: ignore[arg-type]
    assert len(header["kid"]) == 43 and ":" not in header["kid"]
    for name in ("token.key", "token.key.next"):
        assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600


def test_thumbprint_matches_rfc7638_for_keys_made_here() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from acmebox.registry.signing import new_key

    for _ in range(200):
        key = new_key().public_key()
        assert jwk_thumbprint(key) == rfc7638(key)
    # a key with a leading zero byte in a coordinate: distribution's form (minimal bytes), not RFC 7638's
    while True:
        odd = ec.generate_private_key(ec.SECP256R1()).public_key()
        if odd.public_numbers().x < 1 << 248:
            break
    assert jwk_thumbprint(odd) != rfc7638(odd)


def test_rotation_keeps_the_old_certificate_until_retired(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "k", tmp_path / "c", "acmebox")
    t0 = 1_900_000_000.0
    first = ring.load(now=t0)
    upcoming = ring.state().next
    old, new, until = ring.rotate(360, now=t0 + 10)
    assert (old, new, until) == (first.kid, upcoming, t0 + 370)
    after = ring.load(now=t0 + 20)
    assert after.kid == upcoming and after.next_change == t0 + 370
    kids = [jwk_thumbprint(c.public_key()) for c in x509.load_pem_x509_certificates((tmp_path / "c").read_bytes())]  # type: ignore[arg-type]
    assert kids[0] == upcoming and kids[2] == first.kid and len(kids) == 3  # current, new next, retiring
    assert ring.state().retiring == {first.kid: t0 + 370}
    ring.load(now=t0 + 371)  # past the longest token's lifetime: the old certificate leaves
    kids = [jwk_thumbprint(c.public_key()) for c in x509.load_pem_x509_certificates((tmp_path / "c").read_bytes())]  # type: ignore[arg-type]
    assert len(kids) == 2 and first.kid not in kids and ring.state().retiring == {}
    # a rotation stopped after the key was replaced, before the old next key was removed
    (tmp_path / "k.next").write_bytes((tmp_path / "k").read_bytes())
    mended = ring.load(now=t0 + 400)
    assert mended.kid == upcoming and ring.state().next not in (upcoming, first.kid)


async def test_service_signs_with_the_rotated_key(service: TokenService, tmp_path: Path) -> None:
    before = jwt.get_unverified_header(service.issue(None, [])["token"])["kid"]
    upcoming = service.keyring.state().next
    service.keyring.rotate(360)
    header = jwt.get_unverified_header(service.issue(None, [])["token"])
    assert before != upcoming == header["kid"] == service.kid
    bundle = x509.load_pem_x509_certificates((tmp_path / "shared" / "token.crt").read_bytes())
    assert header["x5c"][0] == base64.b64encode(bundle[0].public_bytes(serialization.Encoding.DER)).decode()


def test_scopes_per_identity(service: TokenService) -> None:
    everything = Scope.parse("repository:shared/x:pull,push,delete")
    assert service.grant(None, everything) == {"pull"}
    assert service.grant("alice", everything) == {"pull", "push", "delete"}
    assert service.grant("carol", everything) == {"pull", "push", "delete"}
    assert service.grant("carol", Scope.parse("repository:alice/x:pull,push")) == {"pull"}  # ACL narrows
    assert service.grant("dave", everything) == {"pull"}  # an ACL file exists: unlisted users only pull
    assert service.grant(None, Scope.parse("registry:catalog:*")) == {"*"}
    assert service.grant("alice", Scope.parse("registry:other:*")) == frozenset()
    assert Scope.parse("repository:host:5000/a/b:pull").name == "host:5000/a/b"
    with pytest.raises(ValueError):
        Scope.parse("repository:nothing")


@pytest.mark.parametrize(
    "line",
    ["bob:$apr1$abc$0123456789abcdefghij01", "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "bob:plaintext",
     "bob:abJnggxhB/yWI"],
)
def test_refused_hash_formats(tmp_path: Path, line: str) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(line + "\n")
    with pytest.raises(ConfigError, match=r"line 1 \(bob\): only bcrypt entries are accepted"):
        Htpasswd(htpasswd)


def test_refused_at_startup_with_one_line(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("bob:$apr1$abc$0123456789abcdefghij01\n")
    result = run_acmebox("run", "--once", "--domain", "a.test", "--auth-htpasswd", str(htpasswd),
                         "--certs-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"),
                         "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("acmebox: error: htpasswd file")
    assert "Traceback" not in result.stderr


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_http_answers(service: TokenService, tmp_path: Path) -> None:
    app = webapp.build_app(Http01Tokens(), lambda: (True, ""), routes=[service.install])
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
                       capture_output=True)
        assert (await client.get(url, headers=basic("dave", "pw-dave"))).status == 200
    finally:
        await client.close()


# -- hostile input ---------------------------------------------------------------------------


def make_service(tmp_path: Path, acl: str | None = None, proxies: tuple[str, ...] = (),
                 users: dict[str, str] | None = None, cost: str = "4") -> TokenService:
    tmp_path.mkdir(exist_ok=True)
    htpasswd = tmp_path / "htpasswd"
    for i, (user, password) in enumerate((users or {"alice": "pw-alice", "bob": "pw-bob"}).items()):
        subprocess.run(["htpasswd", "-B", "-C", cost, "-b", *(["-c"] if i == 0 else []), str(htpasswd), user,
                        password], check=True, capture_output=True)
    acl_path = None
    if acl is not None:
        acl_path = tmp_path / "acl.toml"
        acl_path.write_text(acl)
    svc = TokenService.from_settings(
        TokenAuth(htpasswd, tmp_path / "k", tmp_path / "c", acl=acl_path, trusted_proxies=proxies)
    )
    svc.now = FakeSeconds()
    svc.__post_init__()  # buckets on the fake clock
    return svc


async def started(svc: TokenService) -> TestClient:  # type: ignore[type-arg]
    client = TestClient(TestServer(webapp.build_app(Http01Tokens(), lambda: (True, ""), routes=[svc.install]),
                                   host="127.0.0.1"))
    await client.start_server()
    return client


URL = "/auth/token?service=registry&scope=repository:alice/app:pull,push"


def test_acl_fails_closed_and_names_follow_the_grammar(tmp_path: Path) -> None:
    svc = make_service(tmp_path, acl='alice = ["alice/*", "team/**"]\n')
    push = lambda user, name: "push" in svc.grant(user, Scope.parse(f"repository:{name}:pull,push"))  # noqa: E731
    assert push("alice", "alice/app") and push("alice", "team/a/b")
    assert not push("alice", "alice/a/b"), "* stays within one path component"
    assert not push("alice", "alice/../bob/app") and not push("alice", "alice/./x")
    assert svc.grant("alice", Scope.parse("repository:alice/../bob/app:pull,push")) == frozenset()
    assert not push("bob", "bob/app") and svc.grant("bob", Scope.parse("repository:bob/app:pull")) == {"pull"}
    for bad in ("Alice/app", "a//b", "/a", "a/", "a..b", "-a", "a" * 256, "a\x00b", "a b", "é"):
        assert svc.grant(None, Scope.parse(f"repository:{bad}:pull")) == frozenset(), bad
    assert svc.grant(None, Scope.parse("repository(plugin):a/b:pull")) == {"pull"}
    assert svc.grant(None, Scope.parse("repositoryx:a/b:pull")) == frozenset()
    # without an ACL file, every listed user may write anywhere valid
    open_svc = make_service(tmp_path / "open")
    assert open_svc.acl is None and "push" in open_svc.grant("bob", Scope.parse("repository:x/y:push"))


@pytest.mark.parametrize("content", ['alice = ["Alice/*"]', 'alice = ["a b"]', 'alice = "x"', "alice = [",
                                     "x = " + "[" * 5000 + "]" * 5000])
def test_bad_acl_files(tmp_path: Path, content: str) -> None:
    from acmebox.registry.acl import load_acl

    (tmp_path / "acl.toml").write_text(content)
    with pytest.raises(ConfigError) as e:
        load_acl(tmp_path / "acl.toml")
    assert "\n" not in str(e.value)


def test_htpasswd_not_utf8_and_bad_lines_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"\xff\xfe\x00alice:$2y$05$" + b"\xff" * 40 + b"\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        Htpasswd(htpasswd)
    subprocess.run(["htpasswd", "-Bbc", "-C", "4", str(htpasswd), "alice", "pw"], check=True, capture_output=True)
    users = Htpasswd(htpasswd)
    with htpasswd.open("a") as f:
        f.write("mallory:plaintext\n")
    for _ in range(5):
        users.refresh()
    assert len([r for r in caplog.records if "only bcrypt entries" in r.getMessage()]) == 1
    assert users.check("alice", b"pw"), "the previous users stay"


def test_passwords_as_htpasswd_hashes_them(tmp_path: Path) -> None:
    long_pw = "x" * 72 + "-the-rest-is-ignored"
    svc = make_service(tmp_path, users={"alice": long_pw, "bob": "pw-bob"})
    # Apache's htpasswd -B hashed only the first 72 bytes; so do we, instead of bcrypt 5's ValueError
    assert svc.htpasswd.check("alice", long_pw.encode())
    assert svc.htpasswd.check("alice", b"x" * 72 + b"anything")
    assert not svc.htpasswd.check("alice", b"x" * 71)
    assert not svc.htpasswd.check("alice", b"p" * 5000) and not svc.htpasswd.check("nobody", b"p" * 5000)
    assert not svc.htpasswd.check("bob", b"pw-bob\x00") and not svc.htpasswd.check("bob", b"")


def test_unknown_users_cost_what_known_ones_cost(tmp_path: Path) -> None:
    svc = make_service(tmp_path, users={"alice": "a", "bob": "b"}, cost="4")
    subprocess.run(["htpasswd", "-B", "-C", "6", "-b", str(tmp_path / "htpasswd"), "carol", "c"], check=True,
                   capture_output=True)
    svc.htpasswd.refresh()
    assert not svc.htpasswd.check("mallory", b"guess")
    dummy = svc.htpasswd._dummies
    assert list(dummy) == [6] and dummy[6].startswith(b"$2b$06$"), "the dummy hash has the file's highest cost"


async def test_long_and_odd_credentials_never_5xx(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    client = await started(svc)
    try:
        for user, pw in (("alice", "p" * 73), ("alice", "p" * 5000), ("nobody", "p" * 5000), ("alice", "a\x00b"),
                         ("alice", ""), ("é", "x")):
            assert (await client.get(URL, headers=basic(user, pw))).status == 401
        for raw in ("Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic " + "A" * 6000):
            assert (await client.get(URL, headers={"Authorization": raw})).status == 401
    finally:
        await client.close()


async def test_throttling_per_client_and_per_user(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from acmebox.registry import token as rt

    svc = make_service(tmp_path, proxies=("127.0.0.1",))
    clock = svc.now
    assert isinstance(clock, FakeSeconds)
    client = await started(svc)
    try:
        def xff(addr: str, user: str = "alice", pw: str = "wrong") -> dict[str, str]:
            return {**basic(user, pw), "X-Forwarded-For": addr}

        codes = [(await client.get(URL, headers=xff("198.51.100.1"))).status for _ in range(rt.CLIENT_BURST + 5)]
        assert codes == [401] * rt.CLIENT_BURST + [429] * 5
        throttled = await client.get(URL, headers=xff("198.51.100.1", pw="pw-alice"))
        assert throttled.status == 429, "a throttled client's password is not even checked"
        assert int(throttled.headers["Retry-After"]) == 6
        # a forged left-most X-Forwarded-For entry changes nothing: nginx appends the real one
        assert (await client.get(URL, headers=xff("203.0.113.9, 198.51.100.1"))).status == 429
        # another client is not affected, and the right password works there
        assert (await client.get(URL, headers=xff("198.51.100.2", pw="pw-alice"))).status == 200
        clock.t += 6
        assert (await client.get(URL, headers=xff("198.51.100.1"))).status == 401  # one attempt refilled
        assert (await client.get(URL, headers=xff("198.51.100.1"))).status == 429

        # per user: attempts from many addresses lock alice, not bob
        clock.t += 3600  # every bucket full again
        codes = [(await client.get(URL, headers=xff(f"192.0.2.{i}"))).status for i in range(rt.USER_BURST + 3)]
        assert codes == [401] * rt.USER_BURST + [429] * 3
        assert (await client.get(URL, headers=xff("192.0.2.200", pw="pw-alice"))).status == 429
        assert (await client.get(URL, headers=xff("192.0.2.200", user="bob", pw="pw-bob"))).status == 200

        # IPv6 clients count per /64
        for i in range(rt.CLIENT_BURST):
            await client.get(URL, headers=xff(f"2001:db8::{i + 1}", user="bob"))
        assert (await client.get(URL, headers=xff("2001:db8::ffff", user="bob"))).status == 429

        # correct logins give their attempt back: no limit for a user who knows the password
        codes = [(await client.get(URL, headers=xff("198.51.100.3", "bob", "pw-bob"))).status for _ in range(40)]
        assert codes == [200] * 40

        # concurrent guesses count before bcrypt runs: exactly a burst gets through
        clock.t += 3600
        many = await asyncio.gather(*(client.get(URL, headers=xff("198.51.100.4", "bob")) for _ in range(50)))
        assert sorted(r.status for r in many) == [401] * rt.CLIENT_BURST + [429] * (50 - rt.CLIENT_BURST)
    finally:
        await client.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "acmebox.registry.token"]
    assert any("from 198.51.100.1" in line for line in lines), "failures are logged with the client's address"
    # at a bounded rate: 10 lines per minute; the test's clock went through three minutes
    assert len(lines) == 3 * 10 and any("similar message(s) suppressed" in line for line in lines)
    assert not any("pw-alice" in line for line in lines)


async def test_concurrent_valid_logins_from_one_address_all_pass_while_a_guesser_is_throttled(tmp_path: Path) -> None:
    """A CI farm behind one NAT address: 64 logins at once, 8 users, every one gets its token
    (only failed logins use the address's attempts up); a guesser from there still gets its
    burst of checks and then 429, also when it guesses concurrently with the valid users."""
    from acmebox.registry import token as rt

    users = {f"ci{i}": f"pw-ci{i}" for i in range(8)}
    svc = make_service(tmp_path, proxies=("127.0.0.1",), users=users)
    client = await started(svc)
    try:
        def login(i: int, addr: str, password: str | None = None) -> Any:
            user = f"ci{i % 8}"
            return client.get(URL, headers={**basic(user, password or users[user]), "X-Forwarded-For": addr})

        many = await asyncio.gather(*(login(i, "198.51.100.7") for i in range(64)))
        assert [r.status for r in many] == [200] * 64
        codes = [(await login(0, "198.51.100.7", f"guess-{i}")).status for i in range(rt.CLIENT_BURST + 3)]
        assert codes == [401] * rt.CLIENT_BURST + [429] * 3
        throttled = await login(0, "198.51.100.7")
        assert throttled.status == 429, "a password remembered as right does not get past the throttle"

        # guesses mixed with valid logins, all at once, from a fresh address: still exactly a burst
        # of guesses is checked; no login gets a 5xx
        mixed = await asyncio.gather(*(login(i, "198.51.100.8", f"guess-{i}") for i in range(40)),
                                     *(login(i, "198.51.100.8") for i in range(64)))
        guesses, valid = [r.status for r in mixed[:40]], [r.status for r in mixed[40:]]
        assert guesses.count(401) == rt.CLIENT_BURST and set(guesses) == {401, 429}
        assert set(valid) <= {200, 429}
    finally:
        await client.close()


async def test_logins_waiting_for_checks_are_capped(tmp_path: Path) -> None:
    """More logins than MAX_WAITING behind checks under way: the extra ones get 503 at once. The
    bcrypt pool is held busy (two blocking jobs in its two threads) until every login is in."""
    import threading

    from aiohttp import TCPConnector

    from acmebox.registry import token as rt

    svc = make_service(tmp_path, proxies=("127.0.0.1",))
    app = webapp.build_app(Http01Tokens(), lambda: (True, ""), routes=[svc.install])
    client = TestClient(TestServer(app, host="127.0.0.1"), connector=TCPConnector(limit=0))
    await client.start_server()
    release = threading.Event()
    try:
        for _ in range(rt.BCRYPT_THREADS):
            svc._pool.submit(release.wait, 60)
        extra = 40
        headers = {**basic("alice", "wrong"), "X-Forwarded-For": "198.51.100.9"}
        tasks = [asyncio.ensure_future(client.get(URL, headers=headers))
                 for _ in range(rt.CLIENT_BURST + rt.MAX_WAITING + extra)]
        for _ in range(600):
            if svc._waiting_now == rt.MAX_WAITING and sum(t.done() for t in tasks) == extra:
                break
            await asyncio.sleep(0.05)
        assert svc._waiting_now == rt.MAX_WAITING
        busy = [t.result() for t in tasks if t.done()]
        assert [r.status for r in busy] == [503] * extra and all(r.headers["Retry-After"] for r in busy)
        release.set()
        codes = sorted(r.status for r in await asyncio.gather(*tasks))
        assert codes == [401] * rt.CLIENT_BURST + [429] * rt.MAX_WAITING + [503] * extra
    finally:
        release.set()
        await client.close()


async def test_a_right_password_is_remembered_briefly_and_never_kept(tmp_path: Path) -> None:
    from acmebox.registry import htpasswd as hp

    svc = make_service(tmp_path)
    clock = FakeSeconds()
    svc.htpasswd.now = clock
    client = await started(svc)
    try:
        assert (await client.get(URL, headers=basic("alice", "pw-alice"))).status == 200
        assert svc.htpasswd.verified("alice", b"pw-alice")
        assert not svc.htpasswd.verified("alice", b"pw-alicE") and not svc.htpasswd.verified("bob", b"pw-alice")
        assert all(b"pw-alice" not in mac for mac, _ in svc.htpasswd._verified.values()), "no password is kept"
        clock.t += hp.VERIFIED_TTL
        assert not svc.htpasswd.verified("alice", b"pw-alice"), "only for VERIFIED_TTL seconds"

        # a changed password ends what was remembered at once: the old one is refused
        assert (await client.get(URL, headers=basic("alice", "pw-alice"))).status == 200
        subprocess.run(["htpasswd", "-B", "-C", "4", "-b", str(svc.htpasswd.path), "alice", "pw-new"], check=True,
                       capture_output=True)
        assert (await client.get(URL, headers=basic("alice", "pw-alice"))).status == 401
        assert (await client.get(URL, headers=basic("alice", "pw-new"))).status == 200
    finally:
        await client.close()


async def test_forwarded_for_is_ignored_from_untrusted_peers(tmp_path: Path) -> None:
    from acmebox.registry import token as rt

    svc = make_service(tmp_path)  # no trusted proxy
    client = await started(svc)
    try:
        for i in range(rt.CLIENT_BURST):
            assert (await client.get(URL, headers={**basic("alice", "x"), "X-Forwarded-For": f"192.0.2.{i}"})).status \
                == 401
        assert (await client.get(URL, headers={**basic("bob", "x"), "X-Forwarded-For": "192.0.2.99"})).status == 429
    finally:
        await client.close()


async def test_trusted_proxy_by_name_and_network() -> None:
    from acmebox.registry.proxies import TrustedProxies

    proxies = TrustedProxies(["localhost", "10.0.0.0/8"])
    assert await proxies.client("127.0.0.1", ["192.0.2.1"]) == "192.0.2.1"
    assert await proxies.client("10.1.2.3", ["192.0.2.1, 10.9.9.9"]) == "192.0.2.1"
    assert await proxies.client("192.0.2.7", ["10.0.0.1"]) == "192.0.2.7"
    assert await proxies.client("127.0.0.1", ["garbage"]) == "127.0.0.1"


def test_throttle_memory_is_bounded() -> None:
    from acmebox.limits import KeyedBuckets

    clock = FakeSeconds()
    buckets = KeyedBuckets(burst=2, rate=0.1, max_keys=100, now=clock)
    for i in range(10_000):
        buckets.take(f"client-{i}")
    assert len(buckets) == 100
    buckets.take("x")
    buckets.take("x")
    assert buckets.wait("x") == pytest.approx(10)
    clock.t += 10
    assert buckets.wait("x") == 0


# -- against the real registry ---------------------------------------------------------------


def registry_upload(port: int, repo: str, token: str | None) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(params=REGISTRIES)
def real_registry(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[TokenService, int, str]]:
    """A real registry (distribution 3.x, then Debian's 2.8) trusting a token service whose ACL
    limits alice to alice/*."""
    import time
    import urllib.error
    import urllib.request

    svc = make_service(tmp_path / "tok", acl='alice = ["alice/*"]\n')
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"""version: 0.1
log: {{level: warn}}
storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}
auth:
  token: {{realm: "http://127.0.0.1:1/auth/token", service: registry, issuer: acmebox,
           rootcertbundle: {tmp_path / 'tok' / 'c'}}}
http: {{addr: "127.0.0.1:{port}"}}
""")
    with (tmp_path / "registry.log").open("w") as log_file:
        proc = subprocess.Popen(registry_command(request.param, config), stdout=log_file, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            except urllib.error.HTTPError:
                break  # 401: it is up
            except OSError:
                time.sleep(0.1)
        yield svc, port, request.param
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.e2e  # the real registries
def test_each_registry_accepts_the_tokens_header(real_registry: tuple[TokenService, int, str]) -> None:
    """x5c (the bundle's certificate) is what 2.8 and 3.x both verify; the RFC 7638 kid alone
    is enough for 3.x only (2.8 looks keys up by libtrust ID). The next key, published in the
    bundle before the registry started, is trusted already: a rotation needs no restart."""
    svc, port, version = real_registry
    body = svc.issue("alice", [Scope.parse("repository:alice/app:pull,push")])
    header, claims = jwt.get_unverified_header(body["token"]), decode(svc, body["token"])
    assert set(header) == {"alg", "typ", "kid", "x5c"}

    def signed(key: object, **fields: object) -> str:
        return jwt.encode(claims, key, "ES256", headers=fields)  # type: ignore[arg-type]

    assert registry_upload(port, "alice/app", body["token"]) == 202
    assert registry_upload(port, "alice/app", signed(svc.key, x5c=header["x5c"])) == 202
    assert registry_upload(port, "alice/app", signed(svc.key, kid=header["kid"])) == (202 if version == "3" else 401)
    ring = svc.keyring
    upcoming = ring.state().next
    ring.rotate(360)
    rotated = svc.issue("alice", [Scope.parse("repository:alice/app:pull,push")])["token"]
    assert jwt.get_unverified_header(rotated)["kid"] == upcoming
    assert registry_upload(port, "alice/app", rotated) == 202, "the pre-published key is trusted without a restart"
    assert registry_upload(port, "alice/app", body["token"]) == 202, "tokens of the retiring key still work"
    # the key published by this rotation came after the registry started: trusted after a restart only
    from acmebox.registry import signing

    url = f"http://127.0.0.1:{port}"
    bundle = {jwk_thumbprint(c.public_key()): c for c in x509.load_pem_x509_certificates(ring.cert_path.read_bytes())}  # type: ignore[arg-type]
    nxt = signing._read_key(ring.next_path)
    assert not signing.registry_trusts(url, nxt, bundle[ring.state().next], "registry", "acmebox")
    assert signing.registry_trusts(url, svc.key, bundle[svc.kid], "registry", "acmebox")


@pytest.mark.e2e  # the real registries
def test_the_registry_honours_only_what_was_granted(real_registry: tuple[TokenService, int, str]) -> None:
    import hashlib
    import hmac
    import json
    import time

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    svc, port, _ = real_registry
    token = lambda user, scope: svc.issue(user, [Scope.parse(scope)])["token"]  # noqa: E731
    assert registry_upload(port, "alice/app", token("alice", "repository:alice/app:pull,push")) == 202
    assert registry_upload(port, "alice/app", token(None, "repository:alice/app:pull,push")) == 401
    # outside the ACL, unlisted, or a name outside the grammar: no grant, and the registry agrees
    assert registry_upload(port, "bob/app", token("alice", "repository:bob/app:pull,push")) == 401
    assert registry_upload(port, "bob/app", token("bob", "repository:bob/app:pull,push")) == 401
    trav = token("alice", "repository:alice/../bob/app:push")
    assert decode(svc, trav)["access"] == []
    assert registry_upload(port, "alice/../bob/app", trav) in (401, 404)

    good = token("alice", "repository:alice/app:pull,push")
    hdr = jwt.get_unverified_header(good)
    payload = decode(svc, good)
    evil = dict(payload, access=[{"type": "repository", "name": "bob/app", "actions": ["pull", "push"]}])
    cert_pem = (svc.htpasswd.path.parent / "c").read_bytes()
    pub = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki_pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    spki_der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    def unsigned(h: dict, p: dict) -> str:  # type: ignore[type-arg]
        return b64(json.dumps(h).encode()) + "." + b64(json.dumps(p).encode()) + "."

    def hs256(secret: bytes, p: dict) -> str:  # type: ignore[type-arg]
        msg = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": hdr["kid"]}).encode()) + "." + \
            b64(json.dumps(p).encode())
        return msg + "." + b64(hmac.new(secret, msg.encode(), hashlib.sha256).digest())

    attacker = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")])
    evil_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(attacker.public_key())
                 .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1000))
                 .not_valid_after(NOW + dt.timedelta(days=1000)).sign(attacker, hashes.SHA256()))
    x5c = base64.b64encode(evil_cert.public_bytes(serialization.Encoding.DER)).decode()
    parts = good.split(".")
    now = int(time.time())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    kid = {"kid": hdr["kid"], "x5c": hdr["x5c"]}  # the real header: refused for the claims alone
    forged = {
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": hdr["kid"]}, evil),
        "alg none without kid": unsigned({"alg": "none", "typ": "JWT"}, evil),
        "HS256 keyed with token.crt": hs256(cert_pem, evil),
        "HS256 keyed with the SPKI PEM": hs256(spki_pem, evil),
        "HS256 keyed with the SPKI DER": hs256(spki_der, evil),
        "foreign ES256 key with our kid": jwt.encode(evil, attacker, "ES256", headers={"kid": hdr["kid"]}),
        "foreign ES256 key with x5c": jwt.encode(evil, attacker, "ES256", headers={"x5c": [x5c]}),
        "foreign ES256 key with our x5c": jwt.encode(evil, attacker, "ES256", headers=kid),
        "foreign ES256 key with jwk": jwt.encode(evil, attacker, "ES256", headers={"jwk": jwk}),
        "payload edited": parts[0] + "." + b64(json.dumps(evil).encode()) + "." + parts[2],
        "signature stripped": parts[0] + "." + parts[1] + ".",
        "expired, real key": jwt.encode(dict(payload, exp=now - 120, nbf=now - 400, iat=now - 400), svc.key, "ES256",
                                        headers=kid),
        "wrong audience, real key": jwt.encode(dict(payload, aud="other"), svc.key, "ES256", headers=kid),
        "wrong issuer, real key": jwt.encode(dict(payload, iss="evil"), svc.key, "ES256", headers=kid),
    }
    assert len(forged) == 14
    answers = {label: registry_upload(port, "bob/app" if "real key" not in label else "alice/app", tok)
               for label, tok in forged.items()}
    assert answers == dict.fromkeys(forged, 401)
