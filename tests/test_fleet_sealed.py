"""The fleet secret's two uses (acmebox/sealed.py): authenticated follower requests and sealed
bundles; and the follower's refusals of bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from acmebox.errors import ConfigError
from acmebox.sealed import AUTH_HEADER, MAX_SKEW, Bundle, FleetKeys, Refused, read_secret

SECRET = b"0123456789abcdef0123456789abcdef"


def test_request_round_trip_and_refusals() -> None:
    keys = FleetKeys.derive(SECRET)
    headers = keys.sign("GET", "/fleet/v1/bundle/registry.test?have=&reload=-1&wait=25", "node2", now=1000)
    assert keys.verify("GET", "/fleet/v1/bundle/registry.test?have=&reload=-1&wait=25", headers, now=1000)[0] == "node2"
    with pytest.raises(Refused, match="wrong authentication tag"):  # another path: the tag covers it
        keys.verify("GET", "/fleet/v1/bundle/other.test?have=&reload=-1&wait=25", headers, now=1000)
    with pytest.raises(Refused, match="wrong authentication tag"):
        FleetKeys.derive(SECRET[::-1]).verify("GET", "/fleet/v1/bundle/registry.test?have=&reload=-1&wait=25",
                                              headers, now=1000)
    with pytest.raises(Refused, match="off acmebox's clock"):
        keys.verify("GET", "/fleet/v1/bundle/registry.test?have=&reload=-1&wait=25", headers,
                    now=1000 + MAX_SKEW + 1)
    with pytest.raises(Refused, match="headers missing"):
        keys.verify("GET", "/x", {k: v for k, v in headers.items() if k != AUTH_HEADER}, now=1000)


def test_sealed_bundle_opens_only_for_its_request() -> None:
    keys = FleetKeys.derive(SECRET)
    bundle = Bundle("registry.test", b"-----KEY-----\n", b"-----CHAIN-----\n", {"version": "0002"}, 3)
    blob = keys.seal(bundle.to_bytes(), "a" * 32)
    assert b"KEY" not in blob
    assert Bundle.from_bytes(keys.open(blob, "a" * 32)) == bundle
    with pytest.raises(Refused):  # replayed into another request
        keys.open(blob, "b" * 32)
    with pytest.raises(Refused):
        FleetKeys.derive(SECRET[::-1]).open(blob, "a" * 32)
    assert "KEY" not in repr(keys) and SECRET.decode() not in repr(keys)


def test_secret_file_checks(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"too short\n")
    with pytest.raises(ConfigError, match="at least 32"):
        read_secret(short)
    with pytest.raises(ConfigError, match="No such file"):
        read_secret(tmp_path / "missing")
    good = tmp_path / "good"
    good.write_bytes(SECRET + b"\n")
    assert read_secret(good) == FleetKeys.derive(SECRET)


@pytest.mark.parametrize(("args", "message"), [
    ([], "needs --fleet-secret-file"),
    (["--fleet-secret-file", "/nonexistent/secret"], "fleet secret /nonexistent/secret"),
    (["--fleet-secret-file", "SECRET", "--from", "acmebox"], "bad --from address"),
])
def test_follow_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    certs = tmp_path / "certs"
    args = [str(secret) if a == "SECRET" else a for a in args]
    out = subprocess.run([sys.executable, "-m", "acmebox", "follow", "--certs-dir", str(certs), "-d", "registry.test",
                          *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not certs.exists()


def test_run_fleet_flags_go_together(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "acmebox", "run", "--once", "-d", "registry.test",
                          "--fleet-frontends", "tasks.nginx", "--state-dir", str(tmp_path / "s"),
                          "--certs-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "go together" in out.stderr, out.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()
