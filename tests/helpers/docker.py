"""Clients of a Docker engine the tests started (see tests/fixtures/docker.py and
containers.py): the test /etc/hosts in which registry.test is loopback, a busybox image made
without a registry, and the docker CLI pointed at the engine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

TEST_HOSTS = "127.0.0.1 localhost\n::1 localhost\n127.0.0.1 registry.test\n"


def with_hosts(hosts: Path, command: list[str]) -> list[str]:
    """`command` in a private mount namespace that sees `hosts` as /etc/hosts: the client
    resolves registry.test to loopback, nothing on the machine changes."""
    return ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *command]


def docker(
    host: str, *args: str, config: Path | None = None, stdin: str | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`docker -H host args...`; `config` is its DOCKER_CONFIG directory (logins)."""
    env = {**os.environ, "DOCKER_CONFIG": str(config)} if config is not None else None
    return subprocess.run(
        ["docker", "-H", host, *args], input=stdin, capture_output=True, text=True, env=env, timeout=300, check=check
    )


def busybox_image(docker_host: str, tmp: Path, tag: str) -> str:
    """An image made with `docker import` from a root filesystem holding static busybox."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise RuntimeError("busybox is not installed (Debian package busybox-static)")
    rootfs = tmp / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "tmp").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in ("sh", "sleep", "echo"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True).stdout
    subprocess.run(["docker", "-H", docker_host, "import", "-", tag], input=tar, check=True, capture_output=True)
    return tag
