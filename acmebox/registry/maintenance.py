"""The registry's read-only maintenance and its storage use.

- The maintenance flag: a small JSON file (`registry-maintenance` in the certs dir, the volume
  nginx, acmebox and the gc run all see) saying why and until when writes are refused. While it
  exists, nginx answers every write to `/v2/` with 503 and Retry-After (the template checks the
  file), and the token service refuses push and delete scopes with the same clear message, so a
  client gets it at login already; pulls go on. `acmebox gc` writes it for its run (gc.py).
- Storage use: bytes under the registry's storage root and the free space of its filesystem,
  as gauges on /metrics and as a line of /healthz that warns before the disk is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from acmebox.fsutil import atomic_write

FLAG_NAME = "registry-maintenance"
WRITE_ACTIONS = {"push", "delete", "*"}
# /healthz warns from WARN_USED of the registry's filesystem in use, fails from FAIL_USED.
WARN_USED, FAIL_USED = 0.90, 0.97
STORAGE_EVERY = 300.0  # seconds between walks of the storage root
FRESH_FOR = 60.0  # seconds the browse page's figure may be old before it asks for a walk


def flag_path(certs_dir: Path) -> Path:
    return certs_dir / FLAG_NAME


@dataclass(frozen=True)
class Maintenance:
    """What the flag says: `reason`, `until` (UNIX seconds, the expected end)."""

    reason: str
    until: float

    def retry_after(self, now: float | None = None) -> int:
        return max(5, math.ceil(self.until - (now if now is not None else time.time())))

    def message(self) -> str:
        end = dt.datetime.fromtimestamp(self.until, dt.UTC).strftime("%H:%M:%S UTC")
        return (f"the registry is read-only for maintenance ({self.reason}) until about {end}; "
                "pulls work; push and delete again after that")


def read_flag(path: Path) -> Maintenance | None:
    """The flag at `path`, None when there is none; an unreadable flag still means maintenance."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return Maintenance("unknown", time.time() + 60)
    try:
        data: dict[str, Any] = json.loads(raw)
        return Maintenance(str(data.get("reason", "maintenance")), float(data["until"]))
    except (ValueError, KeyError, TypeError):
        return Maintenance("maintenance", time.time() + 60)


def write_flag(path: Path, reason: str, seconds: float) -> Maintenance:
    """Raise the flag (0644: nginx's workers read it) for about `seconds`."""
    m = Maintenance(reason, time.time() + seconds)
    atomic_write(path, json.dumps({"reason": m.reason, "until": m.until}).encode(), 0o644)
    return m


def token_guard(flag: Path) -> Callable[[web.Application], None]:
    """A route installer: while the flag is up, token requests for push or delete scopes get 503
    with Retry-After and the flag's message, before any password is checked."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.path == "/auth/token":
            wanted = {a for raw in request.query.getall("scope", []) for s in raw.split(" ")
                      for a in s.rpartition(":")[2].split(",")}
            m = read_flag(flag) if wanted & WRITE_ACTIONS else None
            if m is not None:
                return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": m.message()}]},
                                         status=503, headers={"Retry-After": str(m.retry_after())})
        return await handler(request)

    def install(app: web.Application) -> None:
        app.middlewares.append(guard)

    return install


def used_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (what `du --apparent-size` counts), 0 if absent."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def judge(root: Path, fraction: float | None, error: str | None) -> tuple[bool, str]:
    """(ok, line): a warning from WARN_USED of the filesystem in use, not ok from FAIL_USED or
    when unreadable. The one verdict /healthz and `acmebox status` give."""
    if error:
        return False, error
    if fraction is None:
        return True, f"registry storage {root}: not measured yet"
    pct = f"{fraction:.0%} of its filesystem used"
    if fraction >= 0.999:
        return False, f"registry storage {root}: full; pushes fail (delete, then `acmebox gc`)"
    if fraction >= FAIL_USED:
        return False, f"registry storage {root}: {pct}; pushes will fail soon (delete, then `acmebox gc`)"
    if fraction >= WARN_USED:
        return True, f"registry storage {root}: WARNING {pct} (delete old tags, then `acmebox gc`)"
    return True, f"registry storage {root}: {pct}"


def judge_now(root: Path) -> tuple[bool, str]:
    """judge() on the filesystem's use read now (statvfs only: no walk), for `acmebox status`."""
    if root.exists() and not root.is_dir():
        return False, f"registry storage {root}: not a directory (the registry's storage root)"
    try:
        size, free = filesystem(root)
    except OSError as e:
        return False, f"registry storage {root}: {e.strerror or e}"
    return judge(root, used_fraction(size, free), None)


def filesystem(root: Path) -> tuple[int, int]:
    """(size, free) in bytes of the filesystem `root` is on (free: what unprivileged writers get).
    OSError when it cannot be read."""
    st = os.statvfs(root)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def used_fraction(size: int, free: int) -> float | None:
    return 1 - free / size if size else None


class StorageWatch:
    """The registry's storage root, looked at every STORAGE_EVERY seconds (in a thread: a walk
    of a large registry takes a while): gauges `acmebox_registry_storage_bytes` (under the root),
    `acmebox_registry_filesystem_bytes{kind="size"|"free"}`; `health()` for /healthz."""

    def __init__(self, root: Path, registry: CollectorRegistry, flag: Path | None = None) -> None:
        self.root = root
        self.flag = flag
        self.used = Gauge("acmebox_registry_storage_bytes", "bytes under the storage root", registry=registry)
        self.fs = Gauge("acmebox_registry_filesystem_bytes", "the registry filesystem's size and free space",
                        ["kind"], registry=registry)
        self.error: str | None = None
        self.usage: dict[str, int] | None = None  # what /ui-index/storage answers, after a look
        self.walking = asyncio.Lock()

    def look(self) -> None:
        try:
            size, free = filesystem(self.root)
        except OSError as e:
            self.error = f"registry storage {self.root}: {e.strerror or e}"
            return
        self.fs.labels("size").set(size)
        self.fs.labels("free").set(free)
        used = used_bytes(self.root)
        self.used.set(used)
        self.usage = {"used_bytes": used, "filesystem_size": size, "filesystem_free": free,
                      "measured": int(time.time())}
        self.error = None

    def health(self) -> tuple[bool, str]:
        """(ok, line) for /healthz: judge()'s verdict on the last look."""
        u = self.usage
        return judge(self.root, used_fraction(u["filesystem_size"], u["filesystem_free"]) if u else None, self.error)

    async def answer(self, request: web.Request) -> web.Response:
        """`GET /ui-index/storage` (the browse page's status line): `{"used_bytes", "filesystem_size",
        "filesystem_free", "measured"}` (bytes; UNIX seconds), 503 before the first look and while the
        storage cannot be read. A figure
        older than FRESH_FOR is looked at again first: one walk at a time, however many ask."""
        if self.usage is None or time.time() - self.usage["measured"] > FRESH_FOR:
            async with self.walking:
                if self.usage is None or time.time() - self.usage["measured"] > FRESH_FOR:
                    await asyncio.to_thread(self.look)
        if self.usage is None or self.error:  # never a figure of storage that is gone
            return web.json_response({"error": self.error or "not measured yet"}, status=503,
                                     headers={"Retry-After": "10"})
        return web.json_response(self.usage, headers={"Cache-Control": "no-cache"})

    def install(self, app: web.Application) -> None:
        app.router.add_get("/ui-index/storage", self.answer)

        async def background(app: web.Application) -> AsyncIterator[None]:
            async def loop() -> None:
                # Looked at again at once when a maintenance run (gc) starts and ends: what it
                # freed shows on /metrics.
                last, was_flagged = -math.inf, False
                while True:
                    flagged = self.flag is not None and self.flag.exists()
                    if time.monotonic() - last >= STORAGE_EVERY or was_flagged != flagged:
                        await asyncio.to_thread(self.look)
                        last = time.monotonic()
                    was_flagged = flagged
                    await asyncio.sleep(2)

            task = asyncio.create_task(loop())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(background)
