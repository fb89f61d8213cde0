"""What acmebox remembers about each certificate between runs, in <state>/certs/<name>.json:
the failure count and the next allowed attempt (so restarts and crash loops cannot reset the
backoff and hammer the CA), the cached ARI window, the outcome of the last attempt, and the
service's last READY verdict on the live certificate (policies.py), which `status` reads.

A state file that cannot be read as such (hand-edited, damaged) is moved aside as
`<name>.json.unreadable-<time>` and replaced by the safe assumption: the last attempt failed
just now. A naive timestamp is read as UTC.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acmebox import renewal
from acmebox.fsutil import atomic_write_json
from acmebox.statedir import StateDir

log = logging.getLogger(__name__)


class BadState(ValueError):
    """The state file parses as JSON but is not a state."""


def _time(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise BadState(f"{what} is not a timestamp")
    t = dt.datetime.fromisoformat(value)
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


def _optional_time(value: Any, what: str) -> dt.datetime | None:
    return None if value is None else _time(value, what)


@dataclass
class AriCache:
    serial: str  # hex serial of the certificate this window is for
    start: dt.datetime
    end: dt.datetime
    chosen: dt.datetime  # the random moment picked inside the window
    next_fetch: dt.datetime
    explanation_url: str | None = None


@dataclass
class VerdictRecord:
    """A verdict as kept: its reason token and message (policies.py), the live serial it is
    about, and since when that reason holds (cert-manager's lastTransitionTime)."""

    reason: str
    message: str
    serial: str | None  # hex; None: nothing live
    since: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "serial": self.serial, "since": self.since.isoformat()}

    @classmethod
    def from_json(cls, data: Any) -> VerdictRecord:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("reason", "message")):
            raise BadState("verdict is not a verdict")
        serial = data.get("serial")
        if serial is not None and not isinstance(serial, str):
            raise BadState("verdict.serial is not a string")
        return cls(data["reason"], data["message"], serial, _time(data.get("since"), "verdict.since"))


@dataclass
class CertState:
    failures: int = 0
    next_attempt: dt.datetime | None = None
    last_success: dt.datetime | None = None
    last_failure: dt.datetime | None = None
    last_error: str | None = None
    next_renewal: dt.datetime | None = None
    renewal_reason: str | None = None
    ari: AriCache | None = None
    handled_request: str | None = None  # id of the last `acmebox renew` request handled
    request_result: str | None = None
    verdict: VerdictRecord | None = None  # written by the service only

    def to_json(self) -> dict[str, Any]:
        def enc(v: Any) -> Any:
            return v.isoformat() if isinstance(v, dt.datetime) else v

        data = {k: enc(v) for k, v in asdict(self).items() if k not in ("ari", "verdict")}
        data["ari"] = {k: enc(v) for k, v in asdict(self.ari).items()} if self.ari else None
        data["verdict"] = self.verdict.to_json() if self.verdict else None
        return data

    @classmethod
    def from_json(cls, data: Any) -> CertState:
        """The state in `data`; BadState (or ValueError from a timestamp) when it is not one."""
        if not isinstance(data, dict):
            raise BadState(f"a JSON {type(data).__name__}, not an object")
        times = {"next_attempt", "last_success", "last_failure", "next_renewal"}
        texts = {"last_error", "renewal_reason", "handled_request", "request_result"}
        kwargs: dict[str, Any] = {}
        for name in times:
            kwargs[name] = _optional_time(data.get(name), name)
        for name in texts:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise BadState(f"{name} is not a string")
            kwargs[name] = value
        failures = data.get("failures", 0)
        if not isinstance(failures, int) or isinstance(failures, bool) or failures < 0:
            raise BadState("failures is not a count")
        kwargs["failures"] = failures
        ari = data.get("ari")
        if ari is not None:
            if not isinstance(ari, dict) or not isinstance(ari.get("serial"), str):
                raise BadState("ari is not an ARI cache")
            explanation = ari.get("explanation_url")
            kwargs["ari"] = AriCache(
                serial=ari["serial"],
                start=_time(ari.get("start"), "ari.start"),
                end=_time(ari.get("end"), "ari.end"),
                chosen=_time(ari.get("chosen"), "ari.chosen"),
                next_fetch=_time(ari.get("next_fetch"), "ari.next_fetch"),
                explanation_url=explanation if isinstance(explanation, str) else None,
            )
        verdict = data.get("verdict")
        kwargs["verdict"] = VerdictRecord.from_json(verdict) if verdict is not None else None
        return cls(**kwargs)


class StateStore:
    """One JSON file per certificate. Not locked: one process owns the state dir (service.py
    holds its lock), and within it each certificate's state is touched by its own maintainer."""

    def __init__(self, state_dir: StateDir | Path) -> None:
        self.statedir = StateDir.of(state_dir)
        self.dir = self.statedir.certs

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, name: str, now: dt.datetime | None = None, *, owner: bool = True) -> CertState:
        """The saved state, a fresh one when there is none, or, when the file is unreadable,
        "failed just now" (its backoff errs on the safe side). Only the `owner` (the service,
        not a `status` reading alongside it) moves an unreadable file aside."""
        path = self.path(name)
        try:
            return CertState.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return CertState()
        except (OSError, ValueError, RecursionError) as e:
            now = now or dt.datetime.now(dt.UTC)
            if owner:
                aside = path.with_name(f"{path.name}.unreadable-{now:%Y%m%dT%H%M%SZ}")
                try:
                    path.rename(aside)
                    where = f"moved to {aside.name}"
                except OSError as err:
                    where = f"left in place ({err.strerror or err})"
                log.warning("state of %s unreadable (%s); %s; counting it as a failure just now",
                            name, _short(e), where)
            return CertState(failures=1, last_failure=now, next_attempt=now + renewal.BACKOFF[0],
                             last_error=f"state file unreadable: {_short(e)}")

    def save(self, name: str, state: CertState) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_json(self.path(name), state.to_json(), 0o600)

    @property
    def revoked_path(self) -> Path:
        return self.statedir.revoked

    def record_revoked(self, serial: int) -> None:
        """Remember a serial `acmebox revoke` revoked: the service replaces such a certificate
        at once (also when it was stopped at the time), `status` and /healthz say so. The last
        100 are kept."""
        serials = [s for s in self.revoked() if s != f"{serial:x}"] + [f"{serial:x}"]
        self.statedir.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_json(self.revoked_path, serials[-100:], 0o600)

    def revoked(self) -> set[str]:
        """Hex serials recorded as revoked."""
        try:
            data = json.loads(self.revoked_path.read_text())
        except (OSError, ValueError):
            return set()
        return {str(s) for s in data} if isinstance(data, list) else set()


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
