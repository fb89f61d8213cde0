"""Debian's nginx run by the tests: its own prefix directory, its own main configuration."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SERVERS_MAIN = """
worker_processes 1;
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
{servers}
}}
"""


@dataclass
class Nginx:
    """nginx with prefix `run` and main configuration `conf` (which writes run/nginx.pid)."""

    run: Path
    conf: Path
    binary: str = field(default_factory=lambda: shutil.which("nginx") or "/usr/sbin/nginx")

    @classmethod
    def serving(cls, run: Path, servers: str) -> Nginx:
        """nginx whose configuration is SERVERS_MAIN around the given `server { ... }` blocks."""
        run.mkdir(parents=True, exist_ok=True)
        conf = run / "nginx.conf"
        conf.write_text(SERVERS_MAIN.format(run=run, servers=servers))
        return cls(run, conf)

    @property
    def pid_file(self) -> Path:
        return self.run / "nginx.pid"

    def start(self) -> None:
        subprocess.run([self.binary, "-c", str(self.conf), "-p", str(self.run)], check=True, capture_output=True)

    def stop(self) -> None:
        if self.pid_file.exists():
            subprocess.run([self.binary, "-c", str(self.conf), "-p", str(self.run), "-s", "stop"], capture_output=True)
