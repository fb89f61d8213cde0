"""Bad input: one clear line, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import Dirs, Pebble, acmebox_env, pebble_args, run_acmebox


def assert_usage_error(result: object, expected: str) -> None:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("acmebox: error: "), last
    assert expected in last, last


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
                         "--certs-dir", str(tmp_path / "c"))  # fmt: skip
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
                       "--staging and --directory are exclusive")  # fmt: skip
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
                       "https://127.0.0.1:1/dir: cannot reach the CA: [Errno 111] Connection refused")  # fmt: skip

    args[args.index("--directory") + 1] = pebble.management + "/roots/0"
    assert_usage_error(run_acmebox("run", "--once", "--domain", "a.test", *args),
                       f"{pebble.management}/roots/0 is not an ACME directory")  # fmt: skip

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
                         "--state-dir", str(tmp_path / "s"))  # fmt: skip
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
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "acmebox",
               "run", "--once", "--domain", "a.test", "--key-group", "101", "--certs-dir", str(top / "c"),
               "--state-dir", str(top / "s"), "--directory", "https://127.0.0.1:1/dir"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=acmebox_env(), cwd=top, timeout=60)
    assert_usage_error(result, "--key-group 101: acmebox (uid 65534) may not give files to that group")
