"""Crash-safe file writes: a file is either its old content or its new content, never a mix."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (which must not exist) with `mode` from the first byte on, and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or the caller may want it wider
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: write a temporary file beside it, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def space_problem(path: Path, min_free: int) -> str | None:
    """None when `path` (a directory) takes a new file and has `min_free` bytes free for an
    unprivileged writer; otherwise what is wrong, in a few words."""
    probe = path / f".acmebox-probe-{os.getpid()}"
    try:
        st = os.statvfs(path)
        write_new(probe, b"\0", 0o600)
    except OSError as e:
        return f"not writable ({e.strerror or e})"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        return f"only {free} bytes free (at least {min_free} needed)"
    return None
