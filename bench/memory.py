"""What acmebox's resident set is made of, with the token service on (issue 22's goal: <= 48 MB).

    .venv/bin/python bench/memory.py [--logins 64] [--env NAME=VALUE ...]

Brings up the loopback stack (tests/helpers/stack.py: nginx, the registry, acmebox with the
compose file's settings and the token service, a Pebble certificate), sends --logins logins
(bcrypt checks, token signing) through nginx, waits for the process to settle, and reads
/proc/PID/smaps: the resident set split into anonymous pages (the heap, arenas, stacks) and
file-backed ones per mapped file (libpython, cryptography's Rust bindings, libcrypto, ...),
with the thread count. `--env` adds variables to acmebox's environment (e.g.
MALLOC_ARENA_MAX=2) to weigh a lever against the default in the same way.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.helpers

from tests.helpers import stack as stack_helper  # noqa: E402
from tests.helpers.process import ServiceProcess  # noqa: E402
from tests.helpers.stack import USERS, running_stack  # noqa: E402


def smaps_breakdown(pid: int) -> dict[str, int]:
    """Resident KiB per mapping kind: "anon" (private anonymous, heap and stacks included) and
    one entry per mapped file's name; "total" is VmRSS."""
    out: collections.Counter[str] = collections.Counter()
    name = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].endswith(":"):  # a mapping's header line
            path = fields[5] if len(fields) > 5 else ""
            name = Path(path).name if path.startswith("/") else "anon"
        elif fields[0] == "Rss:":
            out[name] += int(fields[1])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "Threads:")):
            out["total" if line.startswith("VmRSS") else "threads"] = int(line.split()[1])
    return dict(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=64, help="logins through nginx before reading")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for acmebox's environment")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)

    class WithEnv(ServiceProcess):
        """acmebox as the stack starts it, with --env's variables added."""

        def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
            super().__init__(cmd, log, env={**(env or os.environ), **extra})

    setattr(stack_helper, "ServiceProcess", WithEnv)  # noqa: B010 (the stack helper takes no environment)
    with tempfile.TemporaryDirectory(prefix="acmebox-memory-") as tmp, running_stack(Path(tmp) / "stack") as stack:
        users = list(USERS.items())
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: stack.token("repository:bench/m:pull,push", basic=users[i % len(users)]),
                          range(args.logins)))
        time.sleep(2)
        parts = smaps_breakdown(stack.acmebox.proc.pid)
    total, threads = parts.pop("total"), parts.pop("threads")
    print(f"acmebox resident {total / 1024:.1f} MiB ({total * 1024 / 1e6:.1f} MB), {threads} threads"
          f"{' with ' + ' '.join(args.env) if args.env else ''}")
    for name, kib in sorted(parts.items(), key=lambda kv: -kv[1]):
        if kib >= 256:
            print(f"  {kib / 1024:6.1f} MiB  {name}")
    rest = sum(k for k in parts.values() if k < 256)
    print(f"  {rest / 1024:6.1f} MiB  {sum(1 for k in parts.values() if k < 256)} smaller mappings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
