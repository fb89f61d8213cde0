"""Bad input: one clear line, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bcrypt
import pytest

from tests.helpers.other_user import as_user
from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import acmebox_env, assert_usage_error, run_acmebox


@pytest.mark.parametrize(
    ("domains", "expected"),
    [
        (["*.registry.test"], "wildcard domain '*.registry.test': HTTP-01 cannot validate wildcards"),
        (["bad..name.test"], "malformed domain name 'bad..name.test'"),
        (["-leading.test"], "malformed domain name '-leading.test'"),
        (["under_score.test"], "malformed domain name 'under_score.test'"),
        (["localhost"], "malformed domain name 'localhost'"),
        (["a" * 64 + ".test"], "malformed domain name"),
        (["192.0.2.7"], "'192.0.2.7' is an IP address"),
        (["[2001:db8::1]"], "is an IP address"),
        (["registry.test", "Registry.Test."], "duplicate domain name 'registry.test'"),
        ([], "no domain given"),
    ],
)
def test_bad_domains(tmp_path: Path, domains: list[str], expected: str) -> None:
    args = [f"--domain={d}" for d in domains]
    result = run_acmebox("run", "--once", *args, "--certs-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"))
    assert_usage_error(result, expected)
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "email", ["not-an-email", "two@@example.com", "a@b", "a b@example.com", "x@example.com,y@example.com"]
)
def test_bad_email(tmp_path: Path, email: str) -> None:
    result = run_acmebox("run", "--once", "--domain", "registry.test", "--email", email,
                         "--certs-dir", str(tmp_path / "c"))
    assert_usage_error(result, f"bad email address {email!r}")


def test_flag_errors(tmp_path: Path) -> None:
    assert_usage_error(
        run_acmebox("run", "--domain", "a.test", "--key-type", "dsa"), "argument --key-type: invalid choice"
    )
    assert_usage_error(run_acmebox("run", "--domain", "a.test", "--listen", "nope"), "bad listen address 'nope'")
    assert_usage_error(
        run_acmebox("run", "--domain", "a.test", "--ca-bundle", str(tmp_path / "missing.pem")),
        f"CA bundle {tmp_path / 'missing.pem'} does not exist",
    )
    assert_usage_error(
        run_acmebox("run", "--domain", "a.test", "--eab-kid", "k"), "needs both --eab-kid and --eab-hmac-key"
    )
    assert_usage_error(run_acmebox("run", "--domain", "a.test", "--staging", "--directory", "https://x.test/d"),
                       "--staging and --directory are exclusive")
    assert_usage_error(run_acmebox("frobnicate"), "invalid choice: 'frobnicate'")


@pytest.mark.e2e
def test_unusable_certs_dir(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for bad in (a_file, Path("/proc/acmebox-certs")):
        args = pebble_args(pebble, dirs)
        args[args.index("--certs-dir") + 1] = str(bad)
        result = run_acmebox("run", "--once", "--domain", "registry.test", *args)
        assert_usage_error(result, f"certs dir {bad} is not usable")
    assert a_file.read_text() == "not a directory"


@pytest.mark.e2e
def test_unreachable_ca_and_not_a_directory(pebble: Pebble, dirs: Dirs) -> None:
    args = pebble_args(pebble, dirs)
    args[args.index("--directory") + 1] = "https://127.0.0.1:1/dir"
    assert_usage_error(run_acmebox("run", "--once", "--domain", "a.test", *args),
                       "https://127.0.0.1:1/dir: cannot reach the CA: [Errno 111] Connection refused")

    args[args.index("--directory") + 1] = pebble.management + "/roots/0"
    assert_usage_error(run_acmebox("run", "--once", "--domain", "a.test", *args),
                       f"{pebble.management}/roots/0 is not an ACME directory")

    untrusted = pebble_args(pebble, dirs)
    untrusted.remove("--ca-bundle")
    untrusted.remove(str(pebble.ca_bundle))
    assert_usage_error(run_acmebox("run", "--once", "--domain", "a.test", *untrusted), "certificate verify failed")
    assert not list(dirs.state.glob("accounts/**/key.pem")), "no account key for a CA we never reached"


def test_operator_commands_without_a_service(tmp_path: Path) -> None:
    assert_usage_error(run_acmebox("renew", "--state-dir", str(tmp_path)), "no acmebox service is running")
    assert_usage_error(
        run_acmebox("revoke", "x.test", "--certs-dir", str(tmp_path), "--state-dir", str(tmp_path)),
        "no issued certificate named x.test",
    )
    status = run_acmebox("status", "--certs-dir", str(tmp_path / "none"), "--state-dir", str(tmp_path))
    assert status.returncode == 0 and "no certificates in" in status.stdout


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--key-mode", "0644"], "--key-mode 0644: a private key must not be accessible to others"),
        (["--key-mode", "0604"], "must not be accessible to others"),
        (["--key-mode", "0750"], "--key-mode 0750: want read (and write) bits for owner and group only"),
        (["--key-mode", "0040"], "want read (and write) bits for owner and group only"),
        (["--key-mode", "rw-r-----"], "bad --key-mode 'rw-r-----': want octal permissions"),
        (["--key-group", "no-such-group-here"], "--key-group 'no-such-group-here': no such group here"),
    ],
)
def test_bad_key_permission_flags(tmp_path: Path, flags: list[str], expected: str) -> None:
    result = run_acmebox("run", "--once", "--domain", "a.test", *flags, "--certs-dir", str(tmp_path / "c"),
                         "--state-dir", str(tmp_path / "s"))
    assert_usage_error(result, expected)
    assert not (tmp_path / "c").exists()


def test_key_group_acmebox_may_not_use() -> None:
    """Not root and not in the group: refused at start, before any order, not at the first save."""
    top = Path(tempfile.mkdtemp(prefix="acmebox-keygroup-", dir="/tmp"))  # pytest's tmp is root-only
    top.chmod(0o777)
    try:
        _refused_as_nobody(top)
    finally:
        shutil.rmtree(top)


def _refused_as_nobody(top: Path) -> None:
    command = as_user(65534, 65534, [sys.executable, "-m", "acmebox", "run", "--once", "--domain", "a.test",
                                     "--key-group", "101", "--certs-dir", str(top / "c"), "--state-dir", str(top / "s"),
                                     "--directory", "https://127.0.0.1:1/dir"])
    result = subprocess.run(command, capture_output=True, text=True, env=acmebox_env(), cwd=top, timeout=60)
    assert_usage_error(result, "--key-group 101: acmebox (uid 65534) may not give files to that group")


# -- strictness: every refusal is one line, exit 2, before anything is written ---------------

UNREACHABLE = "https://127.0.0.1:1/dir"


def refused_before_writing(tmp_path: Path, *args: str, expected: str, env: dict[str, str] | None = None) -> None:
    result = run_acmebox("run", *args, "--certs-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"),
                         env=acmebox_env(**(env or {})))
    assert_usage_error(result, expected)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists(), "nothing written before validation"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ACMEBOX_STAGING": "y"}, "bad ACMEBOX_STAGING 'y': want 1/true/yes/on or 0/false/no/off"),
        ({"ACMEBOX_NO_ARI": "2"}, "bad ACMEBOX_NO_ARI '2'"),
        ({"ACMEBOX_ONCE": "maybe"}, "bad ACMEBOX_ONCE 'maybe'"),
        ({"ACMEBOX_FORCE_RENEW": "1"}, "--force-renew needs --once"),
    ],
)
def test_strict_booleans(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    refused_before_writing(tmp_path, "--domain", "a.example.com", "--listen", "127.0.0.1:1", expected=expected,
                           env=env)


def test_boolean_words_accepted(tmp_path: Path) -> None:
    for word in ("off", "NO", "false", "0"):
        result = run_acmebox("run", "--domain", "a.example.com", "--directory", UNREACHABLE, "--certs-dir",
                             str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1:0",
                             env=acmebox_env(ACMEBOX_ONCE="1", ACMEBOX_NO_ARI=word, ACMEBOX_STAGING=word))
        assert_usage_error(result, "port 0")  # got past the booleans to the next check


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--force-renew"], "--force-renew needs --once; to renew through a running service use `acmebox renew"),
        (["--once", "--listen", ":0"], "bad listen address '0.0.0.0:0': port 0"),
        (["--once", "--listen", "no-such-host.invalid:8080"], "bad listen address 'no-such-host.invalid:8080'"),
        (["--once", "--listen", "999.1.1.1:8080"], "bad listen address '999.1.1.1:8080'"),
        (["--once", "--profile", "a b"], "bad --profile 'a b'"),
        (["--once", "--profile", "['a']"], "bad --profile"),
        (["--once", "--directory", "https://"], "bad directory URL 'https://'"),
        (["--once", "--directory", "https://x:99999/dir"], "bad directory URL"),
        (["--once", "--ca-bundle", "/etc/hostname"], "CA bundle /etc/hostname holds no usable PEM certificate"),
        (["--once", "--certs-dir", "/etc/hostname"], "certs dir /etc/hostname is not usable"),
        (["--once", "--auth-trusted-proxy", "10.0.0.1"], "--auth-trusted-proxy needs --auth-htpasswd"),
    ],
)
def test_flags_checked_before_anything_is_written(tmp_path: Path, args: list[str], expected: str) -> None:
    if "--certs-dir" in args:
        result = run_acmebox("run", "--domain", "a.example.com", "--state-dir", str(tmp_path / "s"), *args,
                             env=acmebox_env())
        assert_usage_error(result, expected)
        assert not (tmp_path / "s").exists()
        return
    refused_before_writing(tmp_path, "--domain", "a.example.com", "--directory", UNREACHABLE, *args,
                           expected=expected)


def htpasswd_file(tmp_path: Path) -> str:
    import subprocess

    path = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", "-C", "4", str(path), "alice", "pw"], check=True, capture_output=True)
    return str(path)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--auth-issuer", ""], "bad --auth-issuer ''"),
        (["--auth-service", " registry"], "bad --auth-service ' registry'"),
        (["--auth-trusted-proxy", "nginx,10.0.0.0/33"], "bad --auth-trusted-proxy entry '10.0.0.0/33'"),
        (["--auth-acl", "{dir}/acl.toml"], "ACL file"),
        (["--auth-key", "/etc/hostname"], "token signing key /etc/hostname is not a readable private key"),
    ],
)
def test_token_service_flags(tmp_path: Path, flags: list[str], expected: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "acl.toml").write_text('alice = ["Alice/*"]')
    flags = [f.format(dir=files) for f in flags]
    refused_before_writing(tmp_path, "--once", "--domain", "a.example.com", "--directory", UNREACHABLE,
                           "--auth-htpasswd", htpasswd_file(files), *flags, expected=expected)


def test_non_utf8_htpasswd(tmp_path: Path) -> None:
    bad = tmp_path / "bad.htpasswd"
    bad.write_bytes(b"\xff\xfe\x00alice:$2y$05$" + b"\xff" * 40 + b"\n")
    refused_before_writing(tmp_path, "--once", "--domain", "a.example.com", "--auth-htpasswd", str(bad),
                           expected=f"htpasswd file {bad} is not UTF-8 text")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("x = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("x = " + "{a = " * 5000 + "1" + "}" * 5000, "nested too deeply"),
        ('[[certificate]]\nnames = ["a.example.com"]\nprofile = ["a"]', "certificate 1: profile must be"),
        ('[[certificate]]\nnames = ["a.example.com"]\nprofile = 5', "certificate 1: profile must be"),
        ('[[certificate]]\nnames = ["a.example.com"]\nkey_type = 5', "certificate 1: key_type must be"),
        ("[[certificate]]\nnames = [1, 2]", "certificate 1: names must be a list of domain names"),
        ('[[certificate]]\nnames = [["a.example.com"]]', "certificate 1: names must be"),
        ("[[certificate]]\nnames = []", "certificate 1 needs names"),
        ('certificate = "a.example.com"', "certificate must be an array of tables"),
        ('[certificate]\nnames = ["a.example.com"]', "certificate must be an array of tables"),
        ('email = true\n[[certificate]]\nnames = ["a.example.com"]', "email must be an email address"),
        ('emial = "a@example.com"', "unknown key(s) emial"),
        ('[[certificate]]\nnames = ["a.example.com"]\nkeytype = "ec384"', "certificate 1: unknown key(s) keytype"),
        ("email = ", "config file"),
    ],
)
def test_config_schema(tmp_path: Path, toml: str, expected: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "c.toml").write_text(toml)
    refused_before_writing(tmp_path, "--once", "--config", str(files / "c.toml"), "--directory", UNREACHABLE,
                           expected=expected)


def test_log_level_after_the_command_and_defaults_in_help(tmp_path: Path) -> None:
    result = run_acmebox("run", "--once", "--log-level", "DEBUG", "--domain", "a.example.com", "--directory",
                         UNREACHABLE, "--certs-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"),
                         "--listen", "127.0.0.1:1")
    assert_usage_error(result, "cannot reach the CA")
    assert " DEBUG " in result.stderr
    quiet = run_acmebox("--log-level", "debug", "status", "--log-level", "error", "--certs-dir", str(tmp_path / "c"),
                        "--state-dir", str(tmp_path / "s"))
    assert quiet.returncode == 1 and " DEBUG " not in quiet.stderr  # exit 1: a.example.com is missing
    helptext = run_acmebox("run", "--help", env=acmebox_env(ACMEBOX_EAB_HMAC_KEY="s3cret-hmac")).stdout
    flat = " ".join(helptext.split())
    for shown in ("default: 0.0.0.0:8080", "default: /etc/letsencrypt", "default: ec256", "default: 300",
                  "default: off", "default: info"):
        assert shown in flat, shown
    assert "s3cret-hmac" not in helptext, "defaults from the environment (secrets) are not shown"


def test_every_command_has_help() -> None:
    """argparse formats help with %: one stray % in a help text is a traceback on --help."""
    from acmebox.cli import build_parser

    commands = [name for action in build_parser()._subparsers._group_actions  # type: ignore[union-attr]
                for name in getattr(action, "choices", {}) or {}]
    assert {"run", "status", "gc", "renew", "token-key"} <= set(commands)
    for command in ["", *commands]:
        result = run_acmebox(*([command] if command else []), "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr[-500:])


@pytest.mark.parametrize(("args", "says"), [
    (["gc", "--certs-dir", "", "--registry-storage", "/tmp", "--registry-command", "true"], "empty path"),
    (["gc", "--registry-storage", "", "--registry-command", "true"], "empty path"),
    (["status", "--registry-storage", " "], "empty path"),
    (["gc", "--certs-dir", "/tmp", "--registry-storage", "/tmp", "--registry-command", "/nonexistent/registry gc"],
     "is not a program found here"),
    (["gc", "--certs-dir", "/tmp", "--registry-storage", "/tmp", "--registry-config", "/nonexistent.yml"],
     "--registry-config /nonexistent.yml: not a file"),
    (["gc", "--certs-dir", "/tmp", "--registry-storage", "/tmp", "--registry-command", "true", "--timeout", "0"],
     "--timeout 1 to 86400"),
    (["run", "--domain", "a.example", "--catalog-registry", "http://[::1", "--auth-htpasswd", "HTPASSWD"],
     "want the registry's URL"),
    (["run", "--domain", "a.example", "--catalog-registry", "http://127.0.0.1:99999", "--auth-htpasswd",
      "HTPASSWD"], "want the registry's URL"),
    (["run", "--domain", "a.example", "--catalog-secret", "0123456789abcdef"],
     "--catalog-secret needs --catalog-registry"),
])
def test_operations_input_is_refused_before_anything_runs(tmp_path: Path, args: list[str], says: str) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    args = [str(htpasswd) if a == "HTPASSWD" else a for a in args]
    result = run_acmebox(*args, "--state-dir", str(tmp_path / "s")) if args[0] == "run" else run_acmebox(*args)
    assert_usage_error(result, says)
    assert not (Path("/tmp") / "registry-maintenance").exists()


@pytest.mark.parametrize("cert", [",,,", "", " "])
def test_a_cert_flag_without_a_name_is_refused(tmp_path: Path, cert: str) -> None:
    result = run_acmebox("run", "--once", "--domain", "a.example.com", "--cert", cert, "--directory", UNREACHABLE,
                         "--certs-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"))
    assert_usage_error(result, "domain name")
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists()
