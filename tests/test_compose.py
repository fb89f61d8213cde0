"""The compose file is valid for Debian's docker-compose and wires what the stack test ran;
start-registry.sh checks its arguments and prepares .env and the data directories."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT
from tests.helpers.process import user_free_env
from tests.helpers.stack import COMPOSE, compose, host_path_of


def compose_config(compose_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (Debian package docker-compose)")
    return subprocess.run(["docker-compose", "-f", str(compose_dir / COMPOSE.name), "config"], capture_output=True,
                          text=True, env=env, cwd=compose_dir)


def start_script(compose_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = compose_dir / "start-registry.sh"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env)


STACK_ENV = {"DOCKER_REGISTRY_DOMAIN_NAME": "registry.example.com",
             "DOCKER_REGISTRY_CERT_EMAIL_ADDRESS": "ops@example.com", "REGISTRY_HTTP_SECRET": "s3cret",
             "REGISTRY_NOTIFY_SECRET": "notify-s3cret-0123456789"}


def test_compose_file_is_valid_and_complete(compose_copy: Path) -> None:
    out = compose_config(compose_copy, user_free_env(**STACK_ENV))
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    services = resolved["services"]
    assert set(services) == {"nginx", "registry", "acmebox", "data-init"}
    assert services["nginx"]["environment"]["REGISTRY_DOMAIN"] == "registry.example.com"
    assert services["acmebox"]["environment"]["DOCKER_REGISTRY_DOMAIN_NAME"] == "registry.example.com"
    assert services["registry"]["environment"]["REGISTRY_HTTP_SECRET"] == "s3cret"
    assert "certs" in resolved["volumes"]

    # No Docker socket by default: acmebox writes the generation file on the certs volume,
    # the watcher in nginx's /docker-entrypoint.d/ polls the same path.
    acmebox, nginx = services["acmebox"], services["nginx"]
    assert acmebox["environment"]["ACMEBOX_RELOAD"] == "file"
    generation = acmebox["environment"]["ACMEBOX_RELOAD_TARGET"]
    assert generation == nginx["environment"]["ACMEBOX_RELOAD_FILE"]
    assert generation.startswith(nginx["environment"]["CERTS_DIR"] + "/")
    assert not any("docker.sock" in str(v) for s in services.values() for v in s.get("volumes", []))
    assert "group_add" not in acmebox
    raw = compose()["services"]
    watcher = host_path_of(raw["nginx"], "/docker-entrypoint.d/40-acmebox-reload-on-change.sh")
    assert watcher == ROOT / "nginx" / "reload-on-change.sh" and os.access(watcher, os.X_OK)

    # Start order by readiness, least privilege.
    for name in ("nginx", "registry"):
        assert services[name]["depends_on"]["acmebox"]["condition"] == "service_healthy", name
    assert "/readyz" in " ".join(acmebox["healthcheck"]["test"])
    for name, service in services.items():
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    assert acmebox["read_only"] is True and services["registry"]["read_only"] is True
    assert "user" not in acmebox  # the image's uid 10001
    for name in ("nginx", "registry"):
        assert "healthcheck" in services[name], name
    assert "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()  # acmebox's is in its image

    # The files the compose file mounts are the ones the stack test uses.
    assert host_path_of(raw["nginx"], "/etc/nginx/templates") == ROOT / "nginx" / "templates"
    # registry:3 reads /etc/distribution/config.yml (the old path would be ignored)
    assert raw["registry"]["image"] == "registry:3"
    assert host_path_of(raw["registry"], "/etc/distribution/config.yml") == ROOT / "compose" / "registry" / "config.yml"
    assert not any("/etc/docker/registry" in v for v in raw["registry"]["volumes"])
    nginx_volumes = services["nginx"]["volumes"]
    assert "certs:/etc/letsencrypt:ro" in nginx_volumes, nginx_volumes
    cert_dir = services["nginx"]["environment"]["CERTS_DIR"]
    acmebox_env = services["acmebox"]["environment"]
    assert acmebox_env["ACMEBOX_CERTS_DIR"] == cert_dir
    assert acmebox_env["ACMEBOX_LISTEN"].endswith(
        ":" + services["nginx"]["environment"]["ACMEBOX_UPSTREAM"].split(":")[1]
    )


def test_registry2_overlay_keeps_a_stack_on_2_8(compose_copy: Path) -> None:
    here = compose_copy
    out = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.registry2.yml",
                          "config"], capture_output=True, text=True, cwd=here,
                         env=user_free_env(**STACK_ENV))
    assert out.returncode == 0, out.stderr
    registry = yaml.safe_load(out.stdout)["services"]["registry"]
    assert registry["image"] == "registry:2"
    targets = {str(v).split(":")[1] if isinstance(v, str) else v["target"] for v in registry["volumes"]}
    assert {"/etc/docker/registry/config.yml", "/etc/distribution/config.yml", "/var/lib/registry"} <= targets


def test_docker_reload_overlay_adds_the_socket_only_there(compose_copy: Path) -> None:
    here = compose_copy
    out = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.docker-reload.yml",
                          "config"], capture_output=True, text=True, cwd=here,
                         env=user_free_env(**STACK_ENV, DOCKER_GID="106"))
    assert out.returncode == 0, out.stderr
    acmebox = yaml.safe_load(out.stdout)["services"]["acmebox"]
    assert acmebox["environment"]["ACMEBOX_RELOAD"] == "docker"
    assert acmebox["environment"]["ACMEBOX_RELOAD_TARGET"] == "label=acmebox.reload=nginx"
    assert compose()["services"]["nginx"]["labels"]["acmebox.reload"] == "nginx"
    assert any("/var/run/docker.sock" in str(v) for v in acmebox["volumes"])
    assert [str(g) for g in acmebox["group_add"]] == ["106"]


def test_the_seeds_two_variables_are_all_compose_needs(compose_copy: Path) -> None:
    """`export DOCKER_REGISTRY_DOMAIN_NAME=... DOCKER_REGISTRY_CERT_EMAIL_ADDRESS=...;
    docker-compose up`, as the seed's README says: no .env, no other variable. The registry
    then makes its own HTTP secret; data-init prepares what start-registry.sh would, before
    acmebox starts."""
    seed = {"DOCKER_REGISTRY_DOMAIN_NAME": "Registry.Example.COM", "DOCKER_REGISTRY_CERT_EMAIL_ADDRESS": "a@b.example"}
    out = compose_config(compose_copy, user_free_env(**seed))
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert services["registry"]["environment"]["REGISTRY_HTTP_SECRET"] == ""
    assert services["acmebox"]["depends_on"]["data-init"]["condition"] == "service_completed_successfully"
    assert "/data/acmebox" in services["data-init"]["command"][0]
    assert any(str(v).endswith(":/docker-entrypoint.d/15-acmebox-canonical-name.envsh:ro")
               for v in services["nginx"]["volumes"])


def test_compose_refuses_a_missing_domain(compose_copy: Path) -> None:
    out = compose_config(compose_copy, user_free_env())
    assert out.returncode != 0 and "DOCKER_REGISTRY_DOMAIN_NAME" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing DOMAIN"),
        (["registry.example.com"], "missing EMAIL"),
        (["*.example.com", "a@example.com"], "bad DOMAIN '*.example.com'"),
        (["192.0.2.1", "a@example.com"], "bad DOMAIN '192.0.2.1'"),
        (["bad..example.com", "a@example.com"], "bad DOMAIN"),
        (["exa\u200bmple.com", "a@example.com"], "contains U+200B (zero width space)"),
        (["xn--zz.example.com", "a@example.com"], "bad DOMAIN 'xn--zz.example.com': malformed domain name"),
        (["registry.example.com", "not-an-email"], "bad EMAIL 'not-an-email'"),
        (["a.example.com", "a@example.com", "extra"], "too many arguments"),
        (["--frobnicate"], "unknown option --frobnicate"),
    ],
)
def test_start_script_refuses_bad_arguments(compose_copy: Path, args: list[str], message: str) -> None:
    out = start_script(compose_copy, *args, env=user_free_env())
    assert out.returncode == 2
    assert out.stderr.startswith("start-registry.sh: ") and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (compose_copy / ".env").exists()


def test_start_script_prepares_env_and_data(compose_copy: Path) -> None:
    out = start_script(
        compose_copy, "--prepare-only", "--staging", "Registry.Example.com", "ops@example.com", env=user_free_env()
    )
    assert out.returncode == 0, out.stderr
    here = compose_copy
    env = dict(line.split("=", 1) for line in (here / ".env").read_text().splitlines())
    assert env["DOCKER_REGISTRY_DOMAIN_NAME"] == "registry.example.com"
    assert env["DOCKER_REGISTRY_CERT_EMAIL_ADDRESS"] == "ops@example.com"
    assert env["ACMEBOX_STAGING"] == "1"
    secret = env["REGISTRY_HTTP_SECRET"]
    assert len(secret) == 64
    assert stat.S_IMODE((here / ".env").stat().st_mode) == 0o600
    acmebox_data = (here / "data" / "acmebox").stat()
    assert stat.S_IMODE(acmebox_data.st_mode) == 0o700 and acmebox_data.st_uid == 10001
    assert (here / "data" / "registry").is_dir()

    # The old stack's environment variables work as well as the arguments.
    (here / ".env").unlink()
    env_vars = user_free_env(DOCKER_REGISTRY_DOMAIN_NAME="R.Example.org.",
                          DOCKER_REGISTRY_CERT_EMAIL_ADDRESS="x@example.org")
    out = start_script(compose_copy, "--prepare-only", env=env_vars)
    assert out.returncode == 0, out.stderr
    assert "DOCKER_REGISTRY_DOMAIN_NAME=r.example.org" in (here / ".env").read_text()
    def http_secret() -> str:
        return dict(line.split("=", 1) for line in (here / ".env").read_text().splitlines())["REGISTRY_HTTP_SECRET"]

    first = http_secret()
    assert first != secret  # a fresh .env, a new secret; a second run keeps it
    out = start_script(compose_copy, "--prepare-only", env=env_vars)
    assert out.returncode == 0, out.stderr
    assert http_secret() == first
    # and the compose file accepts what the script wrote
    check = subprocess.run(["docker-compose", "config", "-q"], cwd=here, capture_output=True, text=True,
                           env=user_free_env())
    assert check.returncode == 0, check.stderr


def test_swarm_overlay_renders_a_stack_without_the_blob_redirect(compose_copy: Path) -> None:
    """What `start-registry.sh --swarm` hands `docker stack deploy`: the registry without the
    `redirect` middleware (nginx on other nodes cannot read its disk), nginx without the storage
    mount, every nginx looking its upstreams up through Docker's DNS."""
    from tests.helpers.containers import compose_v2  # the cached Compose v2 (container-setup.sh)

    v2 = compose_v2()
    if v2 is None:
        pytest.fail("no Compose v2: run pebble-test/container-setup.sh")
    merged = subprocess.run([str(v2), "-f", "docker-compose.yml", "-f", "docker-compose.swarm.yml", "config",
                             "--format", "json"], capture_output=True, text=True, cwd=compose_copy,
                            env=user_free_env(**STACK_ENV))
    assert merged.returncode == 0, merged.stderr
    rendered = subprocess.run(["python3", str(compose_copy / "swarm-render.py")], input=merged.stdout,
                              capture_output=True, text=True, check=True)
    services = json.loads(rendered.stdout)["services"]
    assert services["registry"]["environment"]["REGISTRY_MIDDLEWARE_STORAGE"] == "[]"
    assert [v["target"] for v in services["nginx"]["volumes"]] == ["/etc/letsencrypt"]
    assert services["nginx"]["environment"]["NGINX_RESOLVER"] == "127.0.0.11"
    assert services["nginx"]["deploy"]["mode"] == "global"
    assert not any("depends_on" in s for s in services.values())
