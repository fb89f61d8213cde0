"""The input rules of acmebox/config.py as tables: each rule alone (pure, no service, no network
beyond binding a loopback port), and `Config.from_sources` applying them all. The end-to-end
refusals (one line, exit 2, nothing written) are in test_bad_input.py and test_cli_fuzz.py."""

from __future__ import annotations

import datetime as dt
import logging
import re
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acmebox.config import (
    LE_PRODUCTION,
    LE_STAGING,
    CertSpec,
    Config,
    HostPort,
    ReloadSpec,
    Sources,
    TokenAuth,
    check_ca_bundle,
    check_dir,
    check_directory_url,
    check_listen,
    check_profile,
    merged,
    warn_if_not_canonical,
)
from acmebox.errors import ConfigError
from acmebox.reload import BY_KIND, ReloadTarget

ONE = (CertSpec.build(["a.example.com"]),)


def refused(expected: str) -> Any:
    return pytest.raises(ConfigError, match=re.escape(expected))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://acme.example/directory", None),
        ("http://127.0.0.1:14000/dir", None),
        ("https://[::1]:14000/dir", None),
        ("https://", "bad directory URL 'https://'"),
        ("ftp://127.0.0.1/d", "bad directory URL"),
        ("https://x:99999/dir", "bad directory URL"),
        ("https://127.0.0.1:x/d", "bad directory URL"),
        ("https://a b/dir", "bad directory URL"),
        ("not a url", "bad directory URL"),
        ("", "bad directory URL"),
    ],
)
def test_directory_url(url: str, expected: str | None) -> None:
    """One rule, whether the URL came from a flag or a Config was built another way."""
    if expected is None:
        check_directory_url(url)
        assert Config(certs=ONE, email=None, directory=url).directory == url
        return
    with refused(expected):
        check_directory_url(url)
    with refused(expected):
        Config(certs=ONE, email=None, directory=url)


@pytest.mark.parametrize(
    ("profile", "expected"),
    [(None, None), ("", None), ("shortlived", None), ("tls-server.v1_2", None), ("a b", "bad --profile 'a b'"),
     ("['a']", "bad --profile"), ("-x", "bad --profile"), ("x" * 65, "bad --profile")],
)
def test_profile(profile: str | None, expected: str | None) -> None:
    if expected is None:
        check_profile(profile)
    else:
        with refused(expected):
            check_profile(profile)


def test_directories(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    check_dir(tmp_path, "certs dir")
    check_dir(tmp_path / "missing", "certs dir")  # made later
    with refused(f"certs dir {a_file} is not usable: not a directory"):
        check_dir(a_file, "certs dir")
    with refused(f"state dir {a_file} is not usable"):
        Config(certs=ONE, email=None, state_dir=a_file)


def self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_ca_bundle(tmp_path: Path) -> None:
    good, garbage = tmp_path / "ca.pem", tmp_path / "garbage.pem"
    good.write_bytes(self_signed_pem())
    garbage.write_text("not a certificate\n")
    check_ca_bundle(None)
    check_ca_bundle(good)
    assert Config(certs=ONE, email=None, ca_bundle=good).ca_bundle == good
    for path, expected in [(tmp_path / "missing.pem", "does not exist or is not a file"),
                           (tmp_path, "does not exist or is not a file"),
                           (garbage, "holds no usable PEM certificate")]:
        with refused(expected):
            check_ca_bundle(path)
        with refused(expected):
            Config(certs=ONE, email=None, ca_bundle=path)


def test_listen_address() -> None:
    with refused("bad listen address '0.0.0.0:0': port 0"):
        check_listen(HostPort.parse(":0"))
    with refused("bad listen address"):  # a host name getaddrinfo refuses before any lookup
        check_listen(HostPort("bad\udcffname", 8080))
    with refused("cannot listen on 192.0.2.1:8080"):  # TEST-NET-1: no address of this host
        check_listen(HostPort("192.0.2.1", 8080))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with refused(f"cannot listen on 127.0.0.1:{port}"):
            check_listen(HostPort("127.0.0.1", port))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0.0.0.0:8080", HostPort("0.0.0.0", 8080)), (":80", HostPort("0.0.0.0", 80)),
     ("[::1]:443", HostPort("::1", 443)), ("nope", None), ("127.0.0.1:99999", None), ("127.0.0.1:-1", None),
     ("", None), ("[::1]:x", None)],
)
def test_host_port(raw: str, expected: HostPort | None) -> None:
    if expected is None:
        with refused(f"bad listen address {raw!r}: want HOST:PORT"):
            HostPort.parse(raw)
    else:
        assert HostPort.parse(raw) == expected


def test_merged_keeps_one_certificate_per_set_of_names() -> None:
    ab = CertSpec.build(["a.example.com", "b.example.com"])
    ba = CertSpec.build(["b.example.com", "a.example.com"])
    c = CertSpec.build(["c.example.com"])
    assert merged([ab, c, ba, c]) == [ab, c]
    with refused("no certificate configured"):
        merged([])


@pytest.mark.parametrize(
    ("typed", "warned"),
    [("Registry.Example.COM", True), ("registry.example.com.", True), (" registry.example.com ", False),
     ("registry.example.com", False), ("other.example.com", False), ("bad..name", False), (None, False)],
)
def test_compose_name_not_canonical(typed: str | None, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="acmebox"):
        warn_if_not_canonical(typed, ("registry.example.com",))
    assert ("written to live/registry.example.com/" in caplog.text) is warned


@pytest.mark.parametrize(
    ("kind", "target", "expected"),
    [
        ("none", None, None),
        ("file", "/run/nginx/generation", None),
        ("signal", "1234", None),
        ("signal", "/run/nginx.pid", None),
        ("command", "nginx -s reload", None),
        ("docker", "label=acmebox.reload=nginx", None),
        ("kill", "1", "unknown reload kind 'kill'; choose one of file, docker, signal, command, none"),
        ("file", None, "--reload file needs --reload-target (the generation file's path)"),
        ("docker", "", "--reload docker needs --reload-target (container name or label=KEY=VALUE)"),
        ("signal", None, "--reload signal needs --reload-target (a PID or PID file)"),
        ("command", None, "--reload command needs --reload-target (a command line)"),
        ("signal", "/no/such/dir/nginx.pid", "is neither a PID nor a PID file path"),
        ("file", "relative/generation", "the generation file needs an absolute path"),
    ],
)
def test_reload_spec(kind: str, target: str | None, expected: str | None) -> None:
    if expected is not None:
        with pytest.raises(ConfigError) as e:
            ReloadSpec(kind, target)
        assert expected in str(e.value)
        return
    spec = ReloadSpec(kind, target)
    action = ReloadTarget.of(spec)
    assert action.kind == kind and action.target == (target or "")


def test_every_reload_kind_has_its_action() -> None:
    assert set(BY_KIND) == set(ReloadSpec.KINDS)
    assert all(cls.kind == kind for kind, cls in BY_KIND.items())


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("# no users yet\n")
    return path


def test_token_auth_flags_need_an_htpasswd_file(tmp_path: Path) -> None:
    assert TokenAuth.build(None, tmp_path) is None
    given_alone = [({"acl": tmp_path}, "--auth-acl"), ({"key": tmp_path}, "--auth-key"),
                   ({"cert": tmp_path}, "--auth-cert"), ({"trusted_proxies": ()}, "--auth-trusted-proxy")]
    for given, flag in given_alone:
        with refused(f"{flag} needs --auth-htpasswd"):
            TokenAuth.build(None, tmp_path, **given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"ttl": 29}, "--auth-ttl must be between 30 and 86400 seconds"),
        ({"ttl": 86401}, "--auth-ttl must be between 30 and 86400 seconds"),
        ({"service": ""}, "bad --auth-service ''"),
        ({"service": " registry"}, "bad --auth-service ' registry'"),
        ({"issuer": "a\nb"}, "bad --auth-issuer"),
        ({"issuer": "x" * 256}, "bad --auth-issuer"),
        ({"trusted_proxies": ("nginx", "10.0.0.0/33")}, "bad --auth-trusted-proxy entry '10.0.0.0/33'"),
        ({"acl": Path("/no/such/acl.toml")}, "ACL file /no/such/acl.toml"),
        ({"key": Path("/etc/hostname")}, "token signing key /etc/hostname is not a readable private key"),
    ],
)
def test_token_auth_rules(htpasswd: Path, tmp_path: Path, given: dict[str, object], expected: str) -> None:
    with refused(expected):
        TokenAuth.build(htpasswd, tmp_path, **given)  # type: ignore[arg-type]


def test_token_auth_defaults_and_files(htpasswd: Path, tmp_path: Path) -> None:
    auth = TokenAuth.build(htpasswd, tmp_path / "state", ttl=30, trusted_proxies=("nginx", "10.0.0.0/8"))
    assert auth == TokenAuth(htpasswd, tmp_path / "state" / "token-signing.key", tmp_path / "state" / "token.crt",
                             ttl=30, trusted_proxies=("nginx", "10.0.0.0/8"))
    assert not (tmp_path / "state").exists(), "checking writes nothing"
    with refused(f"htpasswd file {tmp_path / 'none'}"):
        TokenAuth.build(tmp_path / "none", tmp_path)


# -- Config.from_sources: every rule applied, in one place -------------------------------------

BASE = Sources(cert_groups=(("a.example.com",),), probe_listen=False)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"staging": True, "directory": "https://x.test/d"}, "--staging and --directory are exclusive"),
        ({"force_renew": True}, "--force-renew needs --once"),
        ({"cert_groups": ()}, "no domain given"),
        ({"cert_groups": ((),)}, "no domain given"),
        ({"cert_groups": (("a.example.com",), ("a.example.com", "b.example.com"))}, "is in two certificates"),
        ({"cert_groups": (("bad..name",),)}, "malformed domain name 'bad..name'"),
        ({"key_type": "dsa"}, "unknown key type 'dsa'"),
        ({"profile": "a b"}, "bad --profile 'a b'"),
        ({"directory": "https://"}, "bad directory URL 'https://'"),
        ({"email": "two@@example.com"}, "bad email address 'two@@example.com'"),
        ({"listen": "nope"}, "bad listen address 'nope'"),
        ({"listen": ":0", "probe_listen": True}, "bad listen address '0.0.0.0:0': port 0"),
        ({"reload": "file", "reload_target": "rel"}, "the generation file needs an absolute path"),
        ({"reload_verify": "nope"}, "bad --reload-verify address 'nope'"),
        ({"self_check_via": "x"}, "bad --self-check-via address 'x'"),
        ({"key_mode": "0644"}, "--key-mode 0644: a private key must not be accessible to others"),
        ({"key_group": "no-such-group-here"}, "--key-group 'no-such-group-here': no such group here"),
        ({"eab_kid": "k"}, "needs both --eab-kid and --eab-hmac-key"),
        ({"max_concurrent_orders": 0}, "--max-concurrent-orders must be between 1 and 1000, not 0"),
        ({"auth_trusted_proxies": ("10.0.0.1",)}, "--auth-trusted-proxy needs --auth-htpasswd"),
        ({"auth_ttl": 5, "auth_htpasswd": Path("/dev/null")}, "--auth-ttl must be between"),
        ({"config_file": Path("/no/such/certs.toml")}, "config file /no/such/certs.toml"),
    ],
)
def test_from_sources_refuses(change: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_sources(replace(BASE, **change))  # type: ignore[arg-type]
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_from_sources_builds(tmp_path: Path) -> None:
    toml = tmp_path / "certs.toml"
    toml.write_text('email = "ops@example.com"\n[[certificate]]\nnames = ["B.example.com", "a.example.com"]\n'
                    'key_type = "ec384"\n[[certificate]]\nnames = ["c.example.com"]\n')
    raw = replace(BASE, cert_groups=(("A.example.com.", "b.example.com"), (), ("a.example.com", "b.example.com")),
                  config_file=toml, key_group="0", reload_verify="127.0.0.1:443", profile="shortlived")
    config = Config.from_sources(raw)
    assert [(s.names, s.key_type, s.profile) for s in config.certs] == [
        (("a.example.com", "b.example.com"), "ec256", "shortlived"),
        (("c.example.com",), "ec256", "shortlived"),
    ]
    assert config.email == "ops@example.com" and config.directory == LE_PRODUCTION
    assert (config.key_group, config.key_mode) == (0, 0o640)  # a group given: 0640 unless --key-mode says
    assert config.reload == ReloadSpec("none") and config.reload_verify == HostPort("127.0.0.1", 443)
    assert config.token_auth is None and config.listen == HostPort("0.0.0.0", 8080)
    staging = Config.from_sources(replace(BASE, staging=True, email="mailto:ops@example.com"))
    assert staging.directory == LE_STAGING and staging.email == "ops@example.com"
