"""Every common way of mounting the certs volume into another container, checked the way it
is used: a real nginx reads the certificate through a bind mount made in a private mount
namespace (what docker does for `-v`), and a TLS handshake shows which certificate it serves
after each of 4 forced renewals by `acmebox run --once --force-renew` against Pebble."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from acmebox.reload import served_serial
from acmebox.store import KEEP_VERSIONS
from tests.helpers.certs import live_serial
from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import free_port, run_acmebox, wait_sync

pytestmark = pytest.mark.e2e
NAME = "registry.test"


@dataclass(frozen=True)
class Style:
    id: str
    binds: tuple[tuple[str, str], ...]  # (source under the certs dir, target under the mount dir)
    cert: str  # ssl_certificate, under the mount dir
    key: str  # ssl_certificate_key
    follows_renewals: bool


STYLES = [
    Style("whole volume, combined.pem", (("", "volume"),),
          f"volume/live/{NAME}/combined.pem", f"volume/live/{NAME}/combined.pem", True),
    Style("whole volume, fullchain.pem + privkey.pem", (("", "volume"),),
          f"volume/live/{NAME}/fullchain.pem", f"volume/live/{NAME}/privkey.pem", True),
    Style("live/ only", (("live", "live"),), f"live/{NAME}/combined.pem", f"live/{NAME}/combined.pem", True),
    Style("live/<name>/ only, combined.pem", ((f"live/{NAME}", "name"),),
          "name/combined.pem", "name/combined.pem", True),
    Style("live/<name>/ only, fullchain.pem + privkey.pem", ((f"live/{NAME}", "name"),),
          "name/fullchain.pem", "name/privkey.pem", True),
    # A file bind mount pins the inode it found; no atomic update can reach it (README).
    Style("single files fullchain.pem + privkey.pem",
          ((f"live/{NAME}/fullchain.pem", "files/fullchain.pem"), (f"live/{NAME}/privkey.pem", "files/privkey.pem")),
          "files/fullchain.pem", "files/privkey.pem", False),
    Style("single file combined.pem", ((f"live/{NAME}/combined.pem", "combined.pem"),),
          "combined.pem", "combined.pem", False),
]

NGINX_CONF = """
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
{servers}
}}
"""
SERVER = """    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {name};
        ssl_certificate     {cert};
        ssl_certificate_key {key};
        return 204;
    }}
"""


def start_nginx_in_namespace(run: Path, certs: Path, mnt: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    """nginx as the only process of a private mount namespace holding every style's binds."""
    binds = {bind for style in STYLES for bind in style.binds}
    for source, target in binds:
        path = mnt / target
        if (certs / source).is_dir():
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    servers = "".join(SERVER.format(port=ports[s.id], name=NAME, cert=mnt / s.cert, key=mnt / s.key) for s in STYLES)
    (run / "tmp").mkdir(parents=True)
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, servers=servers))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    script = " && ".join(
        [f"mount --bind {shlex.quote(str(certs / s))} {shlex.quote(str(mnt / t))}" for s, t in sorted(binds)]
        + [f"exec {nginx} -c {shlex.quote(str(conf))} -p {shlex.quote(str(run))} -g 'daemon off;'"]
    )
    log = (run / "stderr.log").open("w")
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdout=log, stderr=subprocess.STDOUT)


def reloaded(master: int) -> bool:
    """The master has one worker again: the old one, which would still answer with the
    configuration from before the reload, is gone."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return len(children) == 1 and "is shutting down" not in (Path(f"/proc/{children[0]}/cmdline").read_text())


def serving(port: int) -> int | None:
    try:
        return served_serial("127.0.0.1", port, NAME, timeout=2)
    except OSError:
        return None


def test_every_mount_style_after_four_renewals(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    # --no-ari: no `replaces`, which Pebble refuses now and then ("could not find an order for the
    # given certificate"); storage is the subject here, not ARI.
    args = ["run", "--once", "--no-ari", "--domain", NAME, *pebble_args(pebble, dirs)]
    first = run_acmebox(*args)
    assert first.returncode == 0, first.stderr
    first_serial = live_serial(dirs.certs, NAME)
    ports = {s.id: free_port() for s in STYLES}
    nginx = start_nginx_in_namespace(tmp_path / "nginx", dirs.certs, tmp_path / "mnt", ports)
    try:
        for style in STYLES:
            wait_sync(lambda p=ports[style.id]: serving(p) is not None or nginx.poll() is not None,
                      what=f"nginx serving {style.id}")
            assert serving(ports[style.id]) == first_serial, style.id
        serials = [first_serial]
        for renewal in range(1, 5):
            again = run_acmebox(*args, "--force-renew", "--ignore-ledger")  # 5 in a week: past the ledger
            assert again.returncode == 0, again.stderr
            newest = live_serial(dirs.certs, NAME)
            assert newest not in serials
            serials.append(newest)
            before = Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read_text().split()
            os.kill(nginx.pid, signal.SIGHUP)  # what acmebox's reloader does
            wait_sync(lambda b=before: Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read_text().split() != b,
                      what="a new nginx worker")
            wait_sync(lambda: reloaded(nginx.pid), what=f"nginx reloaded after renewal {renewal}")
            seen = {style.id: serving(ports[style.id]) for style in STYLES}
            expected = {style.id: newest if style.follows_renewals else first_serial for style in STYLES}
            assert seen == expected, f"renewal {renewal}"
        # The versions the first mounts saw are gone from the archive, and nothing broke.
        kept = sorted(p.name for p in (dirs.certs / "archive" / NAME).iterdir())
        assert kept == [f"{v:04d}" for v in range(6 - KEEP_VERSIONS, 6)]
        assert nginx.poll() is None
    finally:
        if nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(timeout=20)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
