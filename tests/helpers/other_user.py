"""Running a program as another user (nobody, a reader's group) from wherever the clone is,
also from a directory only root can enter (a clone in /root, which is 0700): there, the
program (the venv's python included) is out of that user's reach. The command then runs in a
private mount namespace in which the clone is also bind-mounted at a directory in /tmp that
anyone can enter, and its paths are rewritten to that view."""

from __future__ import annotations

import atexit
import contextlib
import tempfile
from pathlib import Path

from tests.helpers import ROOT

_VIEW: Path | None = None


def reachable_by_others(path: Path) -> bool:
    """Whether a user who is neither owner nor in the group can walk to `path`."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


def _view() -> Path:
    global _VIEW
    if _VIEW is None:
        _VIEW = Path(tempfile.mkdtemp(prefix="acmebox-view-", dir="/tmp"))
        _VIEW.chmod(0o755)
        atexit.register(_remove_view, _VIEW)
    return _VIEW


def _remove_view(view: Path) -> None:
    with contextlib.suppress(OSError):  # empty outside the namespaces that mounted on it
        view.rmdir()


def as_user(uid: int, gid: int, command: list[str]) -> list[str]:
    """`command` run as `uid`:`gid` (no supplementary groups), with acmebox importable (from
    PYTHONPATH, not the editable install's path, which may be out of reach)."""
    if reachable_by_others(ROOT):
        return ["env", f"PYTHONPATH={ROOT}", "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command]
    view = _view()
    rewritten = [str(view / Path(arg).relative_to(ROOT)) if arg.startswith(f"{ROOT}/") else arg for arg in command]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$0" "$1" && shift && '
            'exec "$@"', str(ROOT), str(view), "env", f"PYTHONPATH={view}", "setpriv", f"--reuid={uid}",
            f"--regid={gid}", "--clear-groups", *rewritten]
