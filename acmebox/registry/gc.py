"""`acmebox gc`: the registry's garbage collection, run safely while the registry keeps serving
pulls.

1. Raise the maintenance flag (maintenance.py): nginx refuses writes with 503 and Retry-After,
   the token service refuses push and delete tokens with the same message.
2. Wait `drain` seconds, so uploads that started before the flag can finish (a push token
   issued before lives on for its TTL, but nginx refuses its writes from now on).
3. Run the registry's own `garbage-collect` (distribution's mark and sweep over the storage;
   with `--delete-untagged`, also manifests no tag points at), where its binary and storage are:
   `docker-registry garbage-collect CONFIG` (Debian), `registry garbage-collect CONFIG` (the
   image), or the command given.
4. Lower the flag (also when the collection fails, times out, or the run is interrupted by
   Ctrl-C or SIGTERM, which also stop the collector) and report the bytes freed under the
   storage root.

One run at a time: an flock on `registry-maintenance.lock` beside the flag, so a second run
(the timer and a manual one) cannot lower the flag under the first. Errors: GcError (exit 1)
when another run holds the lock, the flag cannot be raised, or the collection fails or is
stopped; the flag is lowered in every case.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from acmebox.errors import AcmeboxError
from acmebox.registry.maintenance import flag_path, used_bytes, write_flag

log = logging.getLogger(__name__)


class GcError(AcmeboxError):
    """The registry's garbage-collect failed (its output's last lines are in the message)."""


@dataclass(frozen=True)
class GcResult:
    """Bytes under the storage root before and after, and the collector's summary line."""

    before: int
    after: int
    summary: str

    @property
    def freed(self) -> int:
        return max(0, self.before - self.after)


class GcStopped(GcError):
    """SIGTERM (systemctl stop, a shutdown) during the run: the collector is stopped too."""


@contextlib.contextmanager
def _one_run(certs_dir: Path) -> Iterator[None]:
    path = flag_path(certs_dir).with_name("registry-maintenance.lock")
    try:
        f = open(path, "a")  # noqa: SIM115 - closed below, which releases the lock
    except OSError as e:
        raise GcError(f"cannot take the gc lock {path}: {e.strerror or e}; nothing was collected") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GcError(f"another acmebox gc is running (it holds {path}); nothing was collected") from None
        yield


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise GcStopped("stopped by SIGTERM; the collector was stopped and the flag lowered")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _failure(argv: list[str], code: int, out: list[str]) -> GcError:
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
    # the collector's own error, not the usage text it prints after it
    errors = [line for line in out if re.search(r"error|fatal|panic", line, re.I)]
    return GcError(f"{shlex.join(argv)} {how}: " + " | ".join((errors or out)[-3:]))


def run_gc(command: list[str], storage: Path, certs_dir: Path, *, delete_untagged: bool = False,
           drain: float = 10.0, expect: float = 300.0, timeout: float = 3600.0) -> GcResult:
    """Steps 1-4 above. `command` is the garbage-collect command line without the flags this adds
    (`--delete-untagged`); `expect` is how long the run is announced for (Retry-After);
    `timeout` the seconds the collector may take before it is stopped."""
    flag = flag_path(certs_dir)
    with _one_run(certs_dir), _sigterm_stops():
        before = used_bytes(storage)
        try:
            write_flag(flag, "garbage collection", drain + expect)
        except OSError as e:  # an atomic write: no flag is left
            raise GcError(f"cannot raise the maintenance flag {flag}: {e.strerror or e}; "
                          "nothing was collected") from None
        log.info("maintenance flag %s raised: writes are refused; waiting %.0f s for uploads in flight", flag, drain)
        try:
            time.sleep(drain)
            argv = [*command, *(["--delete-untagged"] if delete_untagged else [])]
            log.info("running %s", shlex.join(argv))
            try:
                done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise GcError(f"{shlex.join(argv)} did not finish in {timeout:.0f} s (--timeout): stopped") from None
            except OSError as e:
                raise GcError(f"{shlex.join(argv)}: {e.strerror or e}") from None
            out = (done.stdout + done.stderr).strip().splitlines()
            if done.returncode != 0:
                raise _failure(argv, done.returncode, out)
            eligible = sum("eligible for deletion" in line for line in out)
            log.info("the collector finished: %d blobs and manifests eligible for deletion", eligible)
            summary = next((line for line in reversed(out) if "blobs eligible" in line or "blobs marked" in line), "")
        finally:
            flag.unlink(missing_ok=True)
            log.info("maintenance flag lowered: writes are accepted again")
    return GcResult(before, used_bytes(storage), summary)
