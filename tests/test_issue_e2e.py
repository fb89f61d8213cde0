"""End to end against a real Pebble: `python -m acmebox run --once` as a user runs it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers.certs import live, verify_live
from tests.helpers.pebble import Dirs, Pebble, pebble_args, start_pebble, stop_pebble
from tests.helpers.process import acmebox_env, free_port, run_acmebox

pytestmark = pytest.mark.e2e


def test_issue_then_reuse(pebble: Pebble, dirs: Dirs) -> None:
    orders_before = pebble.orders_in_log()
    first = run_acmebox("run", "--once", "--domain", "registry.test", "--email", "ops@example.com",
                        *pebble_args(pebble, dirs))
    assert first.returncode == 0, first.stderr
    leaf = verify_live(pebble, dirs, ["registry.test"])
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert "registered ACME account" in first.stderr
    assert pebble.orders_in_log() == orders_before + 1
    assert "BEGIN" not in first.stderr, "key material must never be logged"

    second = run_acmebox("run", "--once", "--domain", "registry.test", "--email", "ops@example.com",
                         *pebble_args(pebble, dirs))
    assert second.returncode == 0, second.stderr
    assert pebble.orders_in_log() == orders_before + 1, "a valid certificate on disk must not be re-ordered"
    assert "nothing ordered" in second.stderr
    assert "registered" not in second.stderr, "nothing due: the CA is not even asked"
    assert x509.load_pem_x509_certificate((live(dirs, "registry.test") / "cert.pem").read_bytes()) == leaf

    forced = run_acmebox("run", "--once", "--force-renew", "--domain", "registry.test",
                         *pebble_args(pebble, dirs))
    assert forced.returncode == 0, forced.stderr
    # Pebble sometimes cannot find the order of the certificate named in `replaces` (RFC 9773)
    # and refuses it; acmebox then orders once more without it.
    refused = "the CA refused replaces" in forced.stderr
    assert pebble.orders_in_log() == orders_before + (3 if refused else 2)
    assert verify_live(pebble, dirs, ["registry.test"]).serial_number != leaf.serial_number
    assert sorted(p.name for p in (dirs.certs / "archive" / "registry.test").iterdir()) == ["0001", "0002"]


def test_environment_variables_of_the_old_stack(pebble: Pebble, dirs: Dirs) -> None:
    env = acmebox_env(
        DOCKER_REGISTRY_DOMAIN_NAME="old-stack.test",
        DOCKER_REGISTRY_CERT_EMAIL_ADDRESS="ops@example.com",
        ACMEBOX_DIRECTORY=pebble.directory,
        ACMEBOX_CA_BUNDLE=str(pebble.ca_bundle),
        ACMEBOX_CERTS_DIR=str(dirs.certs),
        ACMEBOX_STATE_DIR=str(dirs.state),
        ACMEBOX_LISTEN=f"127.0.0.1:{pebble.http_port}",
        ACMEBOX_ONCE="1",
    )
    result = run_acmebox("run", env=env)
    assert result.returncode == 0, result.stderr
    verify_live(pebble, dirs, ["old-stack.test"])


@pytest.mark.parametrize(("key_type", "key_class", "size"), [("ec256", ec.EllipticCurvePublicKey, 256),
                                                             ("rsa2048", rsa.RSAPublicKey, 2048)])
def test_several_names_and_key_types(pebble: Pebble, dirs: Dirs, key_type: str, key_class: type, size: int) -> None:
    names = [f"{key_type}.registry.test", "registry.test", "ui.registry.test"]
    args = [a for n in names for a in ("--domain", n)]
    result = run_acmebox("run", "--once", *args, "--key-type", key_type, *pebble_args(pebble, dirs))
    assert result.returncode == 0, result.stderr
    leaf = verify_live(pebble, dirs, names)
    assert isinstance(leaf.public_key(), key_class)
    assert leaf.public_key().key_size == size
    meta = json.loads((live(dirs, names[0]) / "meta.json").read_text())
    assert meta["key_type"] == key_type and meta["placeholder"] is False


def test_shortlived_profile(pebble: Pebble, dirs: Dirs) -> None:
    result = run_acmebox("run", "--once", "--domain", "short.test", "--profile", "shortlived",
                         *pebble_args(pebble, dirs))
    assert result.returncode == 0, result.stderr
    leaf = verify_live(pebble, dirs, ["short.test"])
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime < dt.timedelta(days=7), lifetime  # Pebble's shortlived: 6 days; default: 90
    assert json.loads((live(dirs, "short.test") / "meta.json").read_text())["profile"] == "shortlived"


def test_unknown_profile_is_a_clear_error(pebble: Pebble, dirs: Dirs) -> None:
    result = run_acmebox("run", "--once", "--domain", "p.test", "--profile", "nope", *pebble_args(pebble, dirs))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("acmebox: error: profile 'nope' is not offered")
    assert "Traceback" not in result.stderr


def test_nonce_rejection_is_retried(pebble_nonce_reject: Pebble, dirs: Dirs) -> None:
    """Pebble rejects 5% of nonces; three issuances (~40 signed requests) still succeed."""
    for i in range(3):
        result = run_acmebox("run", "--once", "--force-renew", "--domain", "nonce.test",
                             *pebble_args(pebble_nonce_reject, dirs))
        assert result.returncode == 0, f"run {i}: {result.stderr}"
    verify_live(pebble_nonce_reject, dirs, ["nonce.test"])


def test_ca_side_failures_exit_1_with_the_problem(pebble: Pebble, dirs: Dirs) -> None:
    blocked = run_acmebox("run", "--once", "--domain", "blocked.test", *pebble_args(pebble, dirs))
    assert blocked.returncode == 1
    last = blocked.stderr.strip().splitlines()[-1]
    assert last.startswith("acmebox: error: CA problem urn:ietf:params:acme:error:rejectedIdentifier:"), last
    assert "blocked.test" in last

    # Pebble validates on pebble.http_port; listening elsewhere makes validation fail.
    args = pebble_args(pebble, dirs)
    args[args.index("--listen") + 1] = f"127.0.0.1:{free_port()}"  # port 0 is refused as input
    unvalidated = run_acmebox("run", "--once", "--domain", "novalidation.test", *args)
    assert unvalidated.returncode == 1
    last = unvalidated.stderr.strip().splitlines()[-1]
    assert last.startswith("acmebox: error: CA problem urn:ietf:params:acme:error:connection:"), last
    assert "novalidation.test" in last
    assert not (dirs.certs / "live" / "novalidation.test").exists()


def test_several_certificates_and_one_failure_does_not_stop_the_others(
    pebble: Pebble, dirs: Dirs, tmp_path: Path
) -> None:
    config = tmp_path / "certs.toml"
    config.write_text('[[certificate]]\nnames = ["toml.test", "www.toml.test"]\nkey_type = "ec384"\n')
    result = run_acmebox("run", "--once", "--config", str(config), "--cert", "blocked.test",
                         "--cert", "a.multi.test,b.multi.test", *pebble_args(pebble, dirs))
    assert result.returncode == 1, result.stderr
    assert "rejectedIdentifier" in result.stderr.strip().splitlines()[-1]
    verify_live(pebble, dirs, ["toml.test", "www.toml.test"])
    verify_live(pebble, dirs, ["a.multi.test", "b.multi.test"])
    assert json.loads((live(dirs, "toml.test") / "meta.json").read_text())["key_type"] == "ec384"
    assert not live(dirs, "blocked.test").exists()


def test_revoke(pebble: Pebble, dirs: Dirs) -> None:
    issued = run_acmebox("run", "--once", "--domain", "revoke.test", *pebble_args(pebble, dirs))
    assert issued.returncode == 0, issued.stderr
    serial = x509.load_pem_x509_certificate((live(dirs, "revoke.test") / "cert.pem").read_bytes()).serial_number
    assert json.loads(pebble.get(f"/cert-status-by-serial/{serial:x}"))["Status"] == "Valid"
    result = run_acmebox("revoke", "revoke.test", "--reason", "4", "--ca-bundle", str(pebble.ca_bundle),
                         "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
    assert result.returncode == 0, result.stderr
    assert f"revoke.test: revoked serial {serial:x}" in result.stdout
    assert json.loads(pebble.get(f"/cert-status-by-serial/{serial:x}"))["Status"] == "Revoked"
    status = run_acmebox("status", "--json", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
    assert status.returncode == 1 and json.loads(status.stdout)[0]["condition"] == "revoked"
    again = run_acmebox("revoke", "revoke.test", "--ca-bundle", str(pebble.ca_bundle),
                        "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
    assert again.returncode == 1 and "alreadyRevoked" in again.stderr.strip().splitlines()[-1]
    # No service was running: the next run replaces it at once, not at its renewal date.
    assert "the next `acmebox run` (or `run --once`) replaces it" in result.stdout
    replaced = run_acmebox("run", "--once", "--domain", "revoke.test", *pebble_args(pebble, dirs))
    assert replaced.returncode == 0 and "revoked (acmebox revoke)" in replaced.stderr
    new = x509.load_pem_x509_certificate((live(dirs, "revoke.test") / "cert.pem").read_bytes()).serial_number
    assert new != serial


def test_external_account_binding(tmp_path: Path, dirs: Dirs) -> None:
    pebble = start_pebble(tmp_path / "pebble-eab", PEBBLE_EAB="1")
    try:
        config = json.loads((pebble.run_dir / "pebble-config.json").read_text())["pebble"]
        assert config["externalAccountBindingRequired"] is True
        ((kid, hmac_key),) = config["externalAccountMACKeys"].items()
        without = run_acmebox("run", "--once", "--domain", "eab.test", *pebble_args(pebble, dirs))
        assert without.returncode == 1
        assert "externalAccountRequired" in without.stderr.strip().splitlines()[-1]
        wrong = run_acmebox("run", "--once", "--domain", "eab.test", "--eab-kid", kid, "--eab-hmac-key",
                            "A" * 64, *pebble_args(pebble, dirs))
        assert wrong.returncode == 1 and "unauthorized" in wrong.stderr.strip().splitlines()[-1]
        right = run_acmebox("run", "--once", "--domain", "eab.test", "--eab-kid", kid, "--eab-hmac-key", hmac_key,
                            *pebble_args(pebble, dirs))
        assert right.returncode == 0, right.stderr
        verify_live(pebble, dirs, ["eab.test"])
    finally:
        stop_pebble(pebble)
