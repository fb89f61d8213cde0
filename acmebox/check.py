"""`acmebox check`: the service's observations, made once, as a table a person reads before
going live. It orders nothing, registers no account and writes nothing but probe files; it
exits 1 when any check fails.

Checked: the configuration; that the certs and state dirs can take a certificate; the CA's
directory and what it offers (ARI, profiles, the configured profiles among them); whether the
account key has an account there; that each name resolves; that the front door routes the
HTTP-01 path to acmebox (a fetch of a token acmebox presents on a server of its own when the
service is not running, or of an unknown token whose 404 only acmebox writes when it is); the
reloader's target; what the front door presents now (with --reload-verify); and whether each
certificate on disk is kept or replaced at start (policies.REPLACE).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from acmebox import policies, webapp
from acmebox.account import AccountFiles
from acmebox.challenges import PREFIX, Http01Tokens
from acmebox.client import AcmeClient
from acmebox.config import Config, ReloadSpec
from acmebox.errors import AcmeboxError
from acmebox.fsutil import space_problem
from acmebox.issuance import MIN_FREE
from acmebox.names import is_address
from acmebox.reload import ReloadFailed, ReloadTarget, served_serial
from acmebox.state import StateStore
from acmebox.store import CertStore

NOT_FOUND_BODY = "no such challenge"  # challenges.py's 404: proves the path reached acmebox


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str


async def run(config: Config) -> list[Finding]:
    out = [Finding("configuration", True, "; ".join(",".join(s.names) for s in config.certs))]
    out += _dirs(config)
    out += await _ca(config)
    names = [n for spec in config.certs for n in spec.names]
    for n in names:
        found = await asyncio.to_thread(_resolves, n)
        if not found.ok and config.self_check_via is not None:  # the CA resolves it, not this host
            found = Finding(found.check, True, f"{found.detail}; fine if the CA resolves it (the self-check "
                                               f"goes through {config.self_check_via})")
        out.append(found)
    if config.tls_alpn_listen is not None:  # port 80 may be closed: the CA validates on 443
        http_names = [n for n in names if is_address(n)]  # addresses keep HTTP-01
        out.append(Finding("front door", True, f"TLS-ALPN-01 through {config.tls_alpn_listen} for DNS names "
                                               "(not checked here)"))
        out += await _front_door(config, http_names) if http_names else []
    else:
        out += await _front_door(config, names)
    out.append(_reloader(config))
    out += await asyncio.to_thread(_served, config)
    out += _live(config)
    return out


def _live(config: Config) -> list[Finding]:
    """What the service will do with each certificate on disk (policies.REPLACE): keep it, or
    replace it at start. Information, never a failure: the service handles both."""
    store, revoked = CertStore(config.certs_dir), frozenset(StateStore(config.state_dir).revoked())
    now = dt.datetime.now(dt.UTC)
    out = []
    for spec in config.certs:
        stored = store.current(spec.name)
        seen = policies.Observed(now, policies.Live.of(stored), policies.Wanted(spec, config.directory),
                                 revoked=revoked)
        verdict = policies.replace(seen)
        if verdict is not None:
            detail = f"{verdict.reason}: {verdict.message}; ordered at start"
        else:
            assert stored is not None  # Missing otherwise
            detail = f"kept: valid until {stored.not_after.isoformat()}"
        out.append(Finding(f"certificate {spec.name}", True, detail))
    return out


def _dirs(config: Config) -> list[Finding]:
    out = []
    for what, path in (("certs dir", config.certs_dir), ("state dir", config.state_dir)):
        if not path.exists():
            parent = next((p for p in path.parents if p.exists()), Path("/"))
            problem = space_problem(parent, MIN_FREE)
            out.append(Finding(what, problem is None, f"{path}: " + (problem or f"created at start (in {parent})")))
        else:
            problem = space_problem(path, MIN_FREE) if path.is_dir() else "not a directory"
            out.append(Finding(what, problem is None, f"{path}: " + (problem or "writable, room for a certificate")))
    return out


async def _ca(config: Config) -> list[Finding]:
    client = AcmeClient(config.directory, config.ca_bundle)
    try:
        try:
            await client.connect()
        except AcmeboxError as e:
            return [Finding("CA", False, f"{config.directory}: {e}")]
        offered = client.profiles
        profiles = ", ".join(sorted(offered)) if offered else "none announced"
        out = [Finding("CA", True, f"{config.directory}: ARI {'yes' if client.has_ari else 'no'}, profiles {profiles}")]
        for spec in config.certs:
            if spec.profile and offered is not None and spec.profile not in offered:
                out.append(Finding("profile", False, f"{spec.name}: {spec.profile!r} is not offered"))
        account = AccountFiles.for_directory(config.state_dir, config.directory)
        if not account.key_path.exists():
            out.append(Finding("account", True, "no key yet: one is created and registered at the first start"))
        else:
            try:
                url = await client.find_account(account.load_or_create_key())
            except AcmeboxError as e:
                out.append(Finding("account", False, str(e)))
            else:
                out.append(Finding("account", True, url or "this key has no account yet: one is registered at start"))
        return out
    finally:
        await client.close()


def _resolves(name: str) -> Finding:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError as e:
        return Finding(f"DNS {name}", False, f"does not resolve here ({e.strerror or e})")
    return Finding(f"DNS {name}", True, ", ".join(sorted({str(i[4][0]) for i in infos})))


async def _front_door(config: Config, names: list[str]) -> list[Finding]:
    """Fetch a challenge path through the front door for each name."""
    tokens = Http01Tokens()
    token, key_authz = secrets.token_urlsafe(16), f"acmebox-check-{secrets.token_urlsafe(8)}"
    tokens.present(token, key_authz)
    runner = None
    try:
        runner = await webapp.start(webapp.build_app(tokens, lambda: (True, "check")), config.listen)
    except AcmeboxError:
        token, key_authz = secrets.token_urlsafe(16), NOT_FOUND_BODY  # the service holds the port
    out = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for name in names:
                host, port = (config.self_check_via.host, config.self_check_via.port) if config.self_check_via \
                    else (name, 80)
                url = f"http://{host}:{port}{PREFIX}{token}"
                try:
                    async with session.get(url, headers={"Host": name}) as resp:
                        body = (await resp.content.read(4096)).decode(errors="replace").strip()
                        ok = body == key_authz
                        detail = f"{url}: HTTP {resp.status}" + ("" if ok else f", not from acmebox: {body[:60]!r}")
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    ok, detail = False, f"{url}: {type(e).__name__}: {e}"
                out.append(Finding(f"challenge path {name}", ok, detail))
    finally:
        if runner is not None:
            await runner.cleanup()
    return out


def _reloader(config: Config) -> Finding:
    return Finding("reload", *ReloadTarget.of(config.reload or ReloadSpec("none")).check())


def _served(config: Config) -> list[Finding]:
    if config.reload_verify is None:
        return [Finding("served", True, "not checked (no --reload-verify)")]
    store, door = CertStore(config.certs_dir), config.reload_verify
    out = []
    for spec in config.certs:
        stored = store.current(spec.name)
        try:
            serial = served_serial(door.host, door.port, spec.name)
        except (OSError, ReloadFailed, ValueError) as e:
            out.append(Finding(f"served {spec.name}", False, f"{door}: no TLS answer ({e})"))
            continue
        if stored is None:
            out.append(Finding(f"served {spec.name}", True, f"{door} presents serial {serial:x}; nothing live yet"))
        else:
            same = serial == stored.serial
            what = "the live certificate" if same else f"serial {serial:x}, not the live {stored.serial:x}"
            out.append(Finding(f"served {spec.name}", same, f"{door} presents {what}"))
    return out


def report(findings: list[Finding], as_json: bool) -> int:
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        width = max(len(f.check) for f in findings)
        for f in findings:
            print(f"{'ok  ' if f.ok else 'FAIL'}  {f.check.ljust(width)}  {f.detail}")
    return 0 if all(f.ok for f in findings) else 1
