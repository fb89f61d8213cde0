"""The store's atomic switch: readers never see a key and a certificate that do not belong
together, or a partial file, even when the writer is killed at any instant."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509

from acmebox import keys, placeholder
from acmebox.store import KEEP_VERSIONS, CertStore


def make_cert(names: list[str]) -> tuple[bytes, bytes]:
    return placeholder.make(tuple(names), "ec256", dt.datetime.now(dt.UTC))


def consistent(version_dir: Path) -> bool:
    """Every file present and whole, and the key belongs to the certificate."""
    chain = x509.load_pem_x509_certificates((version_dir / "fullchain.pem").read_bytes())
    key = keys.from_pem((version_dir / "privkey.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((version_dir / "cert.pem").read_bytes())
    return cert == chain[0] and keys.public_der(key) == keys.public_der(cert.public_key())  # type: ignore[arg-type]


def test_save_switches_and_prunes(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.prepare()
    assert store.current("registry.test") is None
    serials = []
    for _ in range(KEEP_VERSIONS + 2):
        key_pem, cert_pem = make_cert(["registry.test", "www.registry.test"])
        stored = store.save("registry.test", key_pem, cert_pem, {"placeholder": False})
        serials.append(stored.serial)
        assert store.current("registry.test").serial == stored.serial  # type: ignore[union-attr]
    live = tmp_path / "live" / "registry.test"
    assert live.is_symlink() and os.readlink(live) == f"../archive/registry.test/{KEEP_VERSIONS + 2:04d}"
    assert stat.S_IMODE((live / "privkey.pem").stat().st_mode) == 0o600
    assert consistent(live)
    kept = sorted(p.name for p in (tmp_path / "archive" / "registry.test").iterdir())
    assert kept == [f"{v:04d}" for v in range(3, KEEP_VERSIONS + 3)]
    assert store.current("registry.test").names == ["registry.test", "www.registry.test"]  # type: ignore[union-attr]


def test_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.prepare()
    key_a, _ = make_cert(["a.test"])
    _, cert_b = make_cert(["a.test"])
    try:
        store.save("a.test", key_a, cert_b, {})
    except ValueError as e:
        assert "does not match" in str(e)
    else:
        raise AssertionError("mismatched key accepted")
    assert store.current("a.test") is None
    assert not (tmp_path / "live" / "a.test").exists()


def test_takes_over_a_certbot_live_directory(tmp_path: Path) -> None:
    key_pem, cert_pem = make_cert(["old.test"])
    certbot_dir = tmp_path / "live" / "old.test"
    certbot_dir.mkdir(parents=True)
    (certbot_dir / "fullchain.pem").write_bytes(cert_pem)
    (certbot_dir / "privkey.pem").write_bytes(key_pem)
    store = CertStore(tmp_path)
    store.prepare()
    found = store.current("old.test")
    assert found is not None and found.version == "certbot" and found.names == ["old.test"]
    new_key, new_cert = make_cert(["old.test"])
    store.save("old.test", new_key, new_cert, {})
    assert (tmp_path / "live" / "old.test").is_symlink()
    assert consistent(tmp_path / "live" / "old.test")
    assert len(list((tmp_path / "archive" / "old.test").glob("certbot-*"))) == 1


def test_leftovers_of_a_crash_are_cleaned_and_never_live(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.prepare()
    key_pem, cert_pem = make_cert(["a.test"])
    store.save("a.test", key_pem, cert_pem, {})
    half = tmp_path / "archive" / "a.test" / ".new-deadbeef"
    half.mkdir()
    (half / "privkey.pem").write_bytes(b"-----BEGIN PRIV")
    store.prepare()
    assert not half.exists()
    assert consistent(tmp_path / "live" / "a.test")


WRITER = """
import datetime as dt, sys
from pathlib import Path
from acmebox import placeholder
from acmebox.store import CertStore
store = CertStore(Path(sys.argv[1]))
store.prepare()
pairs = [placeholder.make(("a.test",), "ec256", dt.datetime.now(dt.UTC)) for _ in range(4)]
print("ready", flush=True)
i = 0
while True:
    store.save("a.test", *pairs[i % 4], {"i": i})
    i += 1
"""


def test_killed_writer_never_leaves_a_mixed_or_partial_live_certificate(tmp_path: Path) -> None:
    """SIGKILL a process that saves versions in a loop, at random instants, many times; after
    each kill (and while it runs) whatever live/ points at is complete and consistent."""
    rng = random.Random(1)
    seen_versions = set()
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + rng.uniform(0.01, 0.15)
        while time.monotonic() < deadline:  # a reader that resolves the link once, like a careful server
            link = tmp_path / "live" / "a.test"
            if link.exists():
                target = link.resolve()
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: a reader retries
                    assert consistent(target)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        live = tmp_path / "live" / "a.test"
        if live.exists():
            assert consistent(live)
            seen_versions.add(os.readlink(live))
        CertStore(tmp_path).prepare()  # the restart cleans up
        assert not list((tmp_path / "archive" / "a.test").glob(".new-*"))
        assert not [p for p in (tmp_path / "live").iterdir() if p.name.startswith(".")]
    assert len(seen_versions) > 5
