"""The seed's way (`export DOCKER_REGISTRY_DOMAIN_NAME=...; docker-compose up`, no
start-registry.sh), with the name spelt any way: acmebox gets the name as typed from compose and
writes live/<canonical>/; nginx gets it as typed too, and the image's entrypoint sources
nginx/canonical-name.envsh (mounted as the compose file says) before rendering its template.
Both must meet at the same directory: nginx -t loads the certificate acmebox wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import acmebox_env, free_port, run_acmebox, user_free_env
from tests.helpers.stack import NGINX_MAIN, fit_host_nginx, render_templates

pytestmark = pytest.mark.e2e  # Pebble, nginx -t


def nginx_service(compose_dir: Path, typed: str) -> dict:  # type: ignore[type-arg]
    """nginx as `docker-compose config` resolves it from the seed's two variables (no .env)."""
    env = user_free_env(DOCKER_REGISTRY_DOMAIN_NAME=typed, DOCKER_REGISTRY_CERT_EMAIL_ADDRESS="ops@example.com")
    out = subprocess.run(["docker-compose", "config"], capture_output=True, text=True, env=env, cwd=compose_dir)
    assert out.returncode == 0, out.stderr
    return dict(yaml.safe_load(out.stdout)["services"]["nginx"])


def host_path(service: dict, target: str) -> Path:  # type: ignore[type-arg]
    """The host side of the volume `docker-compose config` mounts at `target` (either syntax)."""
    for v in service["volumes"]:
        source, dest = (v["source"], v["target"]) if isinstance(v, dict) else str(v).split(":")[:2]
        if dest == target:
            return Path(source)
    raise KeyError(target)


def entrypoint_env(service: dict, env: dict[str, str]) -> dict[str, str]:  # type: ignore[type-arg]
    """What the nginx image's entrypoint hands its template step: the environment after
    sourcing the *.envsh files the compose file mounts into /docker-entrypoint.d/."""
    targets = [v["target"] if isinstance(v, dict) else str(v).split(":")[1] for v in service["volumes"]]
    envsh = sorted(t for t in targets if t.startswith("/docker-entrypoint.d/") and t.endswith(".envsh"))
    assert envsh, "the compose file mounts no *.envsh"
    script = "".join(f'. "{host_path(service, t)}" >&2 && ' for t in envsh) + "env -0"  # what they say goes to stderr
    out = subprocess.run(["sh", "-c", script], capture_output=True, env=env, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [("Registry.TEST.", "registry.test"), ("Bücher.Test", "xn--bcher-kva.test")],
    ids=["upper-case-trailing-dot", "unicode"],
)
def test_any_spelling_reaches_nginx_and_acmebox_as_one_directory(
    pebble: Pebble, dirs: Dirs, compose_copy: Path, tmp_path: Path, typed: str, canonical: str
) -> None:
    # acmebox as compose runs it: the seed's variable, as typed.
    out = run_acmebox("run", "--once", *pebble_args(pebble, dirs),
                      env=acmebox_env(DOCKER_REGISTRY_DOMAIN_NAME=typed))
    assert out.returncode == 0, out.stderr
    assert (dirs.certs / "live" / canonical / "combined.pem").is_file()

    service = nginx_service(compose_copy, typed)
    nginx_env = {k: str(v) for k, v in service["environment"].items()}
    assert nginx_env["REGISTRY_DOMAIN"] == typed, "compose passes the name as typed"
    host_specific = {"PATH": os.environ["PATH"], "NGINX_LISTEN_HTTP": f"127.0.0.1:{free_port()}",
                     "NGINX_LISTEN_HTTPS": f"127.0.0.1:{free_port()}", "ACMEBOX_UPSTREAM": "127.0.0.1:1",
                     "REGISTRY_UPSTREAM": "127.0.0.1:1", "CERTS_DIR": str(dirs.certs)}
    env = entrypoint_env(service, {**nginx_env, **host_specific})
    assert env["REGISTRY_DOMAIN"] == canonical

    run = tmp_path / "nginx"
    (run / "tmp").mkdir(parents=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    rendered = render_templates(host_path(service, "/etc/nginx/templates"), run / "conf.d",
                                {k: env[k] for k in (*nginx_env, "PATH")})
    fit_host_nginx(rendered, nginx)  # `http2 on;` for nginx < 1.25.1
    (conf,) = rendered
    paths = {line.split()[1].rstrip(";") for line in conf.read_text().splitlines()
             if line.strip().startswith(("ssl_certificate ", "ssl_certificate_key "))}
    assert paths == {str(dirs.certs / "live" / canonical / "combined.pem")}
    (run / "nginx.conf").write_text(NGINX_MAIN.format(run=run))
    check = subprocess.run([nginx, "-t", "-c", str(run / "nginx.conf"), "-p", str(run)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
