"""The `run` command: the long-running sidecar (or one pass with --once).

Startup: prepare the certs volume, write placeholders where nginx would find no certificate,
start the challenge/health/metrics server, connect to the CA (in service mode, retrying while
it is unreachable), then run one CertMaintainer per certificate and the Reloader. SIGHUP (sent
by `acmebox renew`) hands pending renew requests to the maintainers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from acme import crypto_util

from acmebox import control, keys, placeholder, renewal, webapp
from acmebox.account import AccountFiles
from acmebox.challenges import Http01Tokens, SelfCheck
from acmebox.client import AcmeClient
from acmebox.clock import Clock
from acmebox.config import CertSpec, Config
from acmebox.errors import AccountRefused, AcmeboxError, CAProblem, CAUnreachable, ConfigError
from acmebox.fsutil import atomic_write
from acmebox.maintain import CertMaintainer, why_not_reusable
from acmebox.metrics import Metrics
from acmebox.pending import Received
from acmebox.reload import ONCE_ATTEMPTS, Reloader, ReloadTarget
from acmebox.state import StateStore
from acmebox.store import CertStore, StoredCert

log = logging.getLogger(__name__)

CONNECT_RETRY = (5, 30, 120, 600)  # seconds between attempts to reach an unreachable CA
CONFIRM_WAIT = 60.0  # seconds `acmebox renew` is kept waiting for the reload's outcome
TRANSIENT = {"badNonce", "serverInternal", "rateLimited"}  # problems at connect that waiting may fix


def account_deactivated(e: CAProblem) -> bool:
    """RFC 8555 section 7.3.6: requests signed by a deactivated account's key are refused."""
    return e.short_type == "unauthorized" and "deactivated" in e.detail.lower()


class Service:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.store = CertStore(config.certs_dir, key_mode=config.key_mode, key_group=config.key_group)
        self.states = StateStore(config.state_dir)
        self.tokens = Http01Tokens()
        via = config.self_check_via
        self.self_check = SelfCheck((via.host, via.port) if via else None) if config.self_check else None
        self.metrics = Metrics()
        self.fleet = None
        if config.fleet is not None:
            from acmebox.fleet import Fleet

            self.fleet = Fleet(config.fleet, self.store, config.state_dir, [s.name for s in config.certs],
                               self.metrics.registry, self.self_check)  # fmt: skip
            if self.self_check is not None:
                self.self_check = self.fleet.self_check  # type: ignore[assignment]  # same call
        self.account = AccountFiles.for_directory(config.state_dir, config.directory)
        self.reloader = Reloader(
            config.reload or ReloadTarget("none"), config.reload_verify,
            on_result=lambda result: self.metrics.reloads.labels(result).inc(),
            on_observed=self._observed,
        )  # fmt: skip
        self._client: AcmeClient | None = None
        self.ready = False  # /readyz: placeholders and token certificate on disk (compose orders by it)
        self._connected = asyncio.Event()
        self._once = False
        self._connect_lock = asyncio.Lock()
        self._connect_error: AcmeboxError | None = None
        self._order_slots = asyncio.Semaphore(config.max_concurrent_orders)
        self.ca_error: str | None = "not connected to the CA yet"
        self.maintainers = {
            spec.name: CertMaintainer(
                spec,
                store=self.store,
                states=self.states,
                client=self.client,
                issue=self.issue,
                on_renewed=self._renewed,
                metrics=self.metrics,
                clock=self.clock,
                directory=config.directory,
                use_ari=config.ari,
            )
            for spec in config.certs
        }

    # -- health -------------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """(healthy, one line per certificate). Unhealthy while a certificate is missing, in
        its last 1/20 of life, or failing (its last attempt failed or was held back), or while
        the CA cannot be reached at all."""
        now = self.clock.now()
        lines, ok = [], True
        if self.ca_error is not None:
            ok = False
            lines.append(f"CA {self.config.directory}: {self.ca_error}")
        for spec in self.config.certs:
            stored = self.store.current(spec.name)
            state = self.maintainers[spec.name].state
            if stored is None or stored.placeholder:
                ok = False
                line = f"{spec.name}: no certificate yet"
            elif f"{stored.serial:x}" in self.states.revoked():
                ok = False
                line = f"{spec.name}: serial {stored.serial:x} is revoked; being replaced"
            elif now >= renewal.last_call(stored.not_before, stored.not_after):
                ok = False
                line = f"{spec.name}: expiring {stored.not_after.isoformat()}"
            else:
                line = f"{spec.name}: valid until {stored.not_after.isoformat()}"
            served = self.reloader.served.get(spec.name)
            if stored is not None and served is not None and self.reloader.matches(spec.name) is False:
                ok = False
                door = self.reloader.verify
                line += (f"; but {door} serves serial {served.serial:x}, not {stored.serial:x}"
                         if served.serial is not None else f"; but {door} does not answer ({served.error})")
            if state is not None and state.last_error is not None and state.next_attempt is not None:
                ok = False
                line += f"; failing: {state.last_error[:200]} (next attempt {state.next_attempt.isoformat()})"
            lines.append(line)
        if self.fleet is not None:
            fleet_ok, fleet_lines = self.fleet.health()
            ok, lines = ok and fleet_ok, lines + fleet_lines
        return ok, "\n".join(lines)

    # -- the CA -------------------------------------------------------------------------------

    async def client(self) -> AcmeClient:
        """The connected client. The service connects at start and maintainers wait for it;
        `--once` connects on first need, so a run with nothing due sends no request, and a
        connect failure becomes the asking certificate's failure, with its persisted backoff."""
        if self._once:
            async with self._connect_lock:
                if self._client is None and self._connect_error is None:
                    try:
                        await self.connect()
                    except CAUnreachable as e:  # exit 2 in --once: most likely a wrong --directory
                        self._connect_error = ConfigError(f"{self.config.directory}: {e}")
                    except CAProblem as e:
                        transient = e.retry_after is not None or e.short_type in TRANSIENT
                        self._connect_error = e if transient else AccountRefused(e.typ, e.detail)
                    except AcmeboxError as e:
                        self._connect_error = e
                if self._connect_error is not None:
                    raise self._connect_error
        await self._connected.wait()
        assert self._client is not None
        return self._client

    async def connect(self) -> None:
        client = AcmeClient(self.config.directory, self.config.ca_bundle)
        try:
            await client.connect()
            self._check_profiles(client)
            await self._login(client)
        except BaseException:
            await client.close()
            raise
        self._client = client
        self._connected.set()

    async def _login(self, client: AcmeClient) -> None:
        """Find or register the account. An account the CA reports as deactivated (after a key
        leak, by the CA or an operator) cannot be used again, nor can its key register anew:
        the key is retired and a new account registered, with a warning that says so."""
        eab = (self.config.eab_kid, self.config.eab_hmac_key) if self.config.eab_kid else None
        key = self.account.load_or_create_key()
        try:
            url = await client.login(key, self.config.email, eab)  # type: ignore[arg-type]
        except CAProblem as e:
            if not account_deactivated(e):
                raise
            try:
                retired = self.account.retire_key(self.clock.now())
            except OSError as err:
                raise AcmeboxError(f"the CA deactivated account {client.account_url or ''} ({e.detail}), "
                                   f"and its key cannot be moved aside: {err.strerror or err}") from None  # fmt: skip
            log.warning("the CA reports the ACME account as deactivated (%s); its key is kept as %s and a new "
                        "account is registered", e.detail, retired)  # fmt: skip
            key = self.account.load_or_create_key()
            url = await client.login(key, self.config.email, eab)  # type: ignore[arg-type]
        try:
            self.account.save_url(url, self.config.directory)
        except OSError as e:  # the URL is found again from the key at the next start
            log.warning("cannot record the account URL in %s (%s)", self.account.dir, e.strerror or e)

    async def connect_until_reachable(self) -> None:
        """Connect, retrying whatever goes wrong (the CA down, in maintenance, rate limiting,
        answering nonsense; the state dir full) with growing waits and the CA's Retry-After.
        Meanwhile the challenge server and /healthz run and the certificates on disk are served."""
        for attempt in range(10**9):
            try:
                await self.connect()
                self.ca_error = None
                return
            except (AcmeboxError, OSError) as e:
                wait = float(CONNECT_RETRY[min(attempt, len(CONNECT_RETRY) - 1)])
                if isinstance(e, CAProblem) and e.retry_after is not None:
                    wait = max(wait, min(e.retry_after, 86400.0))
                self.ca_error = str(e)
                self.metrics.failures.labels("-", "connect").inc()
                log.error("%s: %s; trying again in %.0fs (certificates on disk stay served)",
                          self.config.directory, e, wait)  # fmt: skip
                await asyncio.sleep(wait)

    def _check_profiles(self, client: AcmeClient) -> None:
        offered = client.profiles
        for spec in self.config.certs:
            if spec.profile and offered is not None and spec.profile not in offered:
                raise ConfigError(
                    f"profile {spec.profile!r} is not offered by {self.config.directory} "
                    f"(it offers: {', '.join(sorted(offered)) or 'none'})"
                )
            if spec.profile and offered is None:
                log.warning("%s: the CA announces no profiles; asking for %r anyway", spec.name, spec.profile)

    # -- issuing ------------------------------------------------------------------------------

    async def issue(self, client: AcmeClient, spec: CertSpec, replaces: str | None = None) -> Received:
        async with self._order_slots:
            return await self._issue(client, spec, replaces)

    async def _issue(self, client: AcmeClient, spec: CertSpec, replaces: str | None) -> Received:
        key_pem = keys.to_pem(keys.generate(spec.key_type))
        csr_pem = crypto_util.make_csr(key_pem, list(spec.names))
        try:
            fullchain = await client.issue(spec.names, csr_pem, self.tokens, spec.profile, replaces, self.self_check)
        except CAProblem as e:
            if e.short_type != "accountDoesNotExist" and not account_deactivated(e):
                raise
            log.warning("the CA no longer knows account %s (%s); logging in again", client.account_url, e.detail)
            await self._login(client)
            fullchain = await client.issue(spec.names, csr_pem, self.tokens, spec.profile, replaces, self.self_check)
        meta = {
            "names": list(spec.names),
            "key_type": spec.key_type,
            "profile": spec.profile,
            "directory": self.config.directory,
            "account": client.account_url,
            "issued_at": self.clock.now().isoformat(),
            "replaced": replaces,
            "placeholder": False,
        }
        log.info("%s: certificate issued by the CA", spec.name)
        return Received(key_pem, fullchain.encode(), meta)

    def _observed(self, name: str, matches: bool) -> None:
        self.metrics.served_matches.labels(name).set(int(matches))
        seen = self.reloader.served.get(name)
        self.metrics.set_time(self.metrics.served_expiry, name, seen.not_after if seen is not None else None)
        now = self.clock.now().isoformat()
        served = {n: {"serial": f"{s.serial:x}" if s.serial is not None else None, "error": s.error, "at": now}
                  for n, s in self.reloader.served.items()}  # fmt: skip
        try:
            control.write_served(self.config.state_dir, served)
        except OSError as e:
            log.debug("cannot record what is served: %s", e)

    async def _renewed(self, stored: StoredCert, confirm: bool) -> str:
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

    def write_placeholders(self) -> None:
        for spec in self.config.certs:
            if self.store.current(spec.name) is None:
                key_pem, cert_pem = placeholder.make(spec.names, spec.key_type, self.clock.now())
                try:
                    self.store.save(spec.name, key_pem, cert_pem, {"placeholder": True, "names": list(spec.names)})
                except OSError as e:
                    log.error("%s: cannot write a placeholder to %s (%s); nginx may not start until it can",
                              spec.name, self.store.root, e.strerror or e)  # fmt: skip
                    continue
                log.info("%s: wrote a self-signed placeholder so nginx can start", spec.name)

    # -- requests from `acmebox renew` ---------------------------------------------------------

    def handle_requests(self) -> None:
        requests = control.take_all(self.config.state_dir)
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
                log.info("%s: renew request%s", m.name, " (--force)" if req.force else "")
                m.request(req.id, req.force)

    # -- running ------------------------------------------------------------------------------

    async def run_once(self, force: bool) -> int:
        """One step of every maintainer, concurrently (orders bounded by --max-concurrent-orders),
        so the polling waits of one order overlap with the others'. Each certificate's failure is
        logged on its own; the first failing certificate in configuration order sets the exit code."""
        self._once = True
        if self.reloader.verify is not None:  # look at what is served even when nothing is due
            for spec in self.config.certs:
                stored = self.store.current(spec.name)
                if stored is not None:
                    self.reloader.request(spec.name, stored.serial)
        try:
            async with asyncio.TaskGroup() as tasks:
                steps = [tasks.create_task(self._step_once(m, force)) for m in self.maintainers.values()]
        except ExceptionGroup as group:  # not a certificate's failure (those are returned): the CLI reports it
            raise group.exceptions[0] from None
        failures = [f for f in (t.result() for t in steps) if f is not None]
        await self.reloader.wait_idle()
        if len(failures) > 1:
            log.error("%d of %d certificates failed: %s", len(failures), len(steps),
                      ", ".join(name for name, _ in failures))  # fmt: skip
        if failures:
            raise failures[0][1]
        if self.reloader.failed:
            raise AcmeboxError("the certificate(s) are stored, but the server was not reloaded onto them (see above)")
        return 0

    async def _step_once(self, m: CertMaintainer, force: bool) -> tuple[str, AcmeboxError] | None:
        """(name, error) when this certificate is not in place after its step, else None."""
        if force:
            m.request("run --force-renew", force=True)
        try:
            plan = await m.step(eager=True)
        except AcmeboxError as e:  # step() logged and recorded it
            return m.name, e
        stored = self.store.current(m.name)
        missing = why_not_reusable(m.spec, stored, self.clock.now(), self.config.directory, self.states.revoked())
        if plan is not None and stored is not None and missing is None:
            log.info("%s: certificate on disk is valid until %s (serial %x); nothing ordered",
                     m.name, stored.not_after.isoformat(), stored.serial)  # fmt: skip
        if missing is not None and plan is not None:
            error = AcmeboxError(
                f"{m.name}: {missing}; next attempt {plan.at:%Y-%m-%dT%H:%M:%SZ} because of {plan.reason} "
                f"(--force-renew tries now)"
            )
            log.error("%s", error)
            return m.name, error
        return None

    async def run_forever(self) -> int:
        self.write_placeholders()
        for spec in self.config.certs:  # what the server should present from the start
            stored = self.store.current(spec.name)
            if stored is not None:
                self.reloader.request(spec.name, stored.serial)
                if self.fleet is not None and not stored.placeholder:
                    self.fleet.want(spec.name, stored.serial)
        self.ready = True
        pid_file = control.pid_file(self.config.state_dir)
        try:
            atomic_write(pid_file, f"{os.getpid()}\n".encode())
        except OSError as e:
            log.error("cannot write %s (%s); `acmebox renew` will not find this service", pid_file, e.strerror or e)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.handle_requests)
        try:
            await self.connect_until_reachable()
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

    async def run(self, once: bool = False, force: bool = False) -> int:
        try:
            self.config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"state dir {self.config.state_dir} is not usable: {e.strerror or e}") from None
        with control.hold_lock(self.config.state_dir):
            self.store.prepare()  # after the lock: it removes what an interrupted save left
            try:
                control.write_configured(self.config.state_dir, [spec.name for spec in self.config.certs])
            except OSError as e:
                log.warning("cannot record the configured certificates for `status` (%s)", e.strerror or e)
            return await self._run(once, force)

    async def _run(self, once: bool, force: bool) -> int:
        token_service = None
        if self.config.token_auth is not None:
            from acmebox import registry_token  # bcrypt and PyJWT only when the token service is on

            t = self.config.token_auth
            token_service = registry_token.build(t.htpasswd, t.key, t.cert, t.service, t.issuer, t.ttl, t.acl,
                                                 t.trusted_proxies)  # fmt: skip
        app = webapp.build_app(self.tokens, self.health, self.metrics, token_service, ready=lambda: self.ready,
                               routes=[self.fleet.add_routes] if self.fleet is not None else [])  # fmt: skip
        runner = await webapp.start(app, self.config.listen)
        if once:
            self.reloader.attempts = ONCE_ATTEMPTS
        reloader = asyncio.ensure_future(self.reloader.run()) if once else None
        try:
            return await (self.run_once(force) if once else self.run_forever())
        finally:
            if reloader is not None:
                reloader.cancel()
            if self._client is not None:
                await self._client.close()
            await runner.cleanup()
