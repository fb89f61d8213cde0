"""The registry stack without containers: the compose file's nginx templates rendered exactly
as the official nginx image renders them, Debian's nginx and a registry (distribution 3.x by
default, or Debian's 2.8: tests/registries.py) run with the repo's files, acmebox and Pebble;
all on loopback, ports remapped.

What the compose file says (template directory, environment variable names, registry config
path, UI files) is read from it, not repeated here: only host-specific values are remapped.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT
from tests.helpers.nginx import Nginx
from tests.helpers.pebble import Pebble, start_pebble, stop_pebble
from tests.helpers.process import ServiceProcess, free_port
from tests.helpers.registries import default_registry, registry_command

COMPOSE = ROOT / "compose" / "docker-compose.yml"

# As the image's: root master, unprivileged workers (here the build's default user, nobody).
# What the workers read (the browse page, the registry's storage for blobs) lies in readable
# directories (running_stack), as the compose volumes do in the image.
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
    nginx = Nginx(run, run / "nginx.conf")
    fit_host_nginx(render_templates(template_dir, run / "conf.d", env), nginx.binary)
    nginx.conf.write_text(NGINX_MAIN.format(run=run))
    return nginx, env


def fit_host_nginx(rendered: list[Path], binary: str) -> None:
    """Rendered configs as the host's nginx `binary` takes them: unchanged from 1.25.1 on, else
    with `http2 on;` in the older spelling (http2_for_old_nginx)."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    if tuple(int(g) for g in found.groups()) < (1, 25, 1):
        for path in rendered:
            path.write_text(http2_for_old_nginx(path.read_text()))


def http2_for_old_nginx(conf: str) -> str:
    """The template's `http2 on;` (nginx >= 1.25.1, as in the nginx:1.27 image) in the spelling
    of the host's older nginx (Debian 12's 1.22): `http2` on the server's ssl listen lines.
    The only rewrite the loopback stack makes; the container test runs the template as is."""
    out, servers = [], conf.split("server {")
    for server in servers[1:]:
        if re.search(r"^\s*http2 on;\n", server, flags=re.M):
            server = re.sub(r"^\s*http2 on;\n", "", server, flags=re.M)
            server = re.sub(r"^(\s*listen\s+\S+\s+ssl)\b", r"\1 http2", server, flags=re.M)
        out.append(server)
    return "server {".join([servers[0], *out])


# Where registry:3 reads its configuration (registry:2 read /etc/docker/registry/config.yml).
REGISTRY_CONFIG = "/etc/distribution/config.yml"


def start_registry(run: Path, port: int, overrides: dict[str, str], version: str,
                   direct: bool = False) -> subprocess.Popen[bytes]:
    """Registry `version` ("3" or "2", tests/registries.py) with the repo's config file; `overrides`
    replace compose environment values (and the config's host-specific paths, through the
    registry's REGISTRY_* variables). `direct`: without the `redirect` middleware, for clients
    that talk to the registry itself (its 307s are for nginx's template only)."""
    service = compose()["services"]["registry"]
    config = host_path_of(service, REGISTRY_CONFIG)
    if direct:
        settings = yaml.safe_load(config.read_text())
        settings.pop("middleware", None)
        config = run / "registry-direct.yml"
        config.write_text(yaml.safe_dump(settings))
    assert set(service.get("environment", {})) <= set(overrides), "remap every compose value"
    env = {**os.environ, "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(run / "registry-data"), **overrides}
    log = (run / "registry.log").open("w")
    return subprocess.Popen(registry_command(version, config), env=env, stdout=log, stderr=subprocess.STDOUT)


def start_reload_watcher(nginx: Nginx, nginx_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The script the compose file puts in nginx's /docker-entrypoint.d/, in the foreground,
    reloading this nginx; its log is nginx/watcher.log."""
    script = host_path_of(compose()["services"]["nginx"], "/docker-entrypoint.d/40-acmebox-reload-on-change.sh")
    env = {"PATH": os.environ["PATH"], "ACMEBOX_RELOAD_FILE": nginx_env["ACMEBOX_RELOAD_FILE"],
           "ACMEBOX_RELOAD_COMMAND": f"{nginx.binary} -c {nginx.conf} -p {nginx.run} -s reload",
           "ACMEBOX_RELOAD_FOREGROUND": "1"}
    log_path = nginx.run / "watcher.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(["sh", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "watching" not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    return proc


def acmebox_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The compose file's acmebox environment, host-specific values replaced."""
    compose_env = {k: str(v) for k, v in compose()["services"]["acmebox"]["environment"].items()}
    unknown = set(overrides) - set(compose_env) - {"ACMEBOX_CA_BUNDLE", "ACMEBOX_AUTH_ACL"}
    assert not unknown, f"not in the compose file's acmebox environment: {unknown}"
    resolved = {k: re.sub(r"\$\{[^}]*\}", "", v) for k, v in compose_env.items()}  # compose defaults
    return {**resolved, **overrides}


DOMAIN = "registry.test"
NOTIFY_SECRET = "stack-test-notify-secret"


def registry_notifications(acmebox: str) -> str:
    """The compose file's REGISTRY_NOTIFICATIONS_ENDPOINTS, pointed at `acmebox` (HOST:PORT), with
    the test's secret."""
    value = str(compose()["services"]["registry"]["environment"]["REGISTRY_NOTIFICATIONS_ENDPOINTS"])
    value = re.sub(r"\$\{REGISTRY_NOTIFY_SECRET[^}]*\}", NOTIFY_SECRET, value)
    assert "acmebox:8080" in value, value
    return value.replace("acmebox:8080", acmebox)
USERS = {"alice": "alice-s3cret", "bob": "bob-s3cret"}


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 that sends SNI and checks the certificate for DOMAIN."""

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=DOMAIN)  # type: ignore[attr-defined]


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stack:
    run: Path
    pebble: Pebble
    http_port: int
    https_port: int
    certs: Path
    state: Path
    htpasswd: Path
    acmebox: ServiceProcess
    registry: str  # "3" or "2": which registry runs behind nginx
    registry_port: int
    acmebox_port: int

    @property
    def host(self) -> str:
        """How clients name the registry (registry.test resolves to 127.0.0.1 for them)."""
        return f"{DOMAIN}:{self.https_port}"

    def root_pem(self) -> str:
        return self.pebble.get("/roots/0").decode()

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.root_pem())

    def https(self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None,
              token: str | None = None, basic: tuple[str, str] | None = None) -> Response:
        """One request over a new verified TLS connection; absolute URLs of the registry's own
        host (upload Locations) are followed to 127.0.0.1."""
        if path.startswith("https://"):
            path = "/" + path.split("/", 3)[3]
        h = {"Host": self.host, **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {token}"
        elif basic:
            h["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        conn = _SNIConnection("127.0.0.1", self.https_port, context=self.tls_context(), timeout=60)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return Response(r.status, r.headers, r.read())
        finally:
            conn.close()

    def http(self, method: str, path: str) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path, headers={"Host": DOMAIN})
            r = conn.getresponse()
            return Response(r.status, r.headers, r.read())
        finally:
            conn.close()

    def token(self, *scopes: str, basic: tuple[str, str] | None = None) -> str:
        query = "&".join(["service=registry", *(f"scope={s}" for s in scopes)])
        r = self.https("GET", f"/auth/token?{query}", basic=basic)
        assert r.status == 200, (r.status, r.body)
        return str(r.json()["token"])


def push_blob(stack: Stack, repo: str, data: bytes, token: str) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = stack.https("POST", f"/v2/{repo}/blobs/uploads/", token=token)
    assert start.status == 202, (start.status, start.body)
    location = start.headers["Location"]
    sep = "&" if "?" in location else "?"
    done = stack.https("PUT", f"{location}{sep}digest={digest}", token=token, body=data,
                       headers={"Content-Type": "application/octet-stream"})
    assert done.status == 201, (done.status, done.body)
    return digest


def push_manifest_blobs(stack: Stack, repo: str, token: str, config: bytes, layer: bytes) -> bytes:
    """Push a one-layer image's config and layer; returns its OCI image manifest (not pushed)."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(stack, repo, config, token), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": push_blob(stack, repo, layer, token), "size": len(layer)}],
    }).encode()


def push_image(stack: Stack, repo: str, tag: str, token: str, layer: bytes = b"layer") -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-11-02T08:00:00Z",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = push_manifest_blobs(stack, repo, token, config, layer)
    r = stack.https("PUT", f"/v2/{repo}/manifests/{tag}", token=token, body=manifest,
                    headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 201, (r.status, r.body)
    return r.headers["Docker-Content-Digest"]


FRONT_REDIRECT = """
server {{
    listen 127.0.0.1:{front};
    access_log {run}/front.log;
    return 301 https://{domain}:{https}$request_uri;
}}
"""


@contextlib.contextmanager
def running_stack(run: Path, front_redirect: bool = False, ui_root: Path | None = None,
                  registry_version: str | None = None, catalog_index: bool = True,
                  acl: str | None = None) -> Iterator[Stack]:
    """Everything up, in the order the compose file implies: acmebox (token certificate and
    placeholder), the registry, nginx on the placeholder; then Pebble, so the first real
    certificate is validated through nginx and nginx reloaded onto it.

    front_redirect: Pebble's VA dials a server in front instead of nginx's port-80 one, which
    answers everything with a 301 to nginx's 443 server (as a CDN or load balancer that forces
    https would); its requests are logged to nginx/front.log. `ui_root` replaces the compose
    file's browse page directory (the browse-page benchmark swaps pages in it), which is
    otherwise served from a readable copy (readable_dir), as is the registry's storage, which
    nginx sends blobs from: nginx's workers run unprivileged, as in the image.
    `registry_version`: "3" or "2" (default: ACMEBOX_TEST_REGISTRY, else 3). Without
    `catalog_index`, acmebox runs as an older deployment would, without /ui-index/. `acl`: the
    text of an ACL file for the token service (--auth-acl), e.g. `alice = ["team/**"]`."""
    with contextlib.ExitStack() as readable:
        if ui_root is None:
            ui_root = readable.enter_context(readable_dir("ui", nginx_host_path("UI_ROOT")))
        storage = readable.enter_context(readable_dir("registry-data"))
        run.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (run / "registry-data").unlink()  # a link left by an earlier run in the same dir
        (run / "registry-data").symlink_to(storage)  # where start_registry and registry_fill look
        yield from _running_stack(run, front_redirect, ui_root, storage, registry_version or default_registry(),
                                  catalog_index, acl)


@contextlib.contextmanager
def readable_dir(name: str, source: Path | None = None) -> Iterator[Path]:
    """A directory `name` (a copy of `source`'s public files, or empty) in a directory of its own
    in /tmp, which nginx's unprivileged workers can reach also when the test's run dir is private
    (pytest's, 0700) or the clone lies in a directory only root can enter (/root). Removed
    afterwards. Nothing else nginx's workers read is in the clone or the run dir."""
    top = Path(tempfile.mkdtemp(prefix=f"acmebox-{name}-", dir="/tmp"))
    try:
        top.chmod(0o755)
        made = top / name
        if source is None:
            made.mkdir(mode=0o755)
        else:
            shutil.copytree(source, made, copy_function=shutil.copyfile)  # contents only: modes are set below
            for d in (made, *(p for p in made.rglob("*") if p.is_dir())):
                d.chmod(0o755)
            for f in (p for p in made.rglob("*") if p.is_file()):
                f.chmod(0o644)
        yield made
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _running_stack(run: Path, front_redirect: bool, ui_root: Path, storage: Path, version: str,
                   catalog_index: bool, acl: str | None) -> Iterator[Stack]:
    http_port, https_port, acmebox_port, registry_port, front_port = (free_port() for _ in range(5))
    va_port = front_port if front_redirect else http_port
    pebble = start_pebble(run / "pebble", PEBBLE_HTTP_PORT=str(va_port))  # validates via nginx
    stop_pebble(pebble)  # its CA bundle exists now; it comes back once nginx is up
    certs, state = run / "certs", run / "state"
    htpasswd = run / "htpasswd"
    for i, (user, password) in enumerate(USERS.items()):
        flags = "-Bbc" if i == 0 else "-Bb"
        subprocess.run(["htpasswd", flags, str(htpasswd), user, password], check=True, capture_output=True)
    if acl is not None:
        (run / "acl.toml").write_text(acl)
    token_cert = run / "registry-auth" / "token.crt"
    generation = certs / "reload-generation"
    nginx, nginx_env = prepare_nginx(run / "nginx", {
        "REGISTRY_DOMAIN": DOMAIN,
        "NGINX_LISTEN_HTTP": f"127.0.0.1:{http_port}",
        "NGINX_LISTEN_HTTPS": f"127.0.0.1:{https_port}",
        "ACMEBOX_UPSTREAM": f"127.0.0.1:{acmebox_port}",
        "REGISTRY_UPSTREAM": f"127.0.0.1:{registry_port}",
        "NGINX_RESOLVER": "127.0.0.1",  # never asked: the upstreams are addresses
        "CERTS_DIR": str(certs),
        "UI_ROOT": str(ui_root),
        "ACMEBOX_RELOAD_FILE": str(generation),
        "REGISTRY_STORAGE": str(storage),  # start_registry's (run/registry-data links to it)
    })
    if front_redirect:
        (nginx.run / "conf.d" / "front.conf").write_text(
            FRONT_REDIRECT.format(front=front_port, run=nginx.run, domain=DOMAIN, https=https_port)
        )
    env = acmebox_environment({
        "DOCKER_REGISTRY_DOMAIN_NAME": DOMAIN,
        "DOCKER_REGISTRY_CERT_EMAIL_ADDRESS": "ops@example.com",
        "ACMEBOX_DIRECTORY": pebble.directory,
        "ACMEBOX_CA_BUNDLE": str(pebble.ca_bundle),
        "ACMEBOX_CERTS_DIR": str(certs),
        "ACMEBOX_STATE_DIR": str(state),
        "ACMEBOX_LISTEN": f"127.0.0.1:{acmebox_port}",
        "ACMEBOX_RELOAD_TARGET": str(generation),  # the compose file's `file` reloader
        "ACMEBOX_RELOAD_VERIFY": f"127.0.0.1:{https_port}",
        "ACMEBOX_AUTH_HTPASSWD": str(htpasswd),
        "ACMEBOX_AUTH_KEY": str(state / "token-signing.key"),
        "ACMEBOX_AUTH_CERT": str(token_cert),
        "ACMEBOX_AUTH_TRUSTED_PROXY": "127.0.0.1",  # nginx, as the compose file's "nginx"
        "ACMEBOX_REGISTRY_STORAGE": str(storage),
        **({"ACMEBOX_AUTH_ACL": str(run / "acl.toml")} if acl is not None else {}),
        **({"ACMEBOX_CATALOG_REGISTRY": f"http://127.0.0.1:{registry_port}", "ACMEBOX_CATALOG_SECRET": NOTIFY_SECRET}
           if catalog_index else {"ACMEBOX_CATALOG_REGISTRY": "", "ACMEBOX_CATALOG_SECRET": ""}),
    })
    acmebox = ServiceProcess(["run"], run / "acmebox.log", env={"PATH": os.environ["PATH"], **env})
    registry = watcher = None
    try:
        acmebox.wait_log("wrote a self-signed placeholder")
        registry = start_registry(run, registry_port, {
            "REGISTRY_AUTH_TOKEN_REALM": f"https://{DOMAIN}:{https_port}/auth/token",
            "REGISTRY_HTTP_SECRET": "stack-test-secret",
            "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(token_cert),
            "REGISTRY_NOTIFICATIONS_ENDPOINTS": registry_notifications(f"127.0.0.1:{acmebox_port}"),
        }, version)
        nginx.start()
        watcher = start_reload_watcher(nginx, nginx_env)
        pebble = start_pebble(run / "pebble", **pebble.env)
        acmebox.wait_log("now presents the new certificate(s)", timeout=60)
        yield Stack(run, pebble, http_port, https_port, certs, state, htpasswd, acmebox, version, registry_port,
                    acmebox_port)
    finally:
        acmebox.stop()
        if watcher is not None:
            watcher.terminate()
            watcher.wait(timeout=10)
        nginx.stop()
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        stop_pebble(pebble)
