"""A certs volume written by acmebox 0.1.0 (live/<name> a symlink into archive/) or by certbot
(live/<name>/ a directory of symlinks) is taken over at the first start: the same certificate
stays live, now as real files, and nothing is ordered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509

from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import run_acmebox

pytestmark = pytest.mark.e2e
NAME = "registry.test"


def serial_of(live: Path) -> int:
    return x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())[0].serial_number


def issue_once(pebble: Pebble, dirs: Dirs) -> tuple[list[str], int]:
    args = ["run", "--once", "--domain", NAME, *pebble_args(pebble, dirs)]
    result = run_acmebox(*args)
    assert result.returncode == 0, result.stderr
    return args, serial_of(dirs.certs / "live" / NAME)


def assert_taken_over(pebble: Pebble, dirs: Dirs, args: list[str], serial: int, orders: int) -> str:
    again = run_acmebox(*args)
    assert again.returncode == 0, again.stderr
    live = dirs.certs / "live" / NAME
    assert live.is_dir() and not live.is_symlink() and not [p for p in live.iterdir() if p.is_symlink()]
    assert serial_of(live) == serial
    assert (live / "combined.pem").read_bytes() == (live / "fullchain.pem").read_bytes() + (
        live / "privkey.pem"
    ).read_bytes()
    assert pebble.orders_in_log() == orders, "ordered again"
    return again.stderr


def test_the_previous_layout_is_taken_over(pebble: Pebble, dirs: Dirs) -> None:
    args, serial = issue_once(pebble, dirs)
    live = dirs.certs / "live" / NAME
    shutil.rmtree(live)
    live.symlink_to(f"../archive/{NAME}/0001")  # exactly what 0.1.0 left
    log = assert_taken_over(pebble, dirs, args, serial, pebble.orders_in_log())
    assert f"live/{NAME}/ is now a directory of files (version 0001)" in log


def test_a_certbot_volume_is_taken_over(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    args, serial = issue_once(pebble, dirs)
    saved = tmp_path / "issued"
    shutil.copytree(dirs.certs / "archive" / NAME / "0001", saved)
    shutil.rmtree(dirs.certs)
    # certbot's layout: numbered files in archive/, relative symlinks in live/, a renewal conf
    archive, live = dirs.certs / "archive" / NAME, dirs.certs / "live" / NAME
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    for kind in ("cert", "chain", "fullchain", "privkey"):
        shutil.copy(saved / f"{kind}.pem", archive / f"{kind}1.pem")
        (live / f"{kind}.pem").symlink_to(f"../../archive/{NAME}/{kind}1.pem")
    (dirs.certs / "renewal").mkdir()
    (dirs.certs / "renewal" / f"{NAME}.conf").write_text(
        f"archive_dir = {archive}\n[renewalparams]\nserver = {pebble.directory}\n"
    )
    log = assert_taken_over(pebble, dirs, args, serial, pebble.orders_in_log())
    assert f"took over live/{NAME}/ (serial {serial:x}) as version 0001, without a new order" in log
