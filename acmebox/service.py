"""The `run` command: bring up the challenge server, log in to the CA, and get each
configured certificate onto disk (reusing a valid one, never re-ordering it at start).

With --once it exits when every certificate is in place; otherwise it keeps serving.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from acme import crypto_util

from acmebox import keys, renewal, webapp
from acmebox.account import AccountFiles
from acmebox.challenges import Http01Tokens
from acmebox.client import AcmeClient
from acmebox.config import CertSpec, Config
from acmebox.errors import CAUnreachable, ConfigError
from acmebox.store import CertStore, StoredCert

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def why_not_reusable(spec: CertSpec, stored: StoredCert | None, now: dt.datetime) -> str | None:
    """None when `stored` serves `spec` as it is; otherwise why a new certificate is needed."""
    if stored is None:
        return "no certificate yet"
    if stored.placeholder:
        return "only a placeholder is in place"
    if sorted(stored.names) != sorted(spec.names):
        return f"names changed (on disk: {', '.join(stored.names)})"
    if stored.key_type != spec.key_type:
        return f"key type changed (on disk: {stored.key_type})"
    if spec.profile and stored.meta.get("profile") != spec.profile:
        return f"profile changed (on disk: {stored.meta.get('profile') or 'none'})"
    if stored.not_after <= now:
        return f"expired at {stored.not_after:%Y-%m-%d %H:%M:%SZ}"
    return None


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = CertStore(config.certs_dir)
        self.tokens = Http01Tokens()
        self.account = AccountFiles.for_directory(config.state_dir, config.directory)
        self.client: AcmeClient | None = None

    def health(self) -> tuple[bool, str]:
        now = utcnow()
        lines, ok = [], True
        for spec in self.config.certs:
            stored = self.store.current(spec.name)
            if stored is None or stored.placeholder or now >= renewal.last_call(stored.not_before, stored.not_after):
                ok = False
                lines.append(f"{spec.name}: {'missing' if stored is None or stored.placeholder else 'expiring'}")
            else:
                lines.append(f"{spec.name}: valid until {stored.not_after:%Y-%m-%dT%H:%M:%SZ}")
        return ok, "\n".join(lines)

    async def connect(self) -> AcmeClient:
        client = AcmeClient(self.config.directory, self.config.ca_bundle)
        try:
            await client.connect()
            self._check_profiles(client)
            eab = (self.config.eab_kid, self.config.eab_hmac_key) if self.config.eab_kid else None
            key = self.account.load_or_create_key()
            url = await client.login(key, self.config.email, eab)  # type: ignore[arg-type]
        except BaseException:
            await client.close()
            raise
        self.account.save_url(url, self.config.directory)
        return client

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

    async def issue(self, client: AcmeClient, spec: CertSpec, replaces: str | None = None) -> StoredCert:
        key = keys.generate(spec.key_type)
        key_pem = keys.to_pem(key)
        csr_pem = crypto_util.make_csr(key_pem, list(spec.names))
        fullchain = await client.issue(spec.names, csr_pem, self.tokens, spec.profile, replaces)
        meta = {
            "names": list(spec.names),
            "key_type": spec.key_type,
            "profile": spec.profile,
            "directory": self.config.directory,
            "account": client.account_url,
            "issued_at": utcnow().isoformat(),
            "placeholder": False,
        }
        stored = self.store.save(spec.name, key_pem, fullchain.encode(), meta)
        log.info(
            "certificate %s issued: serial %x, valid until %s, stored as version %s",
            spec.name,
            stored.serial,
            stored.not_after.isoformat(),
            stored.version,
        )
        return stored

    async def ensure(self, client: AcmeClient, spec: CertSpec, force: bool) -> StoredCert:
        stored = self.store.current(spec.name)
        reason = "forced renewal" if force else why_not_reusable(spec, stored, utcnow())
        if reason is None and stored is not None:
            log.info(
                "certificate %s on disk is valid until %s (serial %x); reusing it, nothing ordered",
                spec.name,
                stored.not_after.isoformat(),
                stored.serial,
            )
            return stored
        log.info("certificate %s: ordering a new one (%s)", spec.name, reason)
        return await self.issue(client, spec)

    async def run(self, once: bool = False, force: bool = False) -> int:
        self.store.prepare()
        runner = await webapp.start(webapp.build_app(self.tokens, self.health), self.config.listen)
        try:
            try:
                self.client = await self.connect()
            except CAUnreachable as e:
                raise ConfigError(f"{self.config.directory}: {e}") from None
            for spec in self.config.certs:
                await self.ensure(self.client, spec, force)
            if once:
                return 0
            log.info("all certificates in place; serving challenges until stopped")
            await asyncio.Event().wait()
            return 0
        finally:
            if self.client is not None:
                await self.client.close()
            await runner.cleanup()
