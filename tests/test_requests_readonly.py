"""`acmebox renew` against a service whose state dir turned read-only: its requests, certs
(state files), ledger and pending dirs are bind mounts remounted read-only in the service's
own mount namespace (the top level stays writable only because the service holds its lock
file open there, which a read-only remount refuses); from outside, where `renew` runs, all
stays writable. The service can neither remove the request file nor save its state: the
request is still carried out, once, and answered (through the request's named pipe), with no
traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.pebble import Dirs, Pebble
from tests.helpers.process import acmebox_env, run_acmebox, wait_sync

pytestmark = pytest.mark.e2e  # Pebble, the service in a private mount namespace


@pytest.fixture
def ns(dirs: Dirs) -> Iterator[int]:
    """The PID of a process with a private mount namespace."""
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               "echo ready && exec sleep 3600"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    yield holder.pid
    holder.terminate()
    holder.wait(15)


def test_a_request_the_service_cannot_acknowledge_is_carried_out_and_answered(
    pebble: Pebble, dirs: Dirs, ns: int, tmp_path: Path
) -> None:
    name = "readonly-state.test"
    args = ["--domain", name, "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(["nsenter", "-t", str(ns), "-m", sys.executable, "-m", "acmebox", "run", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=acmebox_env(), cwd=ROOT)
    try:
        wait_sync(lambda: "certificate stored" in log_path.read_text() or proc.poll() is not None,
                  timeout=60, what="the first certificate")
        orders = pebble.orders_in_log()
        for sub in ("requests", "certs", "ledger", "pending"):
            d = dirs.state / sub
            d.mkdir(mode=0o700, exist_ok=True)
            subprocess.run(["nsenter", "-t", str(ns), "-m", "sh", "-c",
                            f"mount --bind {d} {d} && mount -o remount,ro,bind {d}"], check=True)

        asked = run_acmebox("renew", name, "--state-dir", str(dirs.state), "--timeout", "30")
        assert asked.returncode == 0, asked.stdout + asked.stderr + log_path.read_text()
        assert asked.stdout.startswith(f"{name}: not due: next renewal"), asked.stdout
        left = list((dirs.state / "requests").glob("*.json"))
        assert len(left) == 1, "the service could not remove it"

        forced = run_acmebox("renew", "--force", name, "--state-dir", str(dirs.state), "--timeout", "30")
        assert forced.returncode == 1, forced.stdout + forced.stderr
        assert forced.stdout.startswith(f"{name}: failed:") and "Read-only file system" in forced.stdout, forced.stdout
        assert pebble.orders_in_log() == orders, "no order that could not be recorded"

        log = log_path.read_text()
        assert log.count(f"{name}: renew request") == 2, "each request carried out once"
        assert "cannot remove renew request" in log
        assert "Traceback" not in log
        assert proc.poll() is None
        assert not list((dirs.state / "requests").glob("*.answer")), "renew removes its pipe"
    finally:
        proc.terminate()
        proc.wait(15)
