"""Getting certificates from the CA: the connection and the account (CA), and the orders
(Issuer). What an order brings is a `Received` (pending.py), not yet stored: the maintainer
keeps it and stores it (maintain.py).

- CA: connects to the directory, checks the configured profiles against what it offers, finds
  or registers the account (a deactivated account's key is retired and a new one registered),
  and records the account URL. The service connects at start, retrying while the CA cannot be
  reached; `run --once` connects on first need, so a run with nothing due sends no request.
- Issuer: the preflight (the certs and state dirs can take a certificate, the local clock
  agrees with the CA's); one order at a time per slot (--max-concurrent-orders); a fresh key
  of the configured type and a CSR for the names; a new login when the CA no longer knows the
  account; the CertMeta record (store.py) of what was ordered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path

from acme import crypto_util

from acmebox import keys
from acmebox.account import AccountFiles
from acmebox.challenges import Http01Tokens, SelfCheck
from acmebox.client import AcmeClient
from acmebox.clock import Clock, iso
from acmebox.config import CertSpec, Config
from acmebox.errors import AccountRefused, AcmeboxError, CAProblem, CAUnreachable, ClockError, ConfigError, DiskError
from acmebox.fsutil import space_problem
from acmebox.metrics import Metrics
from acmebox.pending import Received
from acmebox.store import CertMeta

log = logging.getLogger(__name__)

MIN_FREE = 64 * 1024  # bytes free in the certs and state dirs before ordering: a renewal writes ~12 files
DISK_RECHECK = dt.timedelta(minutes=5)
# The one clock threshold: the preflight orders only while the local clock is within it of the
# CA's, and the install (maintain.py) takes a certificate whose notBefore is up to that far in
# the local future, so no order is placed whose certificate would be set aside (a CA that does
# not backdate, and a local clock up to this much slow). Let's Encrypt backdates by about an hour.
MAX_CLOCK_SKEW = dt.timedelta(hours=1)
CLOCK_RECHECK = dt.timedelta(hours=1)
CONNECT_RETRY = (5, 30, 120, 600)  # seconds between attempts to reach an unreachable CA
TRANSIENT = {"badNonce", "serverInternal", "rateLimited"}  # problems at connect that waiting may fix


# The dirs are shared by every certificate: one probe (a file written and fsynced) serves all
# the orders of a burst, e.g. `run --once` with 50 certificates.
_PROBES: dict[Path, tuple[float, str | None]] = {}
PROBE_MAX_AGE = 5.0  # seconds


def _space_problem(path: Path) -> str | None:
    seen = _PROBES.get(path)
    if seen is None or time.monotonic() - seen[0] > PROBE_MAX_AGE:
        seen = (time.monotonic(), space_problem(path, MIN_FREE))
        _PROBES[path] = seen
    return seen[1]


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} hours"


def account_deactivated(e: CAProblem) -> bool:
    """RFC 8555 section 7.3.6: requests signed by a deactivated account's key are refused."""
    return e.short_type == "unauthorized" and "deactivated" in e.detail.lower()


class CA:
    """The CA directory of the configuration and this service's account there."""

    def __init__(self, config: Config, account: AccountFiles, clock: Clock, metrics: Metrics) -> None:
        self.config = config
        self.account = account
        self.clock = clock
        self.metrics = metrics
        self.once = False  # `run --once`: connect on first need, a failure is the asking certificate's
        self.error: str | None = "not connected to the CA yet"  # for /healthz; None once connected
        self._client: AcmeClient | None = None
        self._connected = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._connect_error: AcmeboxError | None = None

    async def client(self) -> AcmeClient:
        """The connected client. The service connects at start and maintainers wait for it;
        `--once` connects on first need, so a run with nothing due sends no request, and a
        connect failure becomes the asking certificate's failure, with its persisted backoff."""
        if self.once:
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
            await self.login(client)
        except BaseException:
            await client.close()
            raise
        self._client = client
        self._connected.set()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def login(self, client: AcmeClient) -> None:
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
                                   f"and its key cannot be moved aside: {err.strerror or err}") from None
            log.warning("the CA reports the ACME account as deactivated (%s); its key is kept as %s and a new "
                        "account is registered", e.detail, retired)
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
                self.error = None
                return
            except (AcmeboxError, OSError) as e:
                wait = float(CONNECT_RETRY[min(attempt, len(CONNECT_RETRY) - 1)])
                if isinstance(e, CAProblem) and e.retry_after is not None:
                    wait = max(wait, min(e.retry_after, 86400.0))
                self.error = str(e)
                self.metrics.failures.labels("-", "connect").inc()
                log.error("%s: %s; trying again in %.0fs (certificates on disk stay served)",
                          self.config.directory, e, wait)
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


class Issuer:
    """Orders certificates through a CA, at most `slots` at once."""

    def __init__(self, ca: CA, tokens: Http01Tokens, self_check: SelfCheck | None, clock: Clock, slots: int,
                 dirs: tuple[tuple[str, Path], ...] = ()) -> None:
        self.ca = ca
        self.dirs = dirs  # (what, path) that must take a certificate: the certs and state dirs
        self.tokens = tokens
        self.self_check = self_check
        self.clock = clock
        self._slots = asyncio.Semaphore(slots)

    async def preflight(self, client: AcmeClient) -> None:
        """Refuse to order what could not be kept, or with a clock that would make it look wrong."""
        now = self.clock.now()
        for what, path in self.dirs:
            problem = _space_problem(path)
            if problem is not None:
                raise DiskError(f"{what} {path} is {problem}; not ordering until it can take a certificate",
                                now + DISK_RECHECK)
        offset = await client.check_clock()
        if offset is not None and abs(offset) > MAX_CLOCK_SKEW.total_seconds():
            ca_now = now + dt.timedelta(seconds=offset)
            raise ClockError(
                f"the local clock says {iso(now)} but the CA's says {iso(ca_now)} ({_span(offset)} "
                f"{'behind' if offset > 0 else 'ahead'}); not ordering until the local clock is right",
                now + CLOCK_RECHECK,
            )

    async def issue(self, client: AcmeClient, spec: CertSpec, replaces: str | None = None) -> Received:
        """Order a certificate for `spec` (as the ARI successor of `replaces`, a certificate
        id, when given). Raises what the CA or the network raised (errors.py)."""
        async with self._slots:
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
            await self.ca.login(client)
            fullchain = await client.issue(spec.names, csr_pem, self.tokens, spec.profile, replaces, self.self_check)
        meta = CertMeta(names=spec.names, key_type=spec.key_type, profile=spec.profile,
                        directory=self.ca.config.directory, account=client.account_url,
                        issued_at=self.clock.now().isoformat(), replaced=replaces, placeholder=False)
        log.info("%s: certificate issued by the CA", spec.name)
        return Received(key_pem, fullchain.encode(), meta)
