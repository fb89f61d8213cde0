"""Moving a certificate's ARI window at a real Pebble (its management API's
/set-renewal-info/), and a front door that records who fetched which challenge."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.helpers.nginx import Nginx
from tests.helpers.pebble import Pebble


def set_ari_window(pebble: Pebble, cert: x509.Certificate, start: dt.datetime, end: dt.datetime) -> None:
    """From now on, Pebble answers renewalInfo for `cert` with this suggested window."""
    window = {"suggestedWindow": {"start": start.isoformat().replace("+00:00", "Z"),
                                  "end": end.isoformat().replace("+00:00", "Z")}}
    body = {"Certificate": cert.public_bytes(Encoding.PEM).decode(), "ARIResponse": json.dumps(window)}
    assert pebble.post("/set-renewal-info/", json.dumps(body).encode()) == 200


def window_in_the_past(pebble: Pebble, cert: x509.Certificate) -> None:
    """What Let's Encrypt's drill did: the window ends before now."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    set_ari_window(pebble, cert, now - dt.timedelta(days=2), now - dt.timedelta(days=1))


# Pebble finalizes an order in a goroutine and adds it to its by-serial index only after the
# certificate can be fetched: a renewal naming that certificate in `replaces` can arrive first
# (more likely on a loaded machine) and is refused with this; acmebox then orders once more
# without `replaces` (maintain.py). A test server's race, not a CA's behaviour.
PEBBLE_INDEX_RACE = "could not find order resulting in the given certificate serial number"


def orders_created(pebble: Pebble) -> int:
    """Orders Pebble created (a refused newOrder creates none)."""
    return pebble.log().count("Added order")


def replaces_refusals(log_text: str) -> int:
    """acmebox's retries without `replaces`; each must be Pebble's indexing race."""
    refusals = [line for line in log_text.splitlines() if "the CA refused replaces=" in line]
    assert all(PEBBLE_INDEX_RACE in line for line in refusals), refusals
    return len(refusals)


FRONT_DOOR = """
    log_format challenges '$request_uri "$http_user_agent"';
    server {{
        listen 127.0.0.1:{port};
        access_log {log} challenges;
        location /.well-known/acme-challenge/ {{ proxy_pass http://127.0.0.1:{upstream}; }}
    }}
"""


@dataclass
class Fetch:
    token: str
    self_check: bool  # acmebox's own fetch (aiohttp), not the CA's


class FrontDoor:
    """A real nginx on Pebble's HTTP-01 port that passes the challenge path to acmebox on
    `upstream` and logs every fetch: the self-check and the CA's validations both go through it."""

    def __init__(self, run: Path, port: int, upstream: int) -> None:
        self.log = run / "challenges.log"
        self.nginx = Nginx.serving(run, FRONT_DOOR.format(port=port, upstream=upstream, log=self.log))

    def __enter__(self) -> FrontDoor:
        self.nginx.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.nginx.stop()

    def fetches(self) -> list[Fetch]:
        out = []
        for line in self.log.read_text().splitlines() if self.log.exists() else []:
            uri, _, agent = line.partition(" ")
            out.append(Fetch(uri.rsplit("/", 1)[-1], "aiohttp" in agent))
        return out

    def by_token(self) -> dict[str, list[Fetch]]:
        """The fetches of each token, in the order nginx logged them."""
        tokens: dict[str, list[Fetch]] = {}
        for f in self.fetches():
            tokens.setdefault(f.token, []).append(f)
        return tokens
