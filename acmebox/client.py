"""The ACME protocol for one account, driven from asyncio.

The `acme` library does the messages, JWS signing and nonces; it is synchronous (requests,
fixed 1 s sleeps), so every call goes through this account's single worker thread and all
waiting (authorization and order polling, Retry-After) happens here with asyncio.sleep.
That keeps the event loop (and so the challenge server) free, and issuance against a fast CA
takes tens of milliseconds instead of the library's 1-2 s.

What the library lacks is filled in here: the ARI `replaces` field on new orders, the
Retry-After header on error answers (seen by a requests response hook), correct HTTP-date
parsing in any timezone (httpdate.py), more than one badNonce retry, and errors matched on `.typ`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import requests
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from josepy.errors import DeserializationError
from josepy.interfaces import JSONDeSerializable
from josepy.jwa import ES256
from josepy.jwk import JWK

from acmebox import __version__, identifiers
from acmebox.ari import NewOrder, RenewalInfo, ari_cert_id
from acmebox.challenges import Http01Tokens, SelfCheck
from acmebox.errors import AcmeboxError, CAProblem, CAUnreachable, NotADirectory, ReplacesRefused, refuses_replaces
from acmebox.httpdate import http_date, parse_retry_after
from acmebox.tlsalpn import EmptyResponse, TlsAlpnResponder
from acmebox.worker import Worker

log = logging.getLogger(__name__)
T = TypeVar("T")

ACME_ERROR = "urn:ietf:params:acme:error:"
BAD_NONCE_RETRIES = 4  # on top of the library's own single retry
ORDER_TIMEOUT = 300.0  # seconds for one order, from newOrder to the certificate
POLL_FIRST, POLL_MAX = 0.02, 5.0  # our poll interval doubles from the first to the max
RETRY_AFTER_MAX = 60.0  # within one order; longer waits give the order up
GONE = (403, 404, 410)  # HTTP statuses of an order URL the CA no longer serves to this account
REQUEST_DEADLINE = 60.0  # seconds for one CA request, connect to last byte (requests' timeout is per read)


def _problem(err: messages.Error, retry_after: float | None = None) -> CAProblem:
    detail = err.detail or err.title or ""
    if err.identifier is not None:
        detail = f"{err.identifier.value}: {detail}"
    for sub in err.subproblems or ():
        sub_id = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        detail += f" [{sub_id}{sub.typ.removeprefix(ACME_ERROR)}: {sub.detail}]"
    return CAProblem(err.typ, detail, retry_after)


class AcmeClient:
    """One account at one CA. Not thread-safe by design: use it from one event loop."""

    def __init__(self, directory_url: str, ca_bundle: Path | None = None, deadline: float = REQUEST_DEADLINE) -> None:
        self.directory_url = directory_url
        self.deadline = deadline  # seconds for one request to the CA, first byte sent to last received
        self.account_url: str | None = None
        self.ca_bundle = ca_bundle
        # Seconds the CA's clock (its Date header) is ahead of ours, from the latest answer.
        self.ca_clock_offset: float | None = None
        self._clock_seen = -math.inf  # time.monotonic() of the Date header behind the offset
        self._executor = Worker()
        self._net = self._new_network()
        self._last_response: requests.Response | None = None
        self._directory: messages.Directory | None = None

    def _new_network(self, previous: acme_client.ClientNetwork | None = None) -> acme_client.ClientNetwork:
        net = acme_client.ClientNetwork(
            previous.key if previous is not None else None,
            account=previous.account if previous is not None else None,
            alg=ES256,
            verify_ssl=str(self.ca_bundle) if self.ca_bundle else True,  # type: ignore[arg-type]
            user_agent=f"acmebox/{__version__}",
        )
        net.session.hooks["response"].append(self._saw_response)
        return net

    # -- plumbing ---------------------------------------------------------------------------

    def _saw_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last_response = response  # the library drops it (and Retry-After) on errors
        ca_now = http_date(response.headers.get("Date"))
        if ca_now is not None:
            self.ca_clock_offset = (ca_now - dt.datetime.now(dt.UTC)).total_seconds()
            self._clock_seen = time.monotonic()

    def _last_retry_after(self) -> float | None:
        r = self._last_response
        return parse_retry_after(r.headers.get("Retry-After")) if r is not None else None

    def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs on the account thread: call the library, translate its errors into ours."""
        self._last_response = None
        try:
            return fn(*args)
        except messages.Error as e:
            raise _problem(e, self._last_retry_after()) from None
        except acme_errors.ConflictError:
            r = self._last_response
            if r is not None and r.status_code == 409:
                try:
                    raise _problem(messages.Error.from_json(r.json()), self._last_retry_after()) from None
                except (ValueError, DeserializationError):
                    raise CAProblem(ACME_ERROR + "conflict", f"HTTP 409 from {r.url}") from None
            raise  # 200 + Location: "this account exists", handled by the caller
        except requests.RequestException as e:
            if isinstance(e, requests.JSONDecodeError):  # an answer that arrived, but not as JSON
                raise self._unexpected(e) from None
            hint = ""
            if "not yet valid" in str(e) or "certificate has expired" in str(e):
                hint = f" (is the local clock right? it says {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ})"
            raise CAUnreachable(f"cannot reach the CA: {_short(e)}{hint}") from None
        except (acme_errors.ClientError, acme_errors.UnexpectedUpdate, ValueError, DeserializationError,
                KeyError, TypeError) as e:
            raise self._unexpected(e) from None

    def _unexpected(self, e: Exception) -> CAProblem:
        r = self._last_response
        where = f" (HTTP {r.status_code} from {r.url})" if r is not None else ""
        return CAProblem(ACME_ERROR + "serverInternal", f"unexpected answer{where}: {_short(e)}",
                         self._last_retry_after())

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the account thread, retrying badNonce. Each try has `deadline` seconds
        in all; a CA that trickles its answer past that costs this account its worker
        thread, which is abandoned (it ends when the socket does) and replaced with a new one."""
        loop = asyncio.get_running_loop()
        for attempt in range(BAD_NONCE_RETRIES + 1):
            try:
                future = loop.run_in_executor(self._executor, self._in_thread, fn, *args)
                return await asyncio.wait_for(future, self.deadline)
            except TimeoutError:
                self._replace_worker()
                raise CAUnreachable(f"the CA did not answer within {self.deadline:.0f}s") from None
            except CAProblem as e:
                if e.short_type != "badNonce" or attempt == BAD_NONCE_RETRIES:
                    raise
                log.debug("badNonce from the CA, retrying (%d)", attempt + 1)
        raise AssertionError("unreachable")

    def _replace_worker(self) -> None:
        log.warning("a request to the CA is stuck; continuing on a new connection and worker thread")
        stuck = self._last_response  # set once the headers are in: a body still trickling
        shutdown = getattr(stuck.raw, "shutdown", None) if stuck is not None else None  # urllib3 >= 2.3
        if shutdown is not None:
            shutdown()  # its read fails now, so the abandoned thread ends now
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = Worker()
        self._net = self._new_network(self._net)

    async def _post(self, url: str, obj: JSONDeSerializable | None) -> requests.Response:
        """A signed POST (obj=None: POST-as-GET)."""
        return (await self._post_parsed(url, obj, lambda resp: None))[0]

    async def _post_parsed(
        self, url: str, obj: JSONDeSerializable | None, parse: Callable[[requests.Response], T]
    ) -> tuple[requests.Response, T]:
        """A signed POST whose answer is parsed on the account thread, so that an answer the
        client cannot read (bad JSON, a missing field) becomes a CAProblem, not a traceback."""

        def post_and_parse() -> tuple[requests.Response, T]:
            # Read through self at call time: a replaced worker comes with a new network.
            resp = self._net.post(url, obj, new_nonce_url=self.directory["newNonce"])
            return resp, parse(resp)

        return await self._call(post_and_parse)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- directory and account ---------------------------------------------------------------

    @property
    def directory(self) -> messages.Directory:
        if self._directory is None:
            raise RuntimeError("connect() first")
        return self._directory

    async def connect(self) -> messages.Directory:
        """Fetch the directory. A 2xx that is not a directory is a NotADirectory (bad input);
        a CA in trouble (5xx, 429, a maintenance page) is a CAProblem with its Retry-After."""

        def fetch() -> messages.Directory:
            net = self._net
            resp = net.session.get(self.directory_url, verify=net.verify_ssl, timeout=net._default_timeout)
            if resp.status_code >= 400:
                try:
                    raise _problem(messages.Error.from_json(resp.json()), self._last_retry_after())
                except (ValueError, DeserializationError):
                    raise CAProblem(ACME_ERROR + "serverInternal", f"HTTP {resp.status_code} from {resp.url}",
                                    self._last_retry_after()) from None
            try:
                return messages.Directory.from_json(resp.json())
            except (ValueError, DeserializationError):
                raise NotADirectory(f"{self.directory_url} is not an ACME directory") from None

        directory = await self._call(fetch)
        for needed in ("newNonce", "newAccount", "newOrder"):
            if needed not in directory.to_partial_json():
                raise NotADirectory(f"{self.directory_url} is not an ACME directory (no {needed})")
        self._directory = directory
        return directory

    async def check_clock(self, max_age: float = 60.0) -> float | None:
        """Seconds the CA's clock is ahead of ours (negative: behind), from the Date header of
        an answer at most `max_age` seconds old, else of a fresh newNonce answer (RFC 8555
        section 7.2); None when the CA sends no Date."""
        if time.monotonic() - self._clock_seen > max_age:
            await self._call(lambda: self._net.head(self.directory["newNonce"]))
        return self.ca_clock_offset

    @property
    def has_ari(self) -> bool:
        return "renewalInfo" in self.directory.to_partial_json()

    @property
    def profiles(self) -> dict[str, str] | None:
        profiles = self.directory.meta.profiles
        return dict(profiles) if profiles is not None else None

    async def find_account(self, account_key: JWK) -> str | None:
        """The URL of this key's account at the CA (RFC 8555 section 7.3.1, onlyReturnExisting),
        or None when it has none. Registers nothing."""
        self._net.key = account_key
        acme = acme_client.ClientV2(self.directory, self._net)
        self._net.account = None  # an account lookup must be signed with the JWK, not a kid
        try:
            await self._call(acme.new_account, messages.NewRegistration.from_data(only_return_existing=True))
            raise CAProblem(ACME_ERROR + "malformed", "account lookup returned no Location")
        except acme_errors.ConflictError as found:
            return str(found.location)
        except CAProblem as e:
            if e.short_type != "accountDoesNotExist":
                raise
            return None

    async def login(self, account_key: JWK, email: str | None, eab: tuple[str, str] | None = None) -> str:
        """Find this key's account at the CA, or register one (agreeing to the ToS)."""
        found = await self.find_account(account_key)
        acme = acme_client.ClientV2(self.directory, self._net)
        if found is not None:
            url = found
            log.info("using existing ACME account %s", url)
        else:
            external = None
            if eab is not None:
                external = messages.ExternalAccountBinding.from_data(
                    account_public_key=account_key.public_key(),
                    kid=eab[0],
                    hmac_key=eab[1],
                    directory=self.directory,
                )
            tos = self.directory.meta.terms_of_service
            regr = await self._call(
                acme.new_account,
                messages.NewRegistration.from_data(
                    email=email, terms_of_service_agreed=True, external_account_binding=external
                ),
            )
            url = regr.uri
            log.info("registered ACME account %s (agreed to terms of service %s)", url, tos)
        self._net.account = messages.RegistrationResource(body=messages.Registration(), uri=url)
        self.account_url = url
        return url

    # -- issuance ----------------------------------------------------------------------------

    async def issue(self, names: tuple[str, ...], csr_pem: bytes, tokens: Http01Tokens, profile: str | None = None,
                    replaces: str | None = None, self_check: SelfCheck | None = None,
                    tls_alpn: TlsAlpnResponder | None = None, on_order: Callable[[str], None] | None = None) -> str:
        """Order, validate over HTTP-01 (after `self_check` when given) or, with `tls_alpn`, over
        TLS-ALPN-01 for DNS names, finalize, download: the PEM full chain. `on_order(order URL)`
        runs as soon as the CA has made the order, before anything else is sent (resume.py); what
        it raises abandons the order unfinalized."""
        return await _within(self._issue(names, csr_pem, tokens, profile, replaces, self_check, tls_alpn, on_order),
                             f"order for {', '.join(names)}")

    async def resume(self, order_url: str, csr_pem: bytes, tokens: Http01Tokens,
                     self_check: SelfCheck | None = None, tls_alpn: TlsAlpnResponder | None = None) -> str | None:
        """Fetch an order placed earlier (POST-as-GET) and carry it on (download, validate and
        finalize as its status needs; `csr_pem` from the key kept for it): the PEM full chain,
        or None when the order cannot give one (invalid, expired, unknown to the CA or this
        account). Raises what the CA or the network raised otherwise: it is fetched again later."""
        def fetch() -> messages.Order | None:  # on the account thread, where the answer's status is known
            try:
                return _order(self._net.post(order_url, None, new_nonce_url=self.directory["newNonce"]))
            except Exception:
                if self._last_response is None or self._last_response.status_code not in GONE:
                    raise  # translated by _in_thread
                return None

        order = await self._call(fetch)  # None: unknown to the CA (expired, removed, a CA restarted) or this account
        if order is None or order.status == messages.STATUS_INVALID:
            log.info("order %s is gone at the CA (%s)", order_url, "invalid" if order else "not found")
            return None
        log.info("order %s fetched again: %s", order_url, order.status.name)
        return await _within(self._complete(order_url, order, csr_pem, tokens, self_check, tls_alpn),
                             f"order {order_url}")

    async def _issue(self, names: tuple[str, ...], csr_pem: bytes, tokens: Http01Tokens, profile: str | None,
                     replaces: str | None, self_check: SelfCheck | None, tls_alpn: TlsAlpnResponder | None,
                     on_order: Callable[[str], None] | None) -> str:
        new = NewOrder(identifiers=[identifiers.acme_identifier(n) for n in names], profile=profile or "",
                       replaces=replaces)
        def read_order(resp: requests.Response) -> tuple[str, messages.Order, Any]:
            location = resp.headers.get("Location")
            if not location:
                raise CAProblem(ACME_ERROR + "malformed", "the newOrder answer has no Location header")
            body = resp.json()
            return location, messages.Order.from_json(body), body.get("replaces")

        try:
            _, (order_url, order, echoed) = await self._post_parsed(self.directory["newOrder"], new, read_order)
        except CAProblem as e:
            if replaces is not None and refuses_replaces(e):
                raise ReplacesRefused(e.typ, e.detail, e.retry_after) from None
            raise
        log.info("order %s for %s sent%s%s", order_url, ", ".join(names), f" with profile {profile}" if profile else "",
                 f" with replaces={replaces} (the CA echoed {echoed})" if replaces else " without replaces")
        if on_order is not None:
            on_order(order_url)
        return await self._complete(order_url, order, csr_pem, tokens, self_check, tls_alpn)

    async def _complete(self, order_url: str, order: messages.Order, csr_pem: bytes, tokens: Http01Tokens,
                        self_check: SelfCheck | None, tls_alpn: TlsAlpnResponder | None) -> str:
        """From a new or fetched order to its certificate: validate what is pending, finalize
        what is not yet, poll, download."""
        presented: list[str] = []
        presented_alpn: list[str] = []
        try:
            pending: list[str] = []
            for authz_url in order.authorizations if order.status == messages.STATUS_PENDING else ():
                _, authz = await self._poll(authz_url, _authorization)
                if authz.status == messages.STATUS_VALID:
                    continue  # the CA reused an earlier validation
                if authz.status != messages.STATUS_PENDING:
                    raise CAProblem(
                        ACME_ERROR + "unauthorized", f"{authz.identifier.value}: authorization is {authz.status.name}"
                    )
                name = str(authz.identifier.value)
                if tls_alpn is not None and authz.identifier.typ == messages.IDENTIFIER_FQDN:
                    uri = tls_alpn.answer(authz, self._net.key)
                    presented_alpn.append(name)
                    await self._post(uri, EmptyResponse())
                    pending.append(authz_url)
                    continue
                challb = next((c for c in authz.challenges if isinstance(c.chall, acme_challenges.HTTP01)), None)
                if challb is None:
                    raise CAProblem(
                        ACME_ERROR + "rejectedIdentifier",
                        f"{authz.identifier.value}: the CA offers no HTTP-01 challenge",
                    )
                response, key_authz = challb.response_and_validation(self._net.key)
                token = challb.chall.encode("token")
                tokens.present(token, key_authz)
                presented.append(token)
                if self_check is not None:
                    await self_check(str(authz.identifier.value), token, key_authz)
                await self._post(challb.uri, response)
                pending.append(authz_url)
            for authz_url in pending:
                await self._poll_authorization(authz_url)
        finally:
            for token in presented:
                tokens.withdraw(token)
            for name in presented_alpn:
                if tls_alpn is not None:
                    tls_alpn.withdraw(name)

        csr = x509.load_pem_x509_csr(csr_pem)
        if order.status in (messages.STATUS_PENDING, messages.STATUS_READY):
            try:
                _, order = await self._post_parsed(order.finalize, messages.CertificateRequest(csr=csr), _order)
            except CAProblem as e:
                if e.short_type != "orderNotReady":
                    raise
        order = await self._poll_order(order_url, order, csr)
        assert order.certificate is not None
        return (await self._post(order.certificate, None)).text

    async def _wait(self, response: requests.Response | None, delay: float) -> None:
        asked = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
        await self._sleep(asked, delay)

    async def _sleep(self, asked: float | None, delay: float) -> None:
        if asked is not None and asked > RETRY_AFTER_MAX:
            raise CAProblem(ACME_ERROR + "serverInternal", f"the CA asked to wait {asked:.0f}s", retry_after=asked)
        await asyncio.sleep(max(delay, asked or 0.0))

    async def _poll(self, url: str, parse: Callable[[requests.Response], T]) -> tuple[requests.Response | None, T]:
        """POST-as-GET `url` (RFC 8555 section 6.3) until it answers. A poll changes nothing at
        the CA, so a passing refusal that says when to come back (503 or 429 with a short
        Retry-After) is waited out instead of abandoning the whole order."""
        while True:
            try:
                return await self._post_parsed(url, None, parse)
            except CAProblem as e:
                if e.retry_after is None or e.short_type not in ("serverInternal", "rateLimited"):
                    raise
                log.info("the CA asked to poll %s again in %.0fs (%s)", url, e.retry_after, e.detail)
                await self._sleep(e.retry_after, 0.0)

    async def _poll_authorization(self, url: str) -> None:
        delay = POLL_FIRST
        while True:
            resp, authz = await self._poll(url, _authorization)
            if authz.status == messages.STATUS_VALID:
                return
            if authz.status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                failed = next((c.error for c in authz.challenges if c.error is not None), None)
                name = str(authz.identifier.value)
                if failed is not None:
                    problem = _problem(failed)
                    raise CAProblem(problem.typ, f"{name}: {problem.detail}", invalid=(name,))
                why = f"{name}: authorization {authz.status.name}"
                raise CAProblem(ACME_ERROR + "unauthorized", why, invalid=(name,))
            await self._wait(resp, delay)
            delay = min(delay * 2, POLL_MAX)

    async def _poll_order(self, url: str, order: messages.Order, csr: x509.CertificateSigningRequest) -> messages.Order:
        delay = POLL_FIRST
        resp: requests.Response | None = None
        while True:
            if order.status == messages.STATUS_VALID and order.certificate:
                return order
            if order.status == messages.STATUS_INVALID:
                if order.error is not None:
                    raise _problem(order.error)
                raise CAProblem(ACME_ERROR + "serverInternal", "the order became invalid without a reason")
            if order.status == messages.STATUS_READY:  # finalize was early (orderNotReady)
                resp, order = await self._post_parsed(order.finalize, messages.CertificateRequest(csr=csr), _order)
            else:
                await self._wait(resp, delay)
                delay = min(delay * 2, POLL_MAX)
                resp, order = await self._poll(url, _order)

    # -- renewal information and revocation --------------------------------------------------

    async def renewal_info(self, cert: x509.Certificate) -> RenewalInfo | None:
        """The CA's ARI window for `cert`, or None when the CA has no ARI."""
        if not self.has_ari:
            return None
        url = f"{self.directory['renewalInfo'].rstrip('/')}/{ari_cert_id(cert)}"

        def fetch() -> RenewalInfo:  # on the account thread, so bad answers become CAProblems
            resp = self._net.get(url)
            body = resp.json()
            window = messages.RenewalInfo.from_json(body).suggested_window
            if window.start is None or window.end is None:
                raise CAProblem(ACME_ERROR + "malformed", f"renewalInfo for {url} has no window")
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            return RenewalInfo(window.start, window.end, retry_after, body.get("explanationURL"))

        return await self._call(fetch)

    async def revoke(self, cert: x509.Certificate, reason: int = 0) -> None:
        acme = acme_client.ClientV2(self.directory, self._net)
        await self._call(acme.revoke, cert, reason)


async def _within(order: Coroutine[Any, Any, str], what: str) -> str:
    """An order's whole course, from newOrder (or fetching it again) to the certificate, in ORDER_TIMEOUT."""
    try:
        return await asyncio.wait_for(order, ORDER_TIMEOUT)
    except TimeoutError:
        raise AcmeboxError(f"{what} did not complete in {ORDER_TIMEOUT:.0f}s") from None


def _authorization(resp: requests.Response) -> messages.Authorization:
    return cast(messages.Authorization, messages.Authorization.from_json(resp.json()))


def _order(resp: requests.Response) -> messages.Order:
    return cast(messages.Order, messages.Order.from_json(resp.json()))


def _short(e: BaseException) -> str:
    """The useful part of an exception's text (requests nests the cause deep inside)."""
    text = str(e)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"certificate verify failed: [^'\")(]+", r"timed out"):
        found = re.search(pattern, text)
        if found:
            return found.group(0).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
