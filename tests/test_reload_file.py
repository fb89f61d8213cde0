"""The socket-free `file` reloader with Debian's nginx: acmebox writes a generation number,
nginx/reload-on-change.sh (the script the compose file puts in the nginx container's
/docker-entrypoint.d/) notices it and reloads nginx, and the TLS check sees the new serial."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from acmebox import placeholder
from acmebox.config import HostPort
from acmebox.errors import ConfigError
from acmebox.reload import Reloader, ReloadFailed, ReloadTarget, served_serial
from tests.helpers import ROOT
from tests.helpers.process import free_port, wait_sync

pytestmark = pytest.mark.e2e  # Debian's nginx

WATCHER = ROOT / "nginx" / "reload-on-change.sh"
NAME = "srv.test"

CONF = """
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/tmp;
    proxy_temp_path {run}/tmp;
    fastcgi_temp_path {run}/tmp;
    uwsgi_temp_path {run}/tmp;
    scgi_temp_path {run}/tmp;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {name};
        ssl_certificate {run}/cert.pem;
        ssl_certificate_key {run}/key.pem;
        return 204;
    }}
}}
"""


@dataclass
class NginxWithWatcher:
    run: Path
    port: int
    generation: Path
    watcher_log: Path

    def write_cert(self) -> int:
        """A new self-signed certificate where nginx reads it; returns its serial."""
        key_pem, cert_pem = placeholder.make((NAME,), "ec256", dt.datetime.now(dt.UTC))
        (self.run / "key.pem").write_bytes(key_pem)
        (self.run / "cert.pem").write_bytes(cert_pem)
        return x509.load_pem_x509_certificate(cert_pem).serial_number

    def reloads(self) -> int:
        return self.watcher_log.read_text().count(": nginx reloaded")


@pytest.fixture
def nginx_with_watcher(tmp_path: Path) -> Iterator[NginxWithWatcher]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    run = tmp_path / "nginx"
    (run / "tmp").mkdir(parents=True)
    port = free_port()
    conf = run / "nginx.conf"
    conf.write_text(CONF.format(run=run, port=port, name=NAME))
    n = NginxWithWatcher(run, port, tmp_path / "certs" / "reload-generation", tmp_path / "watcher.log")
    n.generation.parent.mkdir()
    n.write_cert()
    subprocess.run([nginx, "-c", str(conf), "-p", str(run)], check=True, capture_output=True)
    env = {**os.environ, "ACMEBOX_RELOAD_FILE": str(n.generation), "ACMEBOX_RELOAD_POLL": "0.2",
           "ACMEBOX_RELOAD_COMMAND": f"{nginx} -c {conf} -p {run} -s reload",
           "ACMEBOX_RELOAD_FOREGROUND": "1"}
    with n.watcher_log.open("w") as log:
        watcher = subprocess.Popen(["sh", str(WATCHER)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_sync(lambda: "watching" in n.watcher_log.read_text(), what="the watcher to start")
        yield n
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        subprocess.run([nginx, "-c", str(conf), "-p", str(run), "-s", "stop"], capture_output=True)


async def test_generation_file_reloads_nginx_and_the_check_sees_it(
    nginx_with_watcher: NginxWithWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    n = nginx_with_watcher
    first = served_serial("127.0.0.1", n.port, NAME)
    new = n.write_cert()
    assert first != new and served_serial("127.0.0.1", n.port, NAME) == first  # nginx has not looked yet

    results: list[str] = []
    reloader = Reloader(ReloadTarget.parse("file", str(n.generation)), HostPort("127.0.0.1", n.port),
                        on_result=results.append)
    task = asyncio.create_task(reloader.run())
    try:
        reloader.request(NAME, new)
        await asyncio.sleep(0)
        await asyncio.wait_for(reloader.wait_idle(), 60)
    finally:
        task.cancel()
    assert results == ["ok"]  # reloaded and verified at the first attempt
    assert f"generation 1 written to {n.generation}" in caplog.text
    assert "now presents the new certificate(s)" in caplog.text
    assert served_serial("127.0.0.1", n.port, NAME) == new
    assert n.generation.read_text() == "1\n"
    assert n.reloads() == 1

    # the next change is the next generation, and another reload
    newer = n.write_cert()
    assert await ReloadTarget.parse("file", str(n.generation)).run() == f"generation 2 written to {n.generation}"
    wait_sync(lambda: n.reloads() == 2, what="the second reload")
    wait_sync(lambda: served_serial("127.0.0.1", n.port, NAME) == newer, what="the newer certificate")


async def test_file_reloader_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute path"):
        ReloadTarget.parse("file", "relative/generation")
    with pytest.raises(ConfigError, match="needs --reload-target"):
        ReloadTarget.parse("file", None)
    garbled = tmp_path / "generation"
    garbled.write_text("not a number\n")  # counts as 0: the watcher reacts to any change
    assert await ReloadTarget.parse("file", str(garbled)).run(pickup=0) == f"generation 1 written to {garbled}"
    with pytest.raises(ReloadFailed, match="writing"):
        await ReloadTarget.parse("file", str(tmp_path / "missing-dir" / "generation")).run(pickup=0)
