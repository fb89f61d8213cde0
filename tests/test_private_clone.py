"""The demo's stack and the tests that run programs as other users, from a clone in a
directory only root can enter (as a clone in /root is: mode 0700). The clone is this one,
bind-mounted at <a 0700 directory>/acmebox in a private mount namespace, and everything runs
from that path: its venv, its tests/helpers/stack.py, its nginx templates and browse page."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.process import acmebox_env

pytestmark = pytest.mark.e2e  # the loopback stack: Pebble, nginx, the registry


@pytest.fixture
def private_clone() -> Iterator[Path]:
    """<a 0700 directory>/acmebox: where the clone appears inside `in_clone`'s namespace."""
    parent = Path(tempfile.mkdtemp(prefix="acmebox-private-", dir="/tmp"))
    parent.chmod(0o700)
    (parent / "acmebox").mkdir()
    try:
        yield parent / "acmebox"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def in_clone(clone: Path, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`command` (paths under ROOT rewritten to `clone`) in a private mount namespace in which
    ROOT is mounted at `clone`, with `clone` as the working directory."""
    moved = [str(clone / Path(a).relative_to(ROOT)) if a.startswith(f"{ROOT}/") else a for a in command]
    script = 'mount --bind "$0" "$1" && cd "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(ROOT),
                           str(clone), *moved], capture_output=True, text=True, env=acmebox_env(),
                          timeout=timeout)


STACK_SCRIPT = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path.cwd()))
from tests.helpers.stack import running_stack
with tempfile.TemporaryDirectory() as run, running_stack(Path(run)) as s:
    page = s.https("GET", "/")
    print("browse", page.status, b"<html" in page.body.lower())
    print("script", s.https("GET", "/app.js").status)
"""


def test_the_browse_page_from_a_clone_only_root_can_enter(private_clone: Path) -> None:
    out = in_clone(private_clone, [sys.executable, "-c", STACK_SCRIPT], timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "browse 200 True" in out.stdout, out.stdout + out.stderr
    assert "script 200" in out.stdout


def test_programs_run_as_other_users_from_a_clone_only_root_can_enter(private_clone: Path) -> None:
    """The suite's tests that run acmebox as uid 65534, run from the private clone."""
    tests = [f"{ROOT}/tests/test_bad_input.py", f"{ROOT}/tests/test_store.py"]
    out = in_clone(private_clone, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "-k", "acmebox_may_not_use", *tests], timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout
