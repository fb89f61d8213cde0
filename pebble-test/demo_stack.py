"""The demo behind pebble-test/demo.sh: the whole registry stack on this machine, a push with a
login and an anonymous pull, then the addresses to open; it runs until Ctrl-C and cleans up.

Default: processes on free loopback ports (tests/stack.py: Pebble, Debian's nginx with the
repo's template, Debian's registry, acmebox, the browse page). --containers: the image and
compose/docker-compose.yml through start-registry.sh, in a dockerd of its own in private
namespaces (tests/containers.py, the container test's recipe). Files go to ./demo/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
STOP = f"Stop: Ctrl-C here (or kill {os.getpid()}); everything the demo started is stopped and removed."
STOPPED = "--no-wait: everything the demo started is stopped and removed now."
REGISTRY_NAMES = {"3": "distribution 3.x, registry:3", "2": "distribution 2.8, registry:2"}
sys.path.insert(0, str(ROOT))  # for tests.helpers

from tests.helpers.docker import TEST_HOSTS, busybox_image, with_hosts  # noqa: E402
from tests.helpers.oci import make_layout  # noqa: E402


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def until_stopped(wait: bool) -> None:
    if not wait:
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            signal.pause()
    say("stopping")


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def loopback(work: Path, wait: bool, registry: str) -> None:
    from tests.helpers.stack import DOMAIN, USERS, running_stack

    user, password = next(iter(USERS.items()))
    say(f"starting Pebble, acmebox, the registry ({REGISTRY_NAMES[registry]}) and nginx on free loopback ports")
    with running_stack(work, registry_version=registry) as s:
        cert = (s.certs / "live" / DOMAIN / "cert.pem").read_text()
        serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-issuer"], input=cert, text=True,
                                capture_output=True).stdout.strip().replace("\n", ", ")
        say(f"certificate for {DOMAIN} from Pebble through nginx's port 80 ({serial}); nginx serves it")
        certs = fresh(work / "client-certs")
        (certs / "ca.crt").write_text(s.root_pem())
        hosts = work / "hosts"
        hosts.write_text(TEST_HOSTS)
        layout = work / "image"
        make_layout(layout, "1", "hello from the acmebox demo\n")
        dest = f"docker://{s.host}/demo/hello:1"

        def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
            env = {"PATH": os.environ["PATH"], "HOME": str(work), "REGISTRY_AUTH_FILE": str(work / "auth.json")}
            return subprocess.run(with_hosts(hosts, ["skopeo", *args]), capture_output=True, text=True, env=env)

        pushed = skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", f"{user}:{password}",
                        f"oci:{layout}:1", dest)
        if pushed.returncode != 0:
            raise SystemExit(f"push failed: {pushed.stderr}")
        say(f"pushed {s.host}/demo/hello:1 as {user} (skopeo, with a login)")
        pulled = skopeo("copy", "--src-cert-dir", str(certs), dest, f"oci:{fresh(work / 'pulled')}:1")
        if pulled.returncode != 0:
            raise SystemExit(f"anonymous pull failed: {pulled.stderr}")
        say(f"pulled it back anonymously into {work / 'pulled'}")
        refused = skopeo("copy", "--dest-cert-dir", str(certs), f"oci:{layout}:1", f"docker://{s.host}/demo/anon:1")
        say(f"anonymous push refused: {refused.returncode != 0}")
        print(f"""
Open (registry.test is this machine's 127.0.0.1 only for these commands; nothing was changed):
  browse page:  chromium --host-resolver-rules='MAP {DOMAIN} 127.0.0.1' --ignore-certificate-errors \\
                  https://{s.host}/
  the API:      curl --cacert {certs}/ca.crt --resolve {s.host}:127.0.0.1 https://{s.host}/v2/
  plain http:   curl -si -H 'Host: {DOMAIN}' http://127.0.0.1:{s.http_port}/v2/   (308 to https)
  acmebox log:  {s.acmebox.log_path}
  users:        {", ".join(f"{u} / {p}" for u, p in USERS.items())} (htpasswd {s.htpasswd})
  push more:    unshare --mount sh -c 'mount --bind {hosts} /etc/hosts && skopeo copy \\
                  --dest-cert-dir {certs} --dest-creds {user}:{password} oci:{layout}:1 docker://{s.host}/demo/x:1'
{STOP if wait else STOPPED}""",
              flush=True)
        until_stopped(wait)


def containers(work: Path, wait: bool, registry: str) -> None:
    from tests.helpers.containers import (
        DOMAIN,
        PASSWORD,
        USER,
        NotPrepared,
        Project,
        build_standins,
        compose_v2,
        engine,
    )
    from tests.helpers.containers import wait as wait_for

    say("starting a dockerd of the demo's own (private network and mount namespaces)")
    try:
        with engine(work) as e:
            say("importing the Debian base images, building the stand-ins for python/nginx/registry")
            build_standins(e, work)
            overlays = ("docker-compose.registry2.yml",) if registry == "2" else ()
            p = Project(e, work, "v2" if compose_v2() else "v1", overlays=overlays)
            try:
                p.prepare()
                say(f"compose/start-registry.sh {DOMAIN} (compose {p.flavor}; the image is built offline)")
                started = time.monotonic()
                p.start_script()
                wait_for(lambda: "now presents the new certificate(s)" in p.logs("acmebox"), 300, "the certificate")
                say(f"certificate from Pebble through nginx's port 80, {time.monotonic() - started:.0f} s after "
                    "start-registry.sh; nginx reloaded by its watcher (no Docker socket)")
                for service in ("acmebox", "registry", "nginx"):
                    wait_for(lambda svc=service: p.health(svc) == "healthy", 120, f"{service} healthy")  # type: ignore[misc]
                say(f"acmebox, registry ({REGISTRY_NAMES[registry]}) and nginx are healthy")
                ca = p.trust_pebble_root()
                image = f"{DOMAIN}/{USER}/busybox:1"
                busybox_image(e.env["DOCKER_HOST"], fresh(work / "bb"), image)
                e.run("docker", "login", DOMAIN, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
                e.docker("push", image)
                say(f"docker login as {USER}, docker push {image}")
                e.docker("logout", DOMAIN)
                e.docker("rmi", image)
                e.docker("pull", image)
                say(f"docker logout, docker pull {image} anonymously")
                ns = " ".join(e.in_ns())
                compose_env = " ".join(f"{k}={v}" for k, v in p.env.items())
                print(f"""
The stack runs in the demo's own network namespace (its ports 80 and 443 are not the host's):
  a shell in it:  {ns} bash
  then:           curl --cacert {ca} https://{DOMAIN}/        (the browse page)
                  curl -si http://{DOMAIN}/v2/                 (308 to https)
  the engine:     DOCKER_HOST={e.env["DOCKER_HOST"]} docker ps
  compose:        cd {p.dir} && {compose_env} {" ".join(p.compose_cmd)} ps   (in that shell)
{STOP if wait else STOPPED}""",
                      flush=True)
                until_stopped(wait)
            finally:
                p.compose("down", "-v", "--remove-orphans", check=False)
    except NotPrepared as err:
        raise SystemExit(str(err)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", action="store_true", help="run the image and compose file instead")
    parser.add_argument("--no-wait", action="store_true", help="stop right after the checks")
    parser.add_argument("--registry", choices=["3", "2"], default="3", help="distribution 3.x or 2.8")
    args = parser.parse_args()
    work = fresh(ROOT / "demo" / ("containers" if args.containers else "stack"))
    (containers if args.containers else loopback)(work, not args.no_wait, args.registry)


if __name__ == "__main__":
    main()
