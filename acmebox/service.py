"""The `run` command's wiring: builds the parts, connects them, runs their tasks (or one
pass with --once) and routes SIGHUP. Decisions are made in policies.py, orders in issuance.py,
the loop in maintain.py, what is served in serving.py and reload.py.

Startup: take the state dir's lock, prepare the certs volume, record the configuration and
each certificate's verdict for `status`, write placeholders where nginx would find no
certificate, start the challenge/health/metrics server, connect to the CA (in service mode,
retrying while it is unreachable), then run one CertMaintainer per certificate and the
Reloader. SIGHUP (sent by `acmebox renew`) hands pending renew requests to the maintainers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from acmebox import control, policies, webapp
from acmebox.account import AccountFiles
from acmebox.challenges import Http01Tokens, SelfCheck
from acmebox.clock import Clock
from acmebox.config import Config, ReloadSpec
from acmebox.errors import AcmeboxError
from acmebox.fleet import Fleet
from acmebox.fsutil import atomic_write
from acmebox.issuance import CA, Issuer
from acmebox.ledger import Ledger
from acmebox.lock import InstanceLock
from acmebox.maintain import CertMaintainer
from acmebox.metrics import Metrics
from acmebox.operations import GcSettings
from acmebox.pending import PendingStore
from acmebox.reload import ONCE_ATTEMPTS, Reloader, ReloadTarget
from acmebox.resume import InFlightOrders
from acmebox.serving import Serving
from acmebox.state import StateStore
from acmebox.statedir import StateDir
from acmebox.store import CertStore
from acmebox.tlsalpn import TlsAlpnResponder

if TYPE_CHECKING:
    from acmebox.registry.events import CatalogService
    from acmebox.registry.maintenance import StorageWatch

log = logging.getLogger(__name__)


class Service:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.store = CertStore(config.certs_dir, key_mode=config.key_mode, key_group=config.key_group)
        self.statedir = StateDir(config.state_dir)
        self.states = StateStore(self.statedir)
        self.tokens = Http01Tokens()
        via = config.self_check_via
        self.self_check = SelfCheck((via.host, via.port) if via else None) if config.self_check else None
        self.tls_alpn = TlsAlpnResponder() if config.tls_alpn_listen is not None else None
        self.metrics = Metrics()
        self.metrics.watch_disks({"certs": config.certs_dir, "state": config.state_dir})
        self.fleet = None  # frontends on other nodes (Swarm): fleet.py
        if config.fleet is not None:
            self.fleet = Fleet(config.fleet, self.store, self.statedir, [s.name for s in config.certs],
                               self.metrics.registry, self.self_check)
            if self.self_check is not None:
                self.self_check = self.fleet.self_check  # type: ignore[assignment]  # the same call, every frontend
        self.ca = CA(config, AccountFiles.for_directory(self.statedir, config.directory), self.clock, self.metrics)
        dirs = (("certs dir", self.store.root), ("state dir", self.statedir.root))
        self.ca.issued_profile = self._issued_profile
        self.issuer = Issuer(self.ca, self.tokens, self.self_check, self.clock, config.max_concurrent_orders, dirs,
                             InFlightOrders(self.statedir), self.tls_alpn)
        self.reloader = Reloader(
            ReloadTarget.of(config.reload or ReloadSpec("none")), config.reload_verify,
            on_result=lambda result: self.metrics.reloads.labels(result).inc(),
            on_observed=lambda name, matches: self.serving.observed(name, matches),
        )
        self.serving = Serving(self.reloader, self.metrics, self.statedir, self.clock, self.fleet)
        self._taken_requests: set[str] = set()  # carried out, though their files could not be removed
        self.storage: StorageWatch | None = None  # the registry's storage, with --registry-storage
        self.catalog: CatalogService | None = None  # the catalog index, with --catalog-registry
        self.ready = False  # /readyz: placeholders and token certificate on disk (compose orders by it)
        self.maintainers = {
            spec.name: CertMaintainer(
                spec,
                store=self.store,
                states=self.states,
                issuer=self.issuer,
                ledger=Ledger(self.statedir, spec.name, config.directory),
                pending=PendingStore(self.statedir),
                on_renewed=self.serving.renewed,
                metrics=self.metrics,
                clock=self.clock,
                directory=config.directory,
                use_ari=config.ari,
            )
            for spec in config.certs
        }

    # -- health -------------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """(healthy, one line per certificate). Unhealthy while the CA cannot be reached at all,
        or while any certificate is not Ready (policies.READY: missing, revoked, failing, not
        what is configured, in its last 1/20 of life, not served)."""
        lines, ok = [], True
        if self.ca.error is not None:
            ok = False
            lines.append(f"CA {self.config.directory}: {self.ca.error}")
        for spec in self.config.certs:
            m, presented = self.maintainers[spec.name], self.serving.presented(spec.name)
            verdict = policies.ready(m.observe(self.store.current(spec.name), m.state, presented))
            ok &= verdict.ready
            lines.append(f"{spec.name}: {verdict.message}")
        if self.fleet is not None:
            fleet_ok, fleet_lines = self.fleet.health()
            ok, lines = ok and fleet_ok, lines + fleet_lines
        if self.storage is not None:
            storage_ok, line = self.storage.health()
            ok &= storage_ok
            lines.append(line)
        if self.catalog is not None and self.catalog.error:
            lines.append(f"catalog index: {self.catalog.error}")  # a convenience: never unhealthy for it
        return ok, "\n".join(lines)

    def readiness(self) -> tuple[bool, str]:
        """/readyz, compose's health check: ready once what nginx and the registry need to start
        is written, and as long as no certificate runs out unrenewed (policies.renewable: in its
        last tenth, and its renewal fails or the CA cannot be reached)."""
        if not self.ready:
            return False, "starting"
        lines = []
        for spec in self.config.certs:
            m = self.maintainers[spec.name]
            verdict = policies.renewable(m.observe(self.store.current(spec.name), m.state), self.ca.error)
            if verdict is not None:
                lines.append(f"{spec.name}: {verdict.message}")
        if lines:
            return False, "\n".join(lines)
        return True, "ready: certificates (or placeholders) and the token certificate are written"

    def _issued_profile(self, name: str) -> str | None:
        stored = self.store.current(name)
        return stored.meta.profile if stored is not None and not stored.placeholder else None

    # -- requests from `acmebox renew` ---------------------------------------------------------

    def handle_requests(self) -> None:
        requests = control.take_all(self.statedir, self._taken_requests)
        if self.fleet is not None:  # whoever asks wants the frontends looked at too
            self.fleet.recheck()
        if not requests:
            log.info("SIGHUP: checking every certificate now")
            for m in self.maintainers.values():
                m.request(None, force=False)
        for req in requests:
            if req.name is None:
                targets = list(self.maintainers.values())
            else:  # any of a certificate's names
                targets = [m for m in self.maintainers.values() if req.name in m.spec.names]
            if not targets:
                log.error("renew request for unknown certificate %s ignored", req.name)
                continue
            for m in targets:
                log.info("%s: renew request%s%s", m.name, " (--force)" if req.force else "",
                         " (--ignore-ledger)" if req.ignore_ledger else "")
                m.request(req.id, req.force, req.ignore_ledger)

    # -- running ------------------------------------------------------------------------------

    async def run_once(self, force: bool, ignore_ledger: bool = False) -> int:
        """One step of every maintainer, concurrently (orders bounded by --max-concurrent-orders),
        so the polling waits of one order overlap with the others'. Each certificate's failure is
        logged on its own; the first failing certificate in configuration order sets the exit code."""
        self.ca.once = True
        if self.reloader.verify is not None:  # look at what is served even when nothing is due
            for spec in self.config.certs:
                stored = self.store.current(spec.name)
                if stored is not None:
                    self.reloader.request(spec.name, stored.serial)
        try:
            async with asyncio.TaskGroup() as tasks:
                steps = [tasks.create_task(m.step_once(force, ignore_ledger)) for m in self.maintainers.values()]
        except ExceptionGroup as group:  # not a certificate's failure (those are returned): the CLI reports it
            raise group.exceptions[0] from None
        failures = [(m.name, e) for m, e in zip(self.maintainers.values(), (t.result() for t in steps), strict=True)
                    if e is not None]
        await self.reloader.wait_idle()
        if len(failures) > 1:
            log.error("%d of %d certificates failed: %s", len(failures), len(steps),
                      ", ".join(name for name, _ in failures))
        if failures:
            raise failures[0][1]
        if self.reloader.failed:
            raise AcmeboxError("the certificate(s) are stored, but the server was not reloaded onto them (see above)")
        return 0

    async def run_forever(self) -> int:
        for m in self.maintainers.values():
            m.write_placeholder()
        for spec in self.config.certs:  # what the server should present from the start
            stored = self.store.current(spec.name)
            if stored is not None:
                self.serving.present(stored)
        self.ready = True
        pid_file = self.statedir.pid
        try:
            atomic_write(pid_file, f"{os.getpid()}\n".encode())
        except OSError as e:
            log.error("cannot write %s (%s); `acmebox renew` will not find this service", pid_file, e.strerror or e)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.handle_requests)
        try:
            await self.ca.connect_until_reachable()
            log.info("managing %d certificate(s)", len(self.maintainers))
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.reloader.run())
                if self.fleet is not None:
                    tasks.create_task(self.fleet.run())
                for m in self.maintainers.values():
                    tasks.create_task(m.run_forever())
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            pid_file.unlink(missing_ok=True)
        return 0

    async def run(self, once: bool = False, force: bool = False, ignore_ledger: bool = False) -> int:
        self.statedir.create()
        with InstanceLock(self.statedir):
            self.store.prepare()  # after the lock: it removes what an interrupted save left
            try:
                control.write_configured(self.statedir, [spec.name for spec in self.config.certs])
            except OSError as e:
                log.warning("cannot record the configured certificates for `status` (%s)", e.strerror or e)
            for m in self.maintainers.values():  # `status` judges by the configuration from now on
                m.record_verdict()
            return await self._run(once, force, ignore_ledger)

    async def _run(self, once: bool, force: bool, ignore_ledger: bool) -> int:
        routes: list[webapp.RouteInstaller] = []
        if self.config.token_auth is not None:
            from acmebox.registry.maintenance import flag_path, token_guard
            from acmebox.registry.token import TokenService  # bcrypt and PyJWT only when the token service is on

            token_service = TokenService.from_settings(self.config.token_auth)
            routes += [token_guard(flag_path(self.config.certs_dir)), token_service.install]
            if self.config.catalog is not None:
                from acmebox.registry.events import CatalogService, anonymous_minter

                catalog = self.config.catalog
                if not catalog.secret:
                    log.warning("catalog index: no --catalog-secret (REGISTRY_NOTIFY_SECRET), so the registry's "
                                "events are taken from anyone who can reach acmebox; start-registry.sh sets one")
                self.catalog = CatalogService(self.statedir.catalog, catalog.registry, catalog.secret,
                                              anonymous_minter(token_service), self.config.registry_storage)
                routes.append(self.catalog.install)
        if self.config.registry_storage is not None:
            from acmebox.registry import maintenance

            flag = maintenance.flag_path(self.config.certs_dir)
            self.storage = maintenance.StorageWatch(self.config.registry_storage, self.metrics.registry, flag)
            routes.append(self.storage.install)
        if self.fleet is not None:
            routes.append(self.fleet.add_routes)
        app = webapp.build_app(self.tokens, self.health, self.metrics, routes, ready=self.readiness)
        runner = await webapp.start(app, self.config.listen)
        alpn_at = self.config.tls_alpn_listen
        if self.tls_alpn is not None and alpn_at is not None:
            await self.tls_alpn.start(alpn_at.host, alpn_at.port)
        if once:
            self.reloader.attempts = ONCE_ATTEMPTS
        reloader = asyncio.ensure_future(self.reloader.run()) if once else None
        try:
            return await (self.run_once(force, ignore_ledger) if once else self.run_forever())
        finally:
            if reloader is not None:
                reloader.cancel()
            await self.ca.close()
            if self.tls_alpn is not None:
                await self.tls_alpn.close()
            await runner.cleanup()


def collect_garbage(settings: GcSettings) -> int:
    """`acmebox gc`: the registry's garbage collection in read-only maintenance (registry/gc.py);
    prints the bytes freed. GcError when the collector fails."""
    from acmebox.registry.gc import run_gc

    result = run_gc(list(settings.command), settings.storage, settings.certs_dir,
                    delete_untagged=settings.delete_untagged, drain=settings.drain, expect=settings.expect,
                    timeout=settings.timeout)
    print(f"gc: freed {result.freed} bytes ({result.before} -> {result.after} under {settings.storage})"
          + (f"; {result.summary}" if result.summary else ""))
    return 0
