"""A run killed between the CA's answer and the disk (#21 point 5), with a real Pebble behind the
fault proxy: the proxy holds the certificate download (or the finalize request) unanswered, the
test SIGKILLs acmebox while it waits, and the next run must fetch that order again instead of
placing a new one. Orders are counted where the CA sees them (the proxy's log of newOrder
requests that reached Pebble); forced runs are held to the order ledger unless --ignore-ledger."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from acmebox.ledger import ISSUED_PER_WEEK
from tests.helpers import ROOT
from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.pebble import Dirs, Pebble
from tests.helpers.process import acmebox_env, run_acmebox, wait_sync

pytestmark = pytest.mark.e2e  # Pebble behind a fault proxy

CERT_DOWNLOAD = "/certZ/"  # Pebble's certificate URLs
FINALIZE = "/finalize-order/"


@pytest.fixture
def proxy(pebble: Pebble) -> Iterator[FaultProxy]:
    p = FaultProxy(pebble.directory.rsplit("/", 1)[0], pebble.run_dir).start()
    yield p
    p.stop()


def args_via(proxy: FaultProxy, pebble: Pebble, dirs: Dirs, name: str) -> list[str]:
    return ["--domain", name, "--directory", proxy.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]


def killed_while_held(proxy: FaultProxy, held: str, args: list[str], log: Path, seen_before: int) -> None:
    """Start `acmebox run --once ARGS`, wait until its request to `held` is held by the proxy
    (the `seen_before + 1`-th such request), then SIGKILL it."""
    proxy.add(Rule(held, "POST", action="hold", times=1))
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "acmebox", "run", "--once", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=acmebox_env(), cwd=ROOT)
    try:
        wait_sync(lambda: proxy.count(held) > seen_before or proc.poll() is not None, timeout=60, what=held)
        assert proc.poll() is None, log.read_text()
    finally:
        proc.kill()  # SIGKILL: nothing of acmebox's runs after this
        proc.wait()


def public_key(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, None)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ledger_lines(dirs: Dirs, name: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (dirs.state / "ledger" / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("held", [CERT_DOWNLOAD, FINALIZE], ids=["after-finalize", "before-finalize"])
def test_a_killed_run_is_resumed_without_a_new_order(
    proxy: FaultProxy, pebble: Pebble, dirs: Dirs, tmp_path: Path, held: str
) -> None:
    """Killed while the CA's certificate (or its answer to finalize) is on the way: the next run
    fetches the recorded order again, downloads (or finalizes) it with the kept key and installs
    it; the CA sees one newOrder in all."""
    name = f"resume-{held.strip('/').replace('-', '')}.test".lower()
    args = args_via(proxy, pebble, dirs, name)
    killed_while_held(proxy, held, args, tmp_path / "killed.log", 0)
    assert proxy.orders() == 1
    record = dirs.state / "orders" / f"{name}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600, "it holds the certificate's key"
    kept = json.loads(record.read_text())
    assert "/my-order/" in kept["url"]
    assert not (dirs.certs / "live" / name).exists(), "killed before the store write"

    out = run_acmebox("run", "--once", *args)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert proxy.orders() == 1, "no new order: the recorded one was carried on"
    assert proxy.count("/my-order/") >= 1, "the order was fetched again (POST-as-GET)"
    assert "fetched with its kept key" in out.stderr
    live_key = (dirs.certs / "live" / name / "privkey.pem").read_bytes()
    assert public_key(live_key) == public_key(kept["key"].encode()), "installed with the key kept before finalizing"
    assert not record.exists()
    lines = ledger_lines(dirs, name)
    assert [e.get("outcome") for e in lines] == [None, "issued"], "one order, and its end recorded"


def test_a_gone_order_is_dropped_and_then_ordered_anew(
    proxy: FaultProxy, pebble: Pebble, dirs: Dirs, tmp_path: Path
) -> None:
    """A recorded order the CA no longer knows (a 404) is dropped and its ledger line ended as
    failed; only then is a new order placed."""
    name = "resume-gone.test"
    args = args_via(proxy, pebble, dirs, name)
    killed_while_held(proxy, FINALIZE, args, tmp_path / "killed.log", 0)
    record = dirs.state / "orders" / f"{name}.json"
    data = json.loads(record.read_text())
    data["url"] = data["url"].rsplit("/", 1)[0] + "/unknown-order-id"
    record.write_text(json.dumps(data))

    out = run_acmebox("run", "--once", *args)
    assert out.returncode == 0, out.stderr
    assert "is gone at the CA" in out.stderr
    assert proxy.orders() == 2
    assert not record.exists()
    outcomes = [e.get("outcome") for e in ledger_lines(dirs, name)]
    assert outcomes == [None, "failed", None, "issued"]


def test_forced_runs_killed_in_a_loop_stay_inside_the_ledger(
    proxy: FaultProxy, pebble: Pebble, dirs: Dirs, tmp_path: Path
) -> None:
    """`run --once --force-renew`, killed each time after the CA issued: one new order, which
    each later run fetches again. Completed forced runs then stop at the ledger's limit, and
    only --ignore-ledger goes past it."""
    name = "forced-loop.test"
    args = args_via(proxy, pebble, dirs, name)
    assert run_acmebox("run", "--once", *args).returncode == 0
    downloads = proxy.count(CERT_DOWNLOAD)
    for i in range(5):
        killed_while_held(proxy, CERT_DOWNLOAD, ["--force-renew", *args], tmp_path / f"killed{i}.log", downloads)
        downloads = proxy.count(CERT_DOWNLOAD)
    assert proxy.orders() == 2, "the first certificate and one forced order, fetched again by every later run"

    done = run_acmebox("run", "--once", "--force-renew", *args)
    assert done.returncode == 0, done.stderr
    assert proxy.orders() == 2, "the forced run installed the order in flight"
    for _ in range(ISSUED_PER_WEEK - 2):
        assert run_acmebox("run", "--once", "--force-renew", *args).returncode == 0
    assert proxy.orders() == ISSUED_PER_WEEK
    refused = run_acmebox("run", "--once", "--force-renew", *args)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "ledger allows" in refused.stderr
    assert proxy.orders() == ISSUED_PER_WEEK, "a forced run is held to the ledger"

    past = run_acmebox("run", "--once", "--force-renew", "--ignore-ledger", *args)
    assert past.returncode == 0, past.stderr
    assert proxy.orders() == ISSUED_PER_WEEK + 1


def test_ignore_ledger_needs_force() -> None:
    out = run_acmebox("run", "--once", "--ignore-ledger", "--domain", "a.test", "--state-dir", "/nonexistent/x")
    assert out.returncode == 2 and "--ignore-ledger needs --force-renew" in out.stderr
