"""The challenge/health/token server against clients that hold connections open, send half a
request, or send garbage: limits and timeouts close them, the log gets one line per kind of
trouble at a bounded rate, and a lowered file-descriptor limit does not take the service down.
Assertions are on counts and states (closed or answered), never on how long something took."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from acmebox import webapp
from acmebox.challenges import Http01Tokens
from acmebox.config import HostPort
from tests.helpers import ROOT
from tests.helpers.process import acmebox_env, free_port, wait_sync

# How long a test waits for the server to act before it gives up; far above the timeouts set.
PATIENCE = 30.0


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[int, web.AppRunner]]:
    monkeypatch.setattr(webapp, "SWEEP_EVERY", 0.2)
    tokens = Http01Tokens()
    tokens.present("tok", "tok.thumb")
    runner = await webapp.start(webapp.build_app(tokens, lambda: (True, "ok")), HostPort("127.0.0.1", 0),
                                max_connections=8, header_timeout=0.5, max_age=2.0)
    yield webapp.bound_port(runner), runner
    await runner.cleanup()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Read until the server closes; True when it did (EOF or reset) within PATIENCE."""
    try:
        async with asyncio.timeout(PATIENCE):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def get(port: int, path: str = "/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    async with asyncio.timeout(PATIENCE):
        data = await reader.read()
    writer.close()
    return data


async def test_silent_half_sent_and_idle_connections_are_closed(server: tuple[int, web.AppRunner]) -> None:
    port, _ = server
    silent_r, _silent_w = await asyncio.open_connection("127.0.0.1", port)
    half_r, half_w = await asyncio.open_connection("127.0.0.1", port)
    half_w.write(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a\r\n")

    async def drip() -> None:
        for _ in range(int(PATIENCE * 10)):
            await asyncio.sleep(0.1)
            try:
                half_w.write(b"X-Slow: 1\r\n")
                await half_w.drain()
            except ConnectionError:
                return

    dripper = asyncio.ensure_future(drip())
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    idle_w.write(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await idle_r.readuntil(b"tok.thumb")
    assert first.startswith(b"HTTP/1.1 200")
    results = await asyncio.gather(closed_by_server(silent_r), closed_by_server(half_r), closed_by_server(idle_r))
    dripper.cancel()
    assert results == [True, True, True]


async def test_a_busy_connection_is_closed_at_its_maximum_age(server: tuple[int, web.AppRunner]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = 0
    async with asyncio.timeout(PATIENCE):
        while True:
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                await writer.drain()
                if not (await reader.readuntil(b"ok\n")).startswith(b"HTTP/1.1 200"):
                    break
                answered += 1
            except (ConnectionError, asyncio.IncompleteReadError):
                break
            await asyncio.sleep(0.1)
    assert answered >= 1, "it was served before it was closed"


async def test_at_the_connection_cap_the_oldest_go_first(server: tuple[int, web.AppRunner]) -> None:
    port, runner = server
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
    answer = await get(port, "/.well-known/acme-challenge/tok")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"tok.thumb")
    assert runner.server is not None and len(runner.server.connections) <= 8 + webapp.ACCEPT_BATCH
    closed = await asyncio.gather(*(closed_by_server(r) for r, _ in held))
    assert closed.count(True) == 30  # the cap closed the first ones, the header timeout the rest
    for _, w in held:
        w.close()


async def test_malformed_requests_log_one_line_each_at_a_bounded_rate(
    server: tuple[int, web.AppRunner], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = server
    caplog.set_level(logging.DEBUG)
    smuggle = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    bad = [b"GET /" + b"A" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"G\x01T / HTTP/1.1\r\n\r\n",
           b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 100_000 + b"\r\n\r\n",
           smuggle]
    statuses = []
    for request in bad * 6:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
        except ConnectionError:
            pass
        async with asyncio.timeout(PATIENCE):
            try:
                statuses.append((await reader.read(12))[9:12])
            except ConnectionError:
                statuses.append(b"reset")
        writer.close()
    assert all(s == b"400" or s == b"reset" for s in statuses), statuses
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "acmebox"))]
    assert not any(r.exc_info for r in records), "no traceback"
    assert all("\n" not in r.getMessage() for r in records)
    errors = [r for r in records if "Error handling request" in r.getMessage()]
    assert 1 <= len(errors) <= 10, len(errors)


def test_lowered_descriptor_limit_with_held_connections(tmp_path: Path) -> None:
    """A child `acmebox run` with RLIMIT_NOFILE 256 (soft and hard) and 600 connections held
    against it: it still answers, and its log stays a few lines without tracebacks."""
    limit, held_count = 256, 600

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    port, ca_port = free_port(), free_port()  # nothing listens on ca_port: the CA stays unreachable
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "acmebox", "run", "--domain", "limits.test", "--directory",
             f"https://127.0.0.1:{ca_port}/dir", "--certs-dir", str(tmp_path / "c"), "--state-dir",
             str(tmp_path / "s"), "--listen", f"127.0.0.1:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT, env=acmebox_env(), cwd=ROOT, preexec_fn=lower_limit,
        )
    held: list[socket.socket] = []
    try:
        wait_sync(lambda: "serving HTTP-01" in log_path.read_text() or proc.poll() is not None, 30, "service up")
        for _ in range(held_count):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            except OSError:
                break
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            answer = s.recv(100)
        assert answer.startswith(b"HTTP/1.1 503"), answer  # answered: no certificate yet
        assert proc.poll() is None
        closed = 0
        for s in held:
            s.settimeout(PATIENCE)
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == len(held)
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=15)
    log = log_path.read_text()
    assert f"file-descriptor limit {limit} (hard {limit}): at most 128 client connections" in log
    assert "Traceback" not in log and "out of system resource" not in log and "cannot accept" not in log
    assert len(log.splitlines()) < 40, log[-3000:]
