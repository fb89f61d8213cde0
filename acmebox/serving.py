"""Between the maintainers and the reloader: what the front door serves. A maintainer's new
certificate goes to the reloader (and, when someone waits in `acmebox renew`, the outcome comes
back in a few words); what the reloader observes is published (metrics), recorded for `status`
in another process (control.write_served), and given to the policies as `Presented`. With
frontends on other nodes (a `Fleet`, Swarm), a new certificate is also wanted from every frontend
and `acmebox renew` is answered once each of them presents it."""

from __future__ import annotations

import asyncio
import logging

from acmebox import control, policies
from acmebox.clock import Clock
from acmebox.fleet import Fleet
from acmebox.metrics import Metrics
from acmebox.reload import Reloader
from acmebox.statedir import StateDir
from acmebox.store import StoredCert

log = logging.getLogger(__name__)

CONFIRM_WAIT = 60.0  # seconds `acmebox renew` is kept waiting for the reload's outcome


class Serving:
    def __init__(self, reloader: Reloader, metrics: Metrics, statedir: StateDir, clock: Clock,
                 fleet: Fleet | None = None) -> None:
        self.reloader = reloader
        self.fleet = fleet
        self.metrics = metrics
        self.statedir = statedir
        self.clock = clock

    def presented(self, name: str) -> policies.Presented | None:
        """What the front door presented for `name` at the last look (None: not looked)."""
        served = self.reloader.served.get(name)
        if served is None or self.reloader.matches(name) is None:
            return None
        serial = f"{served.serial:x}" if served.serial is not None else None
        return policies.Presented(serial, served.error, str(self.reloader.verify))

    def observed(self, name: str, matches: bool) -> None:
        """The reloader's look at the front door (its on_observed)."""
        self.metrics.served_matches.labels(name).set(int(matches))
        seen = self.reloader.served.get(name)
        self.metrics.set_time(self.metrics.served_expiry, name, seen.not_after if seen is not None else None)
        now = self.clock.now().isoformat()
        served = {n: {"serial": f"{s.serial:x}" if s.serial is not None else None, "error": s.error, "at": now}
                  for n, s in self.reloader.served.items()}
        try:
            control.write_served(self.statedir, served)
        except OSError as e:
            log.debug("cannot record what is served: %s", e)

    async def renewed(self, stored: StoredCert, confirm: bool) -> str:
        """Tell the reloader; with `confirm` (someone waits in `acmebox renew`), wait a while for
        its outcome and say it. Returns what is known about nginx, in a few words."""
        self.reloader.request(stored.name, stored.serial)
        if self.fleet is not None:
            return await self._fleet_took(stored, confirm)
        if self.reloader.target.kind == "none" and self.reloader.verify is None:
            return "no reload configured"
        if not confirm:
            return "reload requested"
        if self.reloader.verify is None:
            try:
                await asyncio.wait_for(self.reloader.wait_idle(), CONFIRM_WAIT)
            except TimeoutError:
                return f"but not served: the reload has not succeeded after {CONFIRM_WAIT:.0f}s (see the log)"
            return "the server was reloaded (not verified: no --reload-verify)"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_WAIT
        while not self.reloader.matches(stored.name):  # another name's trouble does not hold this answer
            if loop.time() > deadline:
                return f"but not served: the server does not present it after {CONFIRM_WAIT:.0f}s (see the log)"
            await asyncio.sleep(0.2)
        return "the server serves it (verified)"

    def present(self, stored: StoredCert) -> None:
        """What the front door(s) should present from the start (the service's first step)."""
        self.reloader.request(stored.name, stored.serial)
        if self.fleet is not None and not stored.placeholder:
            self.fleet.want(stored.name, stored.serial)

    async def _fleet_took(self, stored: StoredCert, confirm: bool) -> str:
        assert self.fleet is not None
        self.fleet.want(stored.name, stored.serial)
        if not confirm:
            return "the frontends' followers fetch it"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_WAIT
        while not self.fleet.all_serve(stored.name):
            if loop.time() > deadline:
                return f"but not every frontend serves it after {CONFIRM_WAIT:.0f}s (see /healthz)"
            await asyncio.sleep(0.5)
        return "every frontend serves it (verified)"
