"""The operator commands next to `run`: `status`, `renew` and `revoke`.

They read the same certs and state directories as the service (inside the container:
`docker compose exec acmebox acmebox status`); `renew` asks the running service through
`control`, `revoke` talks to the CA with the stored account.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from acmebox import control, fleet, policies
from acmebox.account import AccountFiles
from acmebox.client import AcmeClient
from acmebox.errors import AcmeboxError, ConfigError
from acmebox.state import StateStore
from acmebox.store import CertStore, StoredCert


def _when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _issuer(stored: StoredCert) -> str:
    if stored.placeholder:
        return "(self-signed placeholder)"
    cn = stored.cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else stored.cert.issuer.rfc4514_string()


def _short(text: str | None, width: int = 80) -> str:
    text = " ".join((text or "-").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _status_of(name: str, store: CertStore, states: StateStore, served: dict[str, Any]) -> dict[str, Any]:
    """Everything `status` knows about one certificate, as JSON-ready values. The condition is
    policies.READY's verdict on what this process sees (the live files, the state, what the
    service saw served, revocations), with the service's recorded verdict standing in for the
    configuration, which only the service knows."""
    stored = store.current(name)
    state = states.load(name, owner=False)
    seen = served.get(name) or {}
    live = policies.Live.of(stored)
    record = state.verdict
    recorded = (policies.Verdict.from_record(record)
                if record is not None and live is not None and record.serial == live.serial else None)
    presented = policies.Presented(seen.get("serial"), seen.get("error")) if seen else None
    seen_now = policies.Observed(dt.datetime.now(dt.UTC), live, recorded=recorded,
                                 revoked=frozenset(states.revoked()), state=state, presented=presented)
    verdict = policies.ready(seen_now)
    serial = live.serial if live is not None else None
    since = record.since.isoformat() if record is not None and recorded == verdict else None
    ari = policies.ari_window(seen_now)
    return {
        "name": name,
        "condition": verdict.condition,
        "verdict": {"reason": str(verdict.reason), "message": verdict.message, "since": since},
        "names": stored.names if stored is not None else [],
        "issuer": _issuer(stored) if stored is not None else None,
        "directory": stored.meta.directory if stored is not None else None,
        "serial": serial,
        "not_after": stored.not_after.isoformat() if stored is not None else None,
        "served_serial": seen.get("serial"),
        "served_matches": None if not seen or serial is None else seen.get("serial") == serial,
        "served_checked": seen.get("at"),
        "next_renewal": state.next_renewal.isoformat() if state.next_renewal else None,
        "reason": state.renewal_reason,
        "failures": state.failures,
        "next_attempt": state.next_attempt.isoformat() if state.next_attempt else None,
        "last_error": state.last_error,
        "last_success": state.last_success.isoformat() if state.last_success else None,
        "ari_window_start": ari.start.isoformat() if ari else None,
        "ari_window_end": ari.end.isoformat() if ari else None,
        "ari_window_passed": policies.window_passed(seen_now) is not None,
    }


def _certificates(store: CertStore, states: StateStore) -> tuple[list[str], list[str]]:
    """(managed, left over): the certificates the service was last started with, and what
    else lies in the certs and state dirs (a certificate since dropped from the configuration).
    Everything on disk counts as managed when no service has recorded its configuration."""
    on_disk = {p.name for p in store.live.iterdir() if not p.name.startswith(".")} if store.live.is_dir() else set()
    on_disk |= {p.stem for p in states.dir.glob("*.json")} if states.dir.is_dir() else set()
    configured = control.read_configured(states.statedir)
    if configured is None:
        return sorted(on_disk), []
    return configured, sorted(on_disk - set(configured))


def status(certs_dir: Path, state_dir: Path, as_json: bool = False, storage: tuple[bool, str] | None = None) -> int:
    """One line per certificate (or `--json`), every configured one included (also one that
    never got a certificate). Exit 1 when any is not `ok` (policies.READY): missing, a
    placeholder, revoked, past the CA's renewal window (ARI), failing, not what the service is
    configured for (another CA directory, other names, key type or profile, a profile the CA
    withdrew), expired or in its last 1/20 of life, or served differently from the live one.
    Leftovers of certificates no longer configured are listed as `not managed` and do not count.
    `storage`: (ok, line) on the registry's disk (--registry-storage), printed last (to stderr
    with --json, whose shape stays a list of certificates); not ok is exit 1 as well."""
    if not state_dir.is_dir() and not certs_dir.is_dir():
        raise ConfigError(f"neither {certs_dir} nor {state_dir} exists: point --certs-dir and --state-dir at acmebox's")
    store, states = CertStore(certs_dir), StateStore(state_dir)
    managed, leftovers = _certificates(store, states)
    served = control.read_served(state_dir)
    rows = [_status_of(name, store, states, served) for name in managed]
    for name in leftovers:
        rows.append({**_status_of(name, store, states, served), "condition": "not managed"})
    _frontends(rows, fleet.recorded(state_dir))
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no certificates in {certs_dir}")
    else:
        table = [("NAME", "CONDITION", "ISSUER", "NOT AFTER", "SERVED", "NEXT", "WHY / LAST ERROR")]
        for r in rows:
            served_text = {True: "yes", False: f"no ({r['served_serial'] or 'no answer'})", None: "-"}
            # A passed window whose order fails says both (the CA may be overloaded by a revocation).
            failing = r["condition"] == "failing" or (r["condition"] == "window passed" and r["failures"])
            why = r["reason"] if r["condition"] in ("ok", "not managed") else r["verdict"]["message"]
            if failing:
                why = r["last_error"] if r["condition"] == "failing" else f"{why}; {r['last_error'] or ''}"
            table.append((r["name"], r["condition"], _short(r["issuer"], 24), _when_iso(r["not_after"]),
                          served_text[r["served_matches"]],
                          _when_iso(r["next_attempt"] if failing else r["next_renewal"]),
                          _short(why, 60)))
        widths = [max(len(t[i]) for t in table) for i in range(len(table[0]) - 1)]
        for t in table:
            print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=False)) + "  " + t[-1])
        for r in rows:
            for front in r.get("frontends", []):
                print(f"{r['name']}: {fleet.describe(front)}")
    if storage is not None:
        print(storage[1], file=sys.stderr if as_json else sys.stdout)
    certs_ok = all(r["condition"] in ("ok", "not managed") for r in rows)
    return 0 if certs_ok and (storage is None or storage[0]) else 1


def _frontends(rows: list[dict[str, Any]], recorded: dict[str, list[dict[str, Any]]]) -> None:
    """Frontends on other nodes (Swarm), as the service last saw them: each is a front door, judged
    by the same rule as the one (policies.not_served); an `ok` certificate one of them does not
    serve becomes `not served`."""
    for r in rows:
        if r["name"] not in recorded or r["serial"] is None:
            continue
        r["frontends"] = recorded[r["name"]]
        live = policies.Live(r["serial"], (), "", dt.datetime.min, dt.datetime.max)
        for front in r["frontends"]:
            door = f"frontend {front['node']} ({front['address']})"
            if front["missing_since"]:
                verdict: policies.Verdict | None = policies.Verdict(policies.Reason.NOT_SERVED,
                                                                    f"{door} missing since {front['missing_since']}")
            else:
                presented = policies.Presented(front["serial"], "no TLS answer", door)
                verdict = policies.not_served(policies.Observed(dt.datetime.now(dt.UTC), live, presented=presented))
            if verdict is not None and r["condition"] == "ok":
                r["condition"] = verdict.condition
                r["verdict"] = {**r["verdict"], "reason": str(verdict.reason), "message": verdict.message}


def _when_iso(value: str | None) -> str:
    return _when(dt.datetime.fromisoformat(value)) if value else "-"


def owner(store: CertStore, states: StateStore, name: str) -> str | None:
    """The managed certificate (its first name) that has `name` among its names, or None."""
    managed, _ = _certificates(store, states)
    if name in managed:
        return name
    for cert in managed:
        stored = store.current(cert)
        if stored is not None and name in (stored.meta.names or stored.names):
            return cert
    return None


def renew(certs_dir: Path, state_dir: Path, name: str | None, force: bool, timeout: float,
          ignore_ledger: bool = False) -> int:
    """Ask the running service, then wait for its answer per certificate: nothing to do (and
    when it is due), ordered and what the server made of it, or failed and why. A certificate
    busy with an order answers when that order ends. Exit 1 when any failed."""
    if control.running_pid(state_dir) is None:
        raise ConfigError(f"no acmebox service is running with state dir {state_dir}")
    store, states = CertStore(certs_dir), StateStore(state_dir)
    target = owner(store, states, name) if name else None
    if name and target is None:
        raise ConfigError(f"the service manages no certificate with the name {name}")
    if target is not None and target != name:
        print(f"{name} is a name of certificate {target}")
    req = control.submit(state_dir, target, force, ignore_ledger, pipe=True)
    answers = control.AnswerReader(state_dir, req.id)
    try:
        control.wake_service(state_dir)
        pending = {target} if target is not None else set(_certificates(store, states)[0])
        if not pending:
            raise AcmeboxError("the service has no certificate yet; see `acmebox status` or its log")
        deadline = time.monotonic() + timeout
        failed = False
        while pending and time.monotonic() < deadline:
            piped = answers.read()  # the service answers here too when it cannot write its state
            for n in sorted(pending):
                state = states.load(n, owner=False)
                result = state.request_result if state.handled_request == req.id else piped.get(n)
                if result is not None:
                    print(f"{n}: {result}")
                    failed |= result.startswith("failed") or "but not served" in result
                    pending.discard(n)
            time.sleep(0.1)
    finally:
        answers.close()
    if pending:
        raise AcmeboxError(f"no answer from the service for {', '.join(sorted(pending))} within {timeout:.0f}s "
                           "(it may be busy with an order; see `acmebox status`)")
    return 1 if failed else 0


async def revoke(certs_dir: Path, state_dir: Path, name: str, reason: int, ca_bundle: Path | None) -> int:
    store = CertStore(certs_dir)
    name = owner(store, StateStore(state_dir), name) or name  # any of the certificate's names
    stored = store.current(name)
    if stored is None or stored.placeholder:
        raise ConfigError(f"no issued certificate named {name} in {certs_dir}")
    directory = stored.meta.directory
    if directory is None:
        raise ConfigError(f"{name}: its metadata does not say which CA issued it")
    account = AccountFiles.for_directory(state_dir, directory)
    if not account.key_path.exists():
        raise ConfigError(f"no account key for {directory} in {state_dir}")
    client = AcmeClient(directory, ca_bundle)
    try:
        await client.connect()
        await client.login(account.load_or_create_key(), None)
        await client.revoke(stored.cert, reason)
    finally:
        await client.close()
    print(f"{name}: revoked serial {stored.serial:x} at {directory}")
    StateStore(state_dir).record_revoked(stored.serial)
    if control.running_pid(state_dir) is not None:
        control.submit(state_dir, name, force=True)
        control.wake_service(state_dir)
        print(f"{name}: asked the running service to replace it")
    else:
        print(f"{name}: no service is running; the next `acmebox run` (or `run --once`) replaces it")
    return 0
