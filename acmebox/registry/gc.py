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
4. Lower the flag (also when the collection fails or is interrupted) and report the bytes freed
   under the storage root.

Errors: GcError (exit 1) when the collection fails; the flag is lowered in every case.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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


def run_gc(command: list[str], storage: Path, certs_dir: Path, *, delete_untagged: bool = False,
           drain: float = 10.0, expect: float = 300.0) -> GcResult:
    """Steps 1-4 above. `command` is the garbage-collect command line without the flags this adds
    (`--delete-untagged`); `expect` is how long the run is announced for (Retry-After)."""
    flag = flag_path(certs_dir)
    before = used_bytes(storage)
    write_flag(flag, "garbage collection", drain + expect)
    log.info("maintenance flag %s raised: writes are refused; waiting %.0f s for uploads in flight", flag, drain)
    try:
        time.sleep(drain)
        argv = [*command, *(["--delete-untagged"] if delete_untagged else [])]
        log.info("running %s", shlex.join(argv))
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        out = (done.stdout + done.stderr).strip().splitlines()
        if done.returncode != 0:
            raise GcError(f"{shlex.join(argv)} exited {done.returncode}: " + " | ".join(out[-3:]))
        summary = next((line for line in reversed(out) if "blobs eligible" in line or "blobs marked" in line), "")
    finally:
        flag.unlink(missing_ok=True)
        log.info("maintenance flag lowered: writes are accepted again")
    return GcResult(before, used_bytes(storage), summary)
