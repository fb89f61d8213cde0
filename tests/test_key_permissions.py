"""Key permissions survive renewals (field report B6): a reader that is not root, in the key's
group, still reads privkey.pem and combined.pem after 3 forced renewals, whether the admin
set the group by hand or acmebox was told with --key-group."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import run_acmebox

pytestmark = pytest.mark.e2e
NAME = "registry.test"
READER_GID = 101  # nginx's group in the nginx image


@pytest.fixture
def open_dirs() -> Iterator[Dirs]:
    """Certs and state dirs a non-root reader can walk to (pytest's tmp_path is root-only)."""
    top = Path(tempfile.mkdtemp(prefix="acmebox-perms-", dir="/tmp"))
    top.chmod(0o755)
    try:
        yield Dirs(top / "certs", top / "state")
    finally:
        shutil.rmtree(top)


def reader_can_read(path: Path) -> bool:
    """uid 65534 (nobody) in group READER_GID only, as a non-root nginx or registry would be."""
    out = subprocess.run(["setpriv", "--reuid=65534", f"--regid={READER_GID}", "--clear-groups",
                          "head", "-c", "27", str(path)], capture_output=True)
    return out.returncode == 0 and out.stdout.startswith(b"-----BEGIN")


def key_files(dirs: Dirs) -> list[Path]:
    live = dirs.certs / "live" / NAME
    return [live / "privkey.pem", live / "combined.pem"]


def renew_three_times(args: list[str]) -> None:
    for _ in range(3):
        result = run_acmebox(*args, "--force-renew", "--ignore-ledger")  # 5 in a week in all: past the ledger
        assert result.returncode == 0, result.stderr


def test_group_set_by_hand_is_kept(pebble: Pebble, open_dirs: Dirs) -> None:
    args = ["run", "--once", "--no-ari", "--domain", NAME, *pebble_args(pebble, open_dirs)]
    assert run_acmebox(*args).returncode == 0
    for path in key_files(open_dirs):
        assert not reader_can_read(path)  # 0600 by default
    key = key_files(open_dirs)[0]
    os.chown(key, -1, READER_GID)
    key.chmod(0o640)
    assert reader_can_read(key)
    renew_three_times(args)
    for path in key_files(open_dirs):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, READER_GID), path
        assert reader_can_read(path), path


def test_key_group_flag(pebble: Pebble, open_dirs: Dirs) -> None:
    args = ["run", "--once", "--no-ari", "--domain", NAME, "--key-group", str(READER_GID),
            *pebble_args(pebble, open_dirs)]
    assert run_acmebox(*args).returncode == 0
    renew_three_times(args)
    for path in key_files(open_dirs):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, READER_GID), path
        assert reader_can_read(path), path
    # --key-mode narrows it again on the next write; the group stays what the flag says
    again = run_acmebox(*args, "--force-renew", "--ignore-ledger", "--key-mode", "0600")
    assert again.returncode == 0, again.stderr
    for path in key_files(open_dirs):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not reader_can_read(path)
