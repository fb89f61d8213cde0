"""The registry stack without containers: the compose file's nginx templates rendered exactly
as the official nginx image renders them, Debian's nginx and docker-registry run with the
repo's files, acmebox and Pebble; all on loopback, ports remapped.

What the compose file says (template directory, environment variable names, registry config
path, UI files) is read from it, not repeated here: only host-specific values are remapped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose" / "docker-compose.yml"

NGINX_MAIN = """
worker_processes 2;
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {run}/access.log;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    include {run}/conf.d/*.conf;
}}
"""


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(COMPOSE.read_text())


def host_path_of(service: dict, container_path: str) -> Path:  # type: ignore[type-arg]
    """The host side of the compose volume mounted at `container_path` (relative to compose/)."""
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if target == container_path:
            return (COMPOSE.parent / source).resolve()
    raise KeyError(f"no volume at {container_path}")


def nginx_host_path(variable: str) -> Path:
    """The host directory behind a container path that the nginx environment names (e.g. UI_ROOT)."""
    service = compose()["services"]["nginx"]
    return host_path_of(service, str(service["environment"][variable]))


def template_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))


def render_templates(template_dir: Path, out_dir: Path, env: dict[str, str]) -> list[Path]:
    """What the nginx image's 20-envsubst-on-templates.sh does: every *.template, with
    `envsubst "$defined_envs"` over the names of the variables in the environment."""
    defined_envs = " ".join(f"${{{name}}}" for name in env)
    out = []
    for template in sorted(template_dir.rglob("*.template")):
        target = out_dir / template.relative_to(template_dir).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        with template.open() as src, target.open("w") as dst:
            subprocess.run(["envsubst", defined_envs], stdin=src, stdout=dst, env=env, check=True)
        out.append(target)
    return out


@dataclass
class Nginx:
    run: Path
    conf: Path
    binary: str = field(default_factory=lambda: shutil.which("nginx") or "/usr/sbin/nginx")

    def start(self) -> None:
        subprocess.run([self.binary, "-c", str(self.conf), "-p", str(self.run)], check=True,
                       capture_output=True)  # fmt: skip

    def stop(self) -> None:
        if (self.run / "nginx.pid").exists():
            subprocess.run([self.binary, "-c", str(self.conf), "-p", str(self.run), "-s", "stop"], capture_output=True)


def prepare_nginx(run: Path, env_overrides: dict[str, str]) -> tuple[Nginx, dict[str, str]]:
    """Render the repo's templates with the compose environment (values remapped) and write a
    main config like the image's. Returns nginx and the environment it was rendered with."""
    service = compose()["services"]["nginx"]
    compose_env = service["environment"]
    unknown = set(env_overrides) - set(compose_env)
    assert not unknown, f"not in the compose file's nginx environment: {unknown}"
    env = {"PATH": os.environ["PATH"], **{k: str(v) for k, v in compose_env.items()}, **env_overrides}
    template_dir = host_path_of(service, "/etc/nginx/templates")
    used = set().union(*(template_variables(t.read_text()) for t in template_dir.rglob("*.template")))
    assert used <= set(compose_env), f"templates use variables compose does not set: {used - set(compose_env)}"
    for d in ("conf.d", "tmp"):
        (run / d).mkdir(parents=True, exist_ok=True)
    render_templates(template_dir, run / "conf.d", env)
    conf = run / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(run=run))
    return Nginx(run, conf), env


def start_registry(run: Path, port: int) -> subprocess.Popen[bytes]:
    service = compose()["services"]["registry"]
    config = host_path_of(service, "/etc/docker/registry/config.yml")
    env = {**os.environ, "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(run / "registry-data")}  # fmt: skip
    log = (run / "registry.log").open("w")
    return subprocess.Popen(["docker-registry", "serve", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT)


def acmebox_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The compose file's acmebox environment, host-specific values replaced."""
    compose_env = {k: str(v) for k, v in compose()["services"]["acmebox"]["environment"].items()}
    unknown = set(overrides) - set(compose_env) - {"ACMEBOX_CA_BUNDLE"}
    assert not unknown, f"not in the compose file's acmebox environment: {unknown}"
    resolved = {k: re.sub(r"\$\{[^}]*\}", "", v) for k, v in compose_env.items()}  # compose defaults
    return {**resolved, **overrides}
