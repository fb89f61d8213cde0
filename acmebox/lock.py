"""The instance lock: one acmebox per state dir. Two instances on one state dir would order
the same certificate at once and fail each other's challenges, and the stores (state, ledger,
pending) take no locks of their own. An flock on <state>/acmebox.lock, held for the process's
life and released by the kernel when it ends, however it ends; the file holds the holder's PID
for the error the second instance gets."""

from __future__ import annotations

import fcntl
import os
from types import TracebackType
from typing import IO

from acmebox.errors import ConfigError
from acmebox.statedir import StateDir


class InstanceLock:
    """`with InstanceLock(state):` holds the lock; ConfigError (naming the holder's PID) when
    another process holds it, or when the state dir cannot take the lock file."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        path, root = self.state.lock, self.state.root
        try:
            f = open(path, "a+")  # noqa: SIM115 - held open on purpose, closed in release()
        except OSError as e:
            raise ConfigError(f"state dir {root} is not usable: {e.strerror or e}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(
                f"state dir {root} is in use by another acmebox (PID {holder}); run one instance per state dir"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
