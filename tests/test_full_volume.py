"""A certs volume with no inodes left (a tmpfs with few inodes, mounted in a private mount
namespace that a holder process keeps alive; every acmebox process joins it with nsenter).
acmebox's own leftover temporary files never block a start, and a volume full of other files
leaves the service up, saying the volume is full, with the certificate on it still in place."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.pebble import Dirs, Pebble
from tests.helpers.process import acmebox_env, wait_sync

pytestmark = pytest.mark.e2e  # Pebble, a tmpfs in a private mount namespace


@pytest.fixture
def full_ns(dirs: Dirs) -> Iterator[int]:
    """The PID of a process whose mount namespace has a 64-inode tmpfs on dirs.certs."""
    dirs.certs.mkdir(parents=True)
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size=4m,nr_inodes=64 acmebox-test {dirs.certs} && "
                               "echo mounted && exec sleep 3600"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "mounted"
    yield holder.pid
    holder.terminate()
    holder.wait(15)


def in_ns(pid: int, command: list[str]) -> list[str]:
    return ["nsenter", "-t", str(pid), "-m", *command]


def sh(pid: int, script: str) -> None:
    subprocess.run(in_ns(pid, ["sh", "-c", script]), check=True)


def acmebox_args(pebble: Pebble, dirs: Dirs, name: str) -> list[str]:
    return ["--domain", name, "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]


def fill(pid: int, certs: Path) -> None:
    sh(pid, f"i=0; while touch {certs}/filler$i 2>/dev/null; do i=$((i+1)); done")


def start_service(pid: int, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("w") as log:
        return subprocess.Popen(in_ns(pid, [sys.executable, "-m", "acmebox", "run", *args]),
                                stdout=log, stderr=subprocess.STDOUT, env=acmebox_env(), cwd=ROOT)


def wait_up(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    wait_sync(lambda: "managing 1 certificate" in log_path.read_text() or proc.poll() is not None,
              timeout=60, what="the service to start")
    log = log_path.read_text()
    assert proc.poll() is None, f"the service exited ({proc.returncode}):\n{log}"
    assert "Traceback" not in log
    return log


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(15)


def test_a_full_certs_volume_does_not_stop_a_start(pebble: Pebble, dirs: Dirs, full_ns: int, tmp_path: Path) -> None:
    name = "inodes.test"
    args = acmebox_args(pebble, dirs, name)
    first = subprocess.run(in_ns(full_ns, [sys.executable, "-m", "acmebox", "run", "--once", *args]),
                           capture_output=True, text=True, env=acmebox_env(), cwd=ROOT, timeout=120)
    assert first.returncode == 0, first.stderr
    live = Path(f"/proc/{full_ns}/root") / dirs.certs.relative_to("/") / "live" / name / "fullchain.pem"
    serial_before = live.read_bytes()

    # What a save interrupted on this volume leaves behind, holding the last inodes.
    leftover = dirs.certs / "archive" / name / ".new-0123456789abcdef0123456789abcdef"
    fill(full_ns, dirs.certs)
    sh(full_ns, f"rm {dirs.certs}/filler0 {dirs.certs}/filler1 {dirs.certs}/filler2 && mkdir {leftover} && "
                f"touch {leftover}/privkey.pem {leftover}/cert.pem")
    sh(full_ns, f"! touch {dirs.certs}/one-more 2>/dev/null")  # the volume is full indeed

    log_path = tmp_path / "first-start.log"
    proc = start_service(full_ns, args, log_path)
    try:
        wait_up(proc, log_path)
        assert subprocess.run(in_ns(full_ns, ["test", "-e", str(leftover)])).returncode == 1, "leftover removed"
    finally:
        stop(proc)

    # Full of files that are not acmebox's: it stays up and says the volume is full.
    fill(full_ns, dirs.certs)
    log_path = tmp_path / "second-start.log"
    proc = start_service(full_ns, args, log_path)
    try:
        log = wait_up(proc, log_path)
        assert f"certs dir {dirs.certs} is full" in log
        assert "not usable" not in log
        assert live.read_bytes() == serial_before, "the certificate on the volume stays in place"
    finally:
        stop(proc)
