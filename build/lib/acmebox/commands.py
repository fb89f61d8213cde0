"""The operator commands next to `run`: `status`, `renew` and `revoke`.

They read the same certs and state directories as the service (inside the container:
`docker compose exec acmebox acmebox status`); `renew` asks the running service through
`control`, `revoke` talks to the CA with the stored account.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from cryptography.x509.oid import NameOID

from acmebox import control
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


def status(certs_dir: Path, state_dir: Path) -> int:
    store, states = CertStore(certs_dir), StateStore(state_dir)
    names = sorted(p.name for p in store.live.iterdir() if not p.name.startswith(".")) if store.live.is_dir() else []
    if not names:
        print(f"no certificates in {certs_dir}")
        return 0
    rows = [("NAME", "DOMAINS", "ISSUER", "NOT AFTER", "NEXT RENEWAL", "WHY", "LAST ERROR")]
    for name in names:
        stored = store.current(name)
        state = states.load(name, owner=False)
        if stored is None:
            rows.append((name, "-", "(unreadable)", "-", "-", "-", state.last_error or "-"))
            continue
        error = state.last_error or "-"
        if state.failures:
            error = f"{error} ({state.failures} in a row; next attempt {_when(state.next_attempt)})"
        rows.append((name, ",".join(stored.names), _issuer(stored), _when(stored.not_after),
                     _when(state.next_renewal), state.renewal_reason or "-", error))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def renew(state_dir: Path, name: str | None, force: bool, timeout: float) -> int:
    if control.running_pid(state_dir) is None:
        raise ConfigError(f"no acmebox service is running with state dir {state_dir}")
    states = StateStore(state_dir)
    if name and not states.path(name).exists():
        raise ConfigError(f"the service manages no certificate named {name}")
    req = control.submit(state_dir, name, force)
    control.wake_service(state_dir)
    targets = [name] if name else sorted(p.stem for p in states.dir.glob("*.json"))
    pending = set(targets)
    deadline = time.monotonic() + timeout
    failed = False
    while pending and time.monotonic() < deadline:
        for n in sorted(pending):
            state = states.load(n, owner=False)
            if state.handled_request == req.id:
                print(f"{n}: {state.request_result}")
                failed |= (state.request_result or "").startswith("failed")
                pending.discard(n)
        time.sleep(0.1)
    if pending:
        raise AcmeboxError(f"no answer from the service for {', '.join(sorted(pending))} within {timeout:.0f}s")
    return 1 if failed else 0


async def revoke(certs_dir: Path, state_dir: Path, name: str, reason: int, ca_bundle: Path | None) -> int:
    stored = CertStore(certs_dir).current(name)
    if stored is None or stored.placeholder:
        raise ConfigError(f"no issued certificate named {name} in {certs_dir}")
    directory = stored.meta.get("directory")
    if not isinstance(directory, str):
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
    if control.running_pid(state_dir) is not None:
        control.submit(state_dir, name, force=True)
        control.wake_service(state_dir)
        print(f"{name}: asked the running service to replace it")
    else:
        print(f"{name}: no service is running; start `acmebox run --force-renew` to replace it")
    return 0
