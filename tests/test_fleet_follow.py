"""The follower and acmebox's fleet route over loopback (acmebox/follow.py, acmebox/fleet.py):
the follower installs what acmebox holds with the store's layout and bumps the generation
file; it reloads again when acmebox asks; a follower with another secret gets nothing; a held
poll answers as soon as the certificate changes; the node's readiness marker follows acmebox's
verdict on its frontend. (The Swarm test runs the same over a real
overlay network, with nginx.)"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import aiohttp
import pytest

from acmebox import placeholder, webapp
from acmebox.challenges import Http01Tokens
from acmebox.config import CertSpec, HostPort
from acmebox.fleet import Fleet, Frontend
from acmebox.fleetspec import FleetSpec
from acmebox.follow import READY_FILE, Follower, FollowSpec
from acmebox.reload import ReloadTarget
from acmebox.sealed import FleetKeys, Refused
from acmebox.statedir import StateDir
from acmebox.store import CertStore

NAME = "registry.test"
SECRET = b"fleet-secret-for-tests-0123456789abcdef"


def _issue(store: CertStore) -> int:
    """A certificate acmebox holds (self-signed; the chain's shape is what matters here)."""
    key_pem, cert_pem = placeholder.make((NAME,), "ec256", dt.datetime.now(dt.UTC))
    return store.save(NAME, key_pem, cert_pem, {"names": [NAME], "placeholder": False}).serial


def _follower(tmp_path: Path, port: int, secret: bytes = SECRET) -> Follower:
    certs = tmp_path / "node-certs"
    spec = FollowSpec(HostPort("127.0.0.1", port), FleetKeys.derive(secret), "node7", (CertSpec.build([NAME]),),
                      certs, ReloadTarget.parse("file", str(certs / "reload-generation")))
    f = Follower(spec)
    f.prepare()
    return f


async def test_follower_installs_and_reloads_on_request(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "issuer-certs")
    store.prepare()
    serial = _issue(store)
    fleet = Fleet(FleetSpec("frontends.invalid", FleetKeys.derive(SECRET)), store, StateDir(tmp_path), [NAME])
    runner = await webapp.start(webapp.build_app(Http01Tokens(), lambda: (True, ""), routes=[fleet.add_routes]),
                                HostPort("127.0.0.1", 0))
    try:
        port = webapp.bound_port(runner)
        follower = _follower(tmp_path, port)
        generation = tmp_path / "node-certs" / "reload-generation"
        assert follower.store.current(NAME).placeholder  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            assert await follower.poll(session, NAME, 0)
            live = follower.store.current(NAME)
            assert live is not None and live.serial == serial and not live.placeholder
            assert (tmp_path / "node-certs" / "live" / NAME / "combined.pem").read_bytes() == \
                (store.live / NAME / "combined.pem").read_bytes()
            assert generation.read_text().strip() == "1"
            assert fleet.followers["node7"].node == "node7"

            # Nothing new: the poll is answered empty, nothing is written.
            assert not await follower.poll(session, NAME, 0)
            assert generation.read_text().strip() == "1"

            # acmebox asks this node to reload: the next poll bumps the generation, no new version.
            fleet.ask_reload("node7")
            assert await follower.poll(session, NAME, 0)
            assert generation.read_text().strip() == "2"
            assert len(list((tmp_path / "node-certs" / "archive" / NAME).iterdir())) == 2  # placeholder + one

            # A held poll answers as soon as acmebox holds a new certificate.
            held = asyncio.ensure_future(follower.poll(session, NAME, 20))
            await asyncio.sleep(0.3)
            assert not held.done()
            renewed = _issue(store)
            fleet.want(NAME, renewed)
            assert await asyncio.wait_for(held, 5)
            assert follower.store.current(NAME).serial == renewed  # type: ignore[union-attr]
            assert generation.read_text().strip() == "3"

            # Another fleet secret: refused, nothing written.
            stranger = _follower(tmp_path / "other", port, secret=SECRET[::-1])
            with pytest.raises(Refused, match="HTTP 403"):
                await stranger.poll(session, NAME, 0)
            assert stranger.store.current(NAME).placeholder  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_readiness_marker_follows_acmebox_verdict(tmp_path: Path) -> None:
    """The marker nginx's readiness path serves: absent after the follower starts (even if an
    earlier run left it), kept while acmebox has not looked at the node, written when acmebox
    saw the node's nginx serve the live certificate, removed when acmebox sees the node as new
    (joining). A verdict alone installs nothing and reloads nothing."""
    store = CertStore(tmp_path / "issuer-certs")
    store.prepare()
    serial = _issue(store)
    fleet = Fleet(FleetSpec("frontends.invalid", FleetKeys.derive(SECRET)), store, StateDir(tmp_path), [NAME])
    fleet.want(NAME, serial)
    runner = await webapp.start(webapp.build_app(Http01Tokens(), lambda: (True, ""), routes=[fleet.add_routes]),
                                HostPort("127.0.0.1", 0))
    try:
        port = webapp.bound_port(runner)
        marker = tmp_path / "node-certs" / READY_FILE
        marker.parent.mkdir()
        marker.write_text("left by an earlier run\n")
        follower = _follower(tmp_path, port)
        assert not marker.exists()
        generation = tmp_path / "node-certs" / "reload-generation"
        async with aiohttp.ClientSession() as session:
            assert await follower.poll(session, NAME, 0)  # installs; acmebox has not looked at node7
            assert not marker.exists()
            assert generation.read_text().strip() == "1"
            assert not await follower.poll(session, NAME, 0)

            fleet.frontends["node7"] = Frontend("node7", "10.0.1.7")  # seen, not on the live one: joining
            assert fleet.state(fleet.frontends["node7"]) == "joining"
            assert not await follower.poll(session, NAME, 0)  # the follower already says not ready
            assert not marker.exists()

            fleet.frontends["node7"].ready = True
            assert await follower.poll(session, NAME, 0)
            assert "node7" in marker.read_text()
            assert not await follower.poll(session, NAME, 0)  # agreed: nothing to answer
            assert generation.read_text().strip() == "1"  # no reload for a verdict
            assert len(list((tmp_path / "node-certs" / "archive" / NAME).iterdir())) == 2  # placeholder + one

            fleet.frontends["node7"].ready = False  # a new nginx task on node7
            assert await follower.poll(session, NAME, 0)
            assert not marker.exists()
            assert generation.read_text().strip() == "1"

            fleet.frontends["node7"].ready = True
            assert await follower.poll(session, NAME, 0)
            assert marker.exists()
            # The node's follower starts again (the node restarted): acmebox no longer vouches for
            # the node until it has looked again.
            again = _follower(tmp_path, port)
            assert not marker.exists()
            assert await again.poll(session, NAME, 0)
            assert not marker.exists() and fleet.frontends["node7"].ready is False
            fleet.frontends["node7"].ready = True  # what its next look finds
            assert await again.poll(session, NAME, 0)
            assert marker.exists()
            follower = again

            # acmebox away: the marker stays as it is
            await runner.cleanup()
            with pytest.raises(aiohttp.ClientError):
                await follower.poll(session, NAME, 0)
            assert marker.exists()
    finally:
        await runner.cleanup()
