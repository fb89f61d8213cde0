"""Getting certificates from the CA: the connection and the account (CA), and the orders
(Issuer). What an order brings is a `Received` (pending.py), not yet stored: the maintainer
keeps it and stores it (maintain.py).

- CA: connects to the directory, checks the configured profiles against what it offers (and
  looks again every DIRECTORY_MAX_AGE: a CA may withdraw a profile), finds or registers the
  account (a deactivated account's key is retired and a new one registered), and records the
  account URL. The service connects at start, retrying while the CA cannot be reached; `run
  --once` connects on first need, so a run with nothing due sends no request.
- Issuer: the preflight (the certs and state dirs can take a certificate, the local clock
  agrees with the CA's); one order at a time per slot (--max-concurrent-orders); a fresh key
  of the configured type and a CSR for the names (DNS names and, RFC 8738, IP addresses); a new
  login when the CA no longer knows the account; the profile (the configured one, the CA's
  default when the CA no longer offers it, else `shortlived` for a certificate with an address
  when the CA offers it); the CertMeta record (store.py) of what was ordered. Each order is
  recorded as in flight (resume.py: its URL and key) the moment the CA creates it, and
  `resume` carries such an order on after a crash instead of ordering anew.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from acme import crypto_util

from acmebox import identifiers, keys
from acmebox.account import AccountFiles
from acmebox.challenges import Http01Tokens, SelfCheck
from acmebox.client import AcmeClient
from acmebox.clock import Clock, iso
from acmebox.config import CertSpec, Config
from acmebox.errors import AccountRefused, AcmeboxError, CAProblem, CAUnreachable, ClockError, ConfigError, DiskError
from acmebox.fsutil import space_problem
from acmebox.metrics import Metrics
from acmebox.pending import Received
from acmebox.resume import InFlight, InFlightOrders
from acmebox.store import CertMeta
from acmebox.tlsalpn import TlsAlpnResponder

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
ADDRESS_PROFILE = "shortlived"  # the default profile of a certificate with an IP address
TRANSIENT = {"badNonce", "serverInternal", "rateLimited"}  # problems at connect that waiting may fix
DIRECTORY_MAX_AGE = 3600.0  # seconds: how often the service looks at what the CA offers again (profiles)


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


def profile_for(names: Iterable[str], configured: str | None, offered: Mapping[str, str] | None) -> str | None:
    """The profile to order: the configured one while the CA offers it (`offered` None: not
    known); else, for a certificate with an address, `shortlived` when the CA offers it (Let's
    Encrypt issues address certificates only with it); else none (the CA's default)."""
    if configured and (offered is None or configured in offered):
        return configured
    if offered and ADDRESS_PROFILE in offered and any(identifiers.address(n) is not None for n in names):
        return ADDRESS_PROFILE
    return None


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
        self._directory_at = -math.inf  # time.monotonic() of the directory the client holds
        # The profile of a certificate's live certificate (set by the service): a profile the CA
        # stopped offering is then told apart from one it never offered (bad input in --once).
        self.issued_profile: Callable[[str], str | None] = lambda name: None

    @property
    def offered(self) -> frozenset[str] | None:
        """The profiles the CA offers, as of its directory; None when not known."""
        profiles = self._client.profiles if self._client is not None else None
        return frozenset(profiles) if profiles is not None else None

    async def refresh(self, max_age: float = DIRECTORY_MAX_AGE) -> None:
        """Fetch the directory again when it is older than `max_age` seconds (what the CA offers
        changes: a withdrawn profile). Not connected yet: nothing. Never raises: the old one stays."""
        client = self._client
        if client is None or time.monotonic() - self._directory_at < max_age:
            return
        self._directory_at = time.monotonic()
        try:
            await client.connect()
            self._check_profiles(client)
        except AcmeboxError as e:
            log.debug("cannot fetch the directory again (%s); keeping the one from before", e)

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
            self._directory_at = time.monotonic()
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
        """A profile the CA does not offer: bad input for `--once` when no live certificate has
        it (a typo); otherwise (withdrawn by the CA, or in service mode) a warning, and orders
        go with the CA's default profile (policies: ProfileWithdrawn)."""
        offered = client.profiles
        for spec in self.config.certs:
            if spec.profile and offered is not None and spec.profile not in offered:
                withdrawn = self.issued_profile(spec.name) == spec.profile
                listed = f"it offers: {', '.join(sorted(offered)) or 'none'}"
                if self.once and not withdrawn:
                    raise ConfigError(f"profile {spec.profile!r} is not offered by {self.config.directory} ({listed})")
                log.warning("%s: %s %s profile %r (%s); ordering with its default profile, before the last tenth "
                            "of the certificate's lifetime", spec.name, self.config.directory,
                            "no longer offers" if withdrawn else "does not offer", spec.profile, listed)
            if spec.profile and offered is None:
                log.warning("%s: the CA announces no profiles; asking for %r anyway", spec.name, spec.profile)


class Issuer:
    """Orders certificates through a CA, at most `slots` at once."""

    def __init__(self, ca: CA, tokens: Http01Tokens, self_check: SelfCheck | None, clock: Clock, slots: int,
                 dirs: tuple[tuple[str, Path], ...] = (), inflight: InFlightOrders | None = None,
                 tls_alpn: TlsAlpnResponder | None = None) -> None:
        self.ca = ca
        self.inflight = inflight  # where orders in flight are recorded (None: nowhere, as in `check`)
        self.tls_alpn = tls_alpn  # --tls-alpn-listen: DNS names validate by TLS-ALPN-01
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
        await self.ca.refresh(PROBE_MAX_AGE)  # the profiles offered right now
        offset = await client.check_clock()
        if offset is not None and abs(offset) > MAX_CLOCK_SKEW.total_seconds():
            ca_now = now + dt.timedelta(seconds=offset)
            raise ClockError(
                f"the local clock says {iso(now)} but the CA's says {iso(ca_now)} ({_span(offset)} "
                f"{'behind' if offset > 0 else 'ahead'}); not ordering until the local clock is right",
                now + CLOCK_RECHECK,
            )

    async def issue(self, client: AcmeClient, spec: CertSpec, replaces: str | None = None,
                    ledger_order: str = "") -> Received:
        """Order a certificate for `spec` (as the ARI successor of `replaces`, a certificate
        id, when given; `ledger_order`: its line in the ledger, kept in the in-flight record).
        Raises what the CA or the network raised (errors.py); DiskError when the order cannot
        be recorded as in flight (it is then abandoned before it is finalized)."""
        async with self._slots:
            return await self._issue(client, spec, replaces, ledger_order)

    async def _issue(self, client: AcmeClient, spec: CertSpec, replaces: str | None, ledger_order: str) -> Received:
        key_pem = keys.to_pem(keys.generate(spec.key_type))
        dns, ips = identifiers.csr_entries(spec.names)  # RFC 8738: addresses are iPAddress entries
        csr_pem = crypto_util.make_csr(key_pem, dns, ipaddrs=ips)
        profile = profile_for(spec.names, spec.profile, client.profiles)
        if profile != spec.profile and spec.profile:
            log.warning("%s: ordering with the CA's default profile: it does not offer %r", spec.name, spec.profile)

        def record(url: str) -> None:
            if self.inflight is None:
                return
            order = InFlight(url, key_pem, spec.names, spec.key_type, profile, self.ca.config.directory,
                             client.account_url, replaces, ledger_order, self.clock.now())
            try:
                self.inflight.record(spec.name, order)
            except OSError as e:
                now = self.clock.now()
                raise DiskError(f"cannot record order {url} in {self.inflight.dir} ({e.strerror or e}); "
                                "not finalizing it", now + DISK_RECHECK) from e

        def order() -> Awaitable[str]:
            return client.issue(spec.names, csr_pem, self.tokens, profile, replaces, self.self_check, self.tls_alpn,
                                record)

        try:
            fullchain = await order()
        except CAProblem as e:
            if e.short_type != "accountDoesNotExist" and not account_deactivated(e):
                raise
            log.warning("the CA no longer knows account %s (%s); logging in again", client.account_url, e.detail)
            await self.ca.login(client)
            fullchain = await order()
        log.info("%s: certificate issued by the CA", spec.name)
        meta = CertMeta(names=spec.names, key_type=spec.key_type, profile=profile, directory=self.ca.config.directory,
                        account=client.account_url, issued_at=self.clock.now().isoformat(), replaced=replaces,
                        placeholder=False)
        return Received(key_pem, fullchain.encode(), meta)

    async def resume(self, client: AcmeClient, spec: CertSpec, order: InFlight) -> Received | None:
        """Carry on an order recorded as in flight (resume.py) with its kept key: its
        certificate, or None when it cannot give one (invalid, expired or unknown at the CA; or
        made for another CA directory, names or key type than `spec`). Raises what the CA or
        the network raised: the record then stays for the next attempt."""
        if (order.directory != self.ca.config.directory or sorted(order.names) != sorted(spec.names)
                or order.key_type != spec.key_type):
            log.info("%s: the order in flight (%s) was for another directory, names or key type; dropped",
                     spec.name, order.url)
            return None
        dns, ips = identifiers.csr_entries(spec.names)
        csr_pem = crypto_util.make_csr(order.key_pem, dns, ipaddrs=ips)
        async with self._slots:
            fullchain = await client.resume(order.url, csr_pem, self.tokens, self.self_check, self.tls_alpn)
        if fullchain is None:
            return None
        log.info("%s: certificate of order %s (placed %s) fetched with its kept key", spec.name, order.url,
                 iso(order.at))
        meta = CertMeta(names=spec.names, key_type=order.key_type, profile=order.profile,
                        directory=order.directory, account=order.account or client.account_url,
                        issued_at=self.clock.now().isoformat(), replaced=order.replaces, placeholder=False)
        return Received(order.key_pem, fullchain.encode(), meta)
