"""What acmebox remembers about each certificate between runs, in <state>/certs/<name>.json:
the failure count and the next allowed attempt (so restarts and crash loops cannot reset the
backoff and hammer the CA), the cached ARI window, and the outcome of the last attempt.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from acmebox.fsutil import atomic_write_json

log = logging.getLogger(__name__)


def _parse_time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass
class AriCache:
    serial: str  # hex serial of the certificate this window is for
    start: dt.datetime
    end: dt.datetime
    chosen: dt.datetime  # the random moment picked inside the window
    next_fetch: dt.datetime
    explanation_url: str | None = None


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

    def to_json(self) -> dict[str, Any]:
        def enc(v: Any) -> Any:
            return v.isoformat() if isinstance(v, dt.datetime) else v

        data = {k: enc(v) for k, v in asdict(self).items() if k != "ari"}
        data["ari"] = {k: enc(v) for k, v in asdict(self.ari).items()} if self.ari else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CertState:
        times = {"next_attempt", "last_success", "last_failure", "next_renewal"}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in data and f.name != "ari":
                kwargs[f.name] = _parse_time(data[f.name]) if f.name in times else data[f.name]
        ari = data.get("ari")
        if isinstance(ari, dict):
            kwargs["ari"] = AriCache(
                serial=str(ari["serial"]),
                start=dt.datetime.fromisoformat(ari["start"]),
                end=dt.datetime.fromisoformat(ari["end"]),
                chosen=dt.datetime.fromisoformat(ari["chosen"]),
                next_fetch=dt.datetime.fromisoformat(ari["next_fetch"]),
                explanation_url=ari.get("explanation_url"),
            )
        return cls(**kwargs)


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "certs"

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, name: str) -> CertState:
        try:
            return CertState.from_json(json.loads(self.path(name).read_text()))
        except FileNotFoundError:
            return CertState()
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("state of %s unreadable (%s); starting it afresh", name, e)
            return CertState()

    def save(self, name: str, state: CertState) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_json(self.path(name), state.to_json(), 0o600)
