"""The Reloader: several certificates changed together cause one reload, and a server that
keeps presenting the old certificate is caught by the TLS check and reloaded again."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from acmebox import placeholder
from acmebox.config import HostPort
from acmebox.reload import Reloader, ReloadTarget
from tests.helpers.process import free_port


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A real TLS server on loopback presenting one certificate; yields (port, its serial)."""
    key_pem, cert_pem = placeholder.make(("srv.test",), "ec256", dt.datetime.now(dt.UTC))
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, x509.load_pem_x509_certificate(cert_pem).serial_number
    stop.set()
    thread.join()
    listener.close()


async def test_changes_together_make_one_reload(tmp_path: Path) -> None:
    log = tmp_path / "reloads"
    results: list[str] = []
    reloader = Reloader(ReloadTarget.parse("command", f"sh -c 'echo x >> {log}'"),
                        on_result=results.append)
    task = asyncio.create_task(reloader.run())
    try:
        for name in ("a.test", "b.test", "c.test"):
            reloader.request(name, 1)
        await asyncio.sleep(0)
        await asyncio.wait_for(reloader.wait_idle(), 10)
        assert log.read_text() == "x\n"
        assert results == ["ok"]
        reloader.request("a.test", 2)
        await asyncio.sleep(0)
        await asyncio.wait_for(reloader.wait_idle(), 10)
        assert log.read_text() == "x\nx\n"
    finally:
        task.cancel()


async def test_a_failing_reload_command_is_reported(tmp_path: Path) -> None:
    results: list[str] = []
    reloader = Reloader(ReloadTarget.parse("command", "false"), on_result=results.append, attempts=3)
    task = asyncio.create_task(reloader.run(sleep=no_wait))
    try:
        reloader.request("a.test", 1)
        await asyncio.sleep(0)
        await asyncio.wait_for(reloader.wait_idle(), 30)
        assert results == ["failed"] * 3
        assert reloader.failed
    finally:
        task.cancel()


async def test_verification_catches_the_old_certificate(
    tls_server: tuple[int, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    port, serial = tls_server
    results: list[str] = []
    reloader = Reloader(ReloadTarget.parse("command", "true"), HostPort("127.0.0.1", port),
                        on_result=results.append, attempts=3)
    task = asyncio.create_task(reloader.run(sleep=no_wait))
    try:
        reloader.request("srv.test", serial + 1)  # the server never presents it
        await asyncio.sleep(0)
        await asyncio.wait_for(reloader.wait_idle(), 60)
        assert results == ["ok", "mismatch"] * 3
        assert f"still presents srv.test: serial {serial:x}, expected {serial + 1:x}" in caplog.text
        assert reloader.matches("srv.test") is False

        results.clear()
        reloader.request("srv.test", serial)  # what it serves already: nothing to reload
        await asyncio.sleep(0)
        await asyncio.wait_for(reloader.wait_idle(), 30)
        assert results == []
        assert reloader.matches("srv.test") is True
    finally:
        task.cancel()
