"""The client matrix beyond docker and skopeo (tests/test_registry_access.py): podman, buildah,
crane, oras and containerd's ctr against the loopback stack (the default registry, 3.x), through
the real TLS with Pebble's root trusted the way each client takes it.

Every client, in the same steps: it pulls anonymously an image pushed beforehand (its manifest
digest must be the registry's); its push without credentials is refused and leaves no tag; so is
its push with a wrong password (podman, buildah and oras check it at login already; crane's login
only stores it, ctr has none and passes --user with each push); it logs in and pushes; logged
out, its push is refused again; then, with every local image and its content removed, it pulls
its image back anonymously and the digest it reports is the one the registry holds. Nothing
touches the host's container storage, credentials or configuration: storage, auth files and
containerd's daemon are private to the test (under its tmp dir), as root, with the vfs/native
drivers.

podman, buildah and containerd come from Debian 12; crane and oras from Debian unstable
(pebble-test/install-clients.sh puts them in pebble-test/.clients/)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.helpers import ROOT
from tests.helpers.docker import with_hosts
from tests.helpers.oci import make_layout
from tests.helpers.process import stop_process
from tests.helpers.stack import USERS, Stack, push_blob

pytestmark = pytest.mark.e2e
CLIENTS = ROOT / "pebble-test" / ".clients" / "usr" / "bin"
ALICE = ("alice", USERS["alice"])
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join([OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"])


def push_layout(stack: Stack, layout: Path, repo: str, tag: str) -> str:
    """The one image of an OCI layout (tests/helpers/oci.py) pushed over HTTP as alice; its digest."""
    token = stack.token(f"repository:{repo}:pull,push", basic=ALICE)
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = (layout / "blobs" / "sha256" / digest[7:]).read_bytes()
    parsed = json.loads(manifest)
    for blob in [parsed["config"], *parsed["layers"]]:
        push_blob(stack, repo, (layout / "blobs" / "sha256" / blob["digest"][7:]).read_bytes(), token)
    r = stack.https("PUT", f"/v2/{repo}/manifests/{tag}", token=token, body=manifest,
                    headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 201 and r.headers["Docker-Content-Digest"] == digest, (r.status, r.body)
    return str(digest)


def registry_digest(stack: Stack, repo: str, tag: str) -> str | None:
    """The manifest digest the registry holds for repo:tag (anonymous HEAD), None when it has none."""
    r = stack.https("HEAD", f"/v2/{repo}/manifests/{tag}", token=stack.token(f"repository:{repo}:pull"),
                    headers={"Accept": ACCEPT})
    return r.headers["Docker-Content-Digest"] if r.status == 200 else None


def layout_digest(layout: Path) -> str:
    """The digest of the one manifest an OCI layout's index names, checked against the file."""
    manifests = json.loads((layout / "index.json").read_text())["manifests"]
    assert len(manifests) == 1, manifests
    digest = str(manifests[0]["digest"])
    blob = (layout / "blobs" / "sha256" / digest[7:]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == digest
    return digest


def assert_refused(result: subprocess.CompletedProcess[str]) -> None:
    """The client failed, and for want of authorization (each says it its own way)."""
    assert result.returncode != 0, result.stdout
    said = result.stderr.lower()
    assert any(w in said for w in ("denied", "unauthorized", "insufficient_scope", "401")), result.stderr


class Client(Protocol):
    """One registry client as the matrix drives it; every method runs the real program."""

    def pull(self, ref: str) -> str:
        """Pull `ref` into the client's private store; the manifest digest the client reports."""

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        """Push the client's own test image (made once per client) to `ref`."""

    def login(self, user: str, password: str) -> subprocess.CompletedProcess[str] | None:
        """Log in (the result), or keep the credentials for the next push (None: crane, ctr)."""

    def logout(self) -> None: ...

    def forget(self) -> None:
        """Remove every local image and its content, so the next pull fetches everything."""


class Runner:
    """A client's programs run with the test /etc/hosts, a private HOME and `env`."""

    def __init__(self, hosts: Path, tmp: Path, env: dict[str, str]) -> None:
        self.hosts, self.tmp = hosts, tmp
        home = tmp / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(tmp / "xdg"),
                    "XDG_CONFIG_HOME": str(home / ".config"), "DOCKER_CONFIG": str(home / ".docker"), **env}
        (tmp / "xdg").mkdir(exist_ok=True)

    def run(self, *command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(with_hosts(self.hosts, list(command)), input=stdin, capture_output=True, text=True,
                              env=self.env, timeout=300)

    def ok(self, *command: str, stdin: str | None = None) -> str:
        r = self.run(*command, stdin=stdin)
        assert r.returncode == 0, (command, r.stdout, r.stderr)
        return r.stdout


class Containers:
    """podman or buildah (containers/image and containers/storage): --cert-dir holds Pebble's root
    as ca.crt, --authfile the login, vfs storage under tmp, no host registries.conf or containers.conf."""

    def __init__(self, program: str, stack: Stack, hosts: Path, tmp: Path, runroot: Path) -> None:
        certs = tmp / "certs"
        certs.mkdir(parents=True)
        (certs / "ca.crt").write_text(stack.root_pem())
        (tmp / "registries.conf").write_text("unqualified-search-registries = []\n")
        (tmp / "containers.conf").write_text('[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n')
        auth = tmp / "auth.json"
        auth.write_text('{"auths": {}}')  # podman wants the file it is pointed at to exist
        self.runner = Runner(hosts, tmp, {"CONTAINERS_REGISTRIES_CONF": str(tmp / "registries.conf"),
                                          "CONTAINERS_CONF": str(tmp / "containers.conf"),
                                          "REGISTRY_AUTH_FILE": str(auth)})
        self.program, self.host = program, stack.host
        self.tls = ["--cert-dir", str(certs), "--authfile", str(auth)]
        self.base = [program, "--root", str(tmp / "storage"), "--runroot", str(runroot), "--storage-driver", "vfs"]
        layout = tmp / "layout"
        make_layout(layout, "v1", f"pushed by {program}\n")
        self.runner.ok(*self.base, "pull", f"oci:{layout}:v1")
        self.local = self.runner.ok(*self.base, "images", "--noheading", "--no-trunc", "--format", "{{.ID}}").split()[0]

    def pull(self, ref: str) -> str:
        """The manifest digest recorded for `ref` (an image keeps one per repository it came
        from or went to: podman's `.Digest` is the first source's)."""
        self.runner.ok(*self.base, "pull", *self.tls, ref)
        if self.program == "buildah":
            return str(json.loads(self.runner.ok(*self.base, "inspect", "--type", "image", ref))["FromImageDigest"])
        out = self.runner.ok(*self.base, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
        repository = ref.rsplit(":", 1)[0]
        digests = {str(d).split("@", 1)[1] for d in json.loads(out) if str(d).split("@", 1)[0] == repository}
        assert len(digests) == 1, (ref, out)
        return digests.pop()

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        return self.runner.run(*self.base, "push", *self.tls, self.local, f"docker://{ref}")

    def login(self, user: str, password: str) -> subprocess.CompletedProcess[str]:
        return self.runner.run(*self.base, "login", *self.tls, "-u", user, "--password-stdin", self.host,
                               stdin=password + "\n")

    def logout(self) -> None:
        self.runner.ok(*self.base, "logout", "--authfile", self.tls[-1], "--all")

    def forget(self) -> None:
        self.runner.ok(*self.base, "rmi", "--all", "--force")


class Crane:
    """crane (go-containerregistry): Go's SSL_CERT_FILE for the root, a private DOCKER_CONFIG for
    the login; images as OCI layouts on disk."""

    def __init__(self, stack: Stack, hosts: Path, tmp: Path) -> None:
        (tmp / "root.pem").write_text(stack.root_pem())
        self.runner = Runner(hosts, tmp, {"SSL_CERT_FILE": str(tmp / "root.pem")})
        self.host, self.tmp = stack.host, tmp
        self.layout = tmp / "layout"
        make_layout(self.layout, "v1", "pushed by crane\n")
        self.pulls = 0

    def pull(self, ref: str) -> str:
        self.pulls += 1
        out = self.tmp / f"pulled-{self.pulls}"
        self.runner.ok(str(CLIENTS / "crane"), "pull", "--format", "oci", ref, str(out))
        return layout_digest(out)

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        return self.runner.run(str(CLIENTS / "crane"), "push", str(self.layout), ref)

    def login(self, user: str, password: str) -> None:
        """`crane auth login` stores the credentials without asking the registry: a wrong one
        fails the push."""
        self.runner.ok(str(CLIENTS / "crane"), "auth", "login", self.host, "-u", user, "--password-stdin",
                       stdin=password)

    def logout(self) -> None:
        self.runner.ok(str(CLIENTS / "crane"), "auth", "logout", self.host)

    def forget(self) -> None:
        """Every pull writes a new layout: nothing is reused."""


class Oras:
    """oras (the ORAS project's CLI): --ca-file for the root, --registry-config for the login; it
    pushes a file as an artifact and copies images into OCI layouts."""

    def __init__(self, stack: Stack, hosts: Path, tmp: Path) -> None:
        (tmp / "root.pem").write_text(stack.root_pem())
        self.runner = Runner(hosts, tmp, {})
        self.host, self.tmp = stack.host, tmp
        self.ca, self.config = str(tmp / "root.pem"), str(tmp / "auth.json")
        (tmp / "files").mkdir()
        (tmp / "files" / "hello.txt").write_text("pushed by oras\n")
        self.pulls = 0

    def pull(self, ref: str) -> str:
        self.pulls += 1
        out = self.tmp / f"pulled-{self.pulls}"
        self.runner.ok(str(CLIENTS / "oras"), "copy", "--from-ca-file", self.ca, "--from-registry-config",
                       self.config, "--to-oci-layout", ref, f"{out}:pulled")
        return layout_digest(out)

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(with_hosts(self.runner.hosts, [
            str(CLIENTS / "oras"), "push", "--ca-file", self.ca, "--registry-config", self.config, ref,
            "hello.txt:text/plain"]), capture_output=True, text=True, env=self.runner.env, timeout=300,
            cwd=self.tmp / "files")

    def login(self, user: str, password: str) -> subprocess.CompletedProcess[str]:
        return self.runner.run(str(CLIENTS / "oras"), "login", "--ca-file", self.ca, "--registry-config",
                               self.config, "-u", user, "--password-stdin", self.host, stdin=password)

    def logout(self) -> None:
        self.runner.ok(str(CLIENTS / "oras"), "logout", "--registry-config", self.config, self.host)

    def forget(self) -> None:
        """Every pull writes a new layout: nothing is reused."""


CONTAINERD_CONFIG = """version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{tmp}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp}/opt"
"""


@contextlib.contextmanager
def private_containerd(tmp: Path) -> Iterator[str]:
    """containerd with its own root, state, socket and config under `tmp`; stopped by PID.
    Yields its socket's path."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "config.toml"
    config.write_text(CONTAINERD_CONFIG.format(tmp=tmp))
    sock = tmp / "containerd.sock"
    with (tmp / "containerd.log").open("w") as log:
        proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "containerd.log").read_text()[-2000:]
            time.sleep(0.2)
        yield str(sock)
    finally:
        stop_process(proc)


class Ctr:
    """containerd's ctr: --tlscacert for the root; it has no login, so pushes pass --user; the
    native snapshotter (no overlay mounts under tmp). Its own image: the OCI layout imported."""

    def __init__(self, stack: Stack, hosts: Path, tmp: Path, address: str) -> None:
        (tmp / "root.pem").write_text(stack.root_pem())
        self.runner = Runner(hosts, tmp, {})
        self.base = ["ctr", "--address", address, "--namespace", "matrix"]
        self.tls = ["--tlscacert", str(tmp / "root.pem")]
        self.user: list[str] = []
        layout = tmp / "layout"
        make_layout(layout, "v1", "pushed by ctr\n")
        with tarfile.open(tmp / "layout.tar", "w") as tar:
            for entry in sorted(layout.iterdir()):
                tar.add(entry, arcname=entry.name)
        self.runner.ok(*self.base, "images", "import", "--base-name", "matrix/ctr-local", str(tmp / "layout.tar"))
        self.local = "matrix/ctr-local:v1"

    def _digest(self, ref: str) -> str:
        for line in self.runner.ok(*self.base, "images", "ls").splitlines()[1:]:
            fields = line.split()
            if fields[0] == ref:
                return fields[2]
        raise AssertionError(f"ctr lists no {ref}")

    def pull(self, ref: str) -> str:
        self.runner.ok(*self.base, "images", "pull", *self.tls, "--snapshotter", "native", ref)
        return self._digest(ref)

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        self.runner.ok(*self.base, "images", "tag", "--force", self.local, ref)
        return self.runner.run(*self.base, "images", "push", *self.tls, *self.user, ref)

    def login(self, user: str, password: str) -> None:
        """No login in ctr: the credentials go with each push (a wrong one fails the push)."""
        self.user = ["--user", f"{user}:{password}"]

    def logout(self) -> None:
        self.user = []

    def forget(self) -> None:
        """Every image removed; --sync waits for the garbage collector to drop their content."""
        refs = [line.split()[0] for line in self.runner.ok(*self.base, "images", "ls").splitlines()[1:]]
        self.runner.ok(*self.base, "images", "rm", "--sync", *refs)
        assert self.runner.ok(*self.base, "content", "ls").splitlines()[1:] == []


@pytest.fixture(scope="module")
def seed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """An image pushed over HTTP before any client runs: its reference and manifest digest."""
    layout = tmp_path_factory.mktemp("seed") / "layout"
    make_layout(layout, "v1", "the seed image\n")
    return f"{stack.host}/matrix/seed:v1", push_layout(stack, layout, "matrix/seed", "v1")


@pytest.fixture(params=["podman", "buildah", "crane", "oras", "ctr"])
def client(request: pytest.FixtureRequest, stack: Stack, test_hosts: Path, tmp_path: Path) -> Iterator[Client]:
    name = request.param
    if name in ("crane", "oras"):
        assert (CLIENTS / name).exists(), f"{CLIENTS / name} is missing: run pebble-test/setup.sh"
        yield Crane(stack, test_hosts, tmp_path) if name == "crane" else Oras(stack, test_hosts, tmp_path)
    elif name == "ctr":
        with private_containerd(tmp_path / "containerd") as address:
            yield Ctr(stack, test_hosts, tmp_path, address)
    else:
        # podman refuses a runroot path longer than 50 characters (pytest's tmp_path is longer)
        with tempfile.TemporaryDirectory(prefix="acmebox-run-", dir="/tmp") as runroot:
            yield Containers(name, stack, test_hosts, tmp_path, Path(runroot))


def test_client_pulls_anonymously_and_pushes_after_a_login(
    client: Client, stack: Stack, seed: tuple[str, str], request: pytest.FixtureRequest
) -> None:
    seed_ref, seed_digest = seed
    assert client.pull(seed_ref) == seed_digest

    name = request.node.callspec.params["client"]
    repo, tag = f"matrix/{name}", "v1"
    ref = f"{stack.host}/{repo}:{tag}"
    assert_refused(client.push(ref))
    assert registry_digest(stack, repo, tag) is None, "a refused push left a tag"

    wrong = client.login("alice", "wrong")
    if wrong is not None:
        assert wrong.returncode != 0, wrong.stdout
    assert_refused(client.push(ref))
    assert registry_digest(stack, repo, tag) is None

    right = client.login(*ALICE)
    if right is not None:
        assert right.returncode == 0, right.stderr
    pushed = client.push(ref)
    assert pushed.returncode == 0, pushed.stderr
    digest = registry_digest(stack, repo, tag)
    assert digest is not None

    client.logout()
    # Refused, but not always in words of authorization: its blobs are there already, so crane
    # goes straight to the manifest PUT, gets 401, and over HTTP/2 resends it with the token but
    # an empty body (0 of 418 bytes, nginx's log says) and nginx answers 400 (docs/testing.md).
    again = client.push(f"{stack.host}/{repo}:after-logout")
    assert again.returncode != 0 and registry_digest(stack, repo, "after-logout") is None, again.stdout
    client.forget()
    assert client.pull(ref) == digest
