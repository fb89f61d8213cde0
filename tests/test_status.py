"""What an operator reads and scripts: the certificates from every configuration source,
`status` (table and --json, exit codes) against a running service with Debian's nginx in
front, and `renew` by any of a certificate's names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.nginx import Nginx
from tests.helpers.pebble import Dirs, Pebble, pebble_args, start_pebble, stop_pebble
from tests.helpers.process import ServiceProcess, acmebox_env, free_port, run_acmebox, wait_sync

pytestmark = pytest.mark.e2e  # Pebble and nginx


def test_every_source_adds_certificates(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    config = tmp_path / "certs.toml"
    config.write_text('[[certificate]]\nnames = ["file.test"]\n')
    env = acmebox_env(DOCKER_REGISTRY_DOMAIN_NAME="registry.test", ACMEBOX_CERTS="b.test,www.b.test;c.test")
    out = run_acmebox("run", "--once", "--cert", "d.test", "--config", str(config), *pebble_args(pebble, dirs),
                      env=env)
    assert out.returncode == 0, out.stderr
    live = sorted(p.name for p in (dirs.certs / "live").iterdir())
    assert live == ["b.test", "c.test", "d.test", "file.test", "registry.test"]

    clash = run_acmebox("run", "--once", "--cert", "registry.test,x.test", *pebble_args(pebble, dirs), env=env)
    assert clash.returncode == 2 and "'registry.test' is in two certificates" in clash.stderr.splitlines()[-1]
    same = run_acmebox("run", "--once", "--domain", "registry.test", *pebble_args(pebble, dirs), env=env)
    assert same.returncode == 0, "the same certificate named twice is one certificate"

    # Dropped from the configuration: no longer managed, whatever lies on disk.
    fewer = acmebox_env(DOCKER_REGISTRY_DOMAIN_NAME="registry.test")
    assert run_acmebox("run", "--once", *pebble_args(pebble, dirs), env=fewer).returncode == 0
    out = run_acmebox("status", "--json", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
    rows = {r["name"]: r["condition"] for r in json.loads(out.stdout)}
    assert rows["registry.test"] == "ok" and rows["b.test"] == "not managed" and out.returncode == 0
    renew = run_acmebox("renew", "b.test", "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state))
    assert renew.returncode == 2


SERVED = """
    server {{
        listen 127.0.0.1:{port} ssl default_server;
        ssl_certificate {certs}/live/good.test/fullchain.pem;
        ssl_certificate_key {certs}/live/good.test/privkey.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
"""


def test_status_and_renew_against_a_running_service(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    """good.test is served by nginx; blocked.test is refused by the CA (Pebble's blocklist);
    unserved.test is issued but nginx presents good.test's certificate for it."""
    port = free_port()
    nginx = Nginx.serving(tmp_path / "nginx", SERVED.format(port=port, certs=dirs.certs))
    svc = ServiceProcess(["run", "--cert", "good.test,www.good.test", "--cert", "blocked.test", "--cert",
                          "unserved.test", *pebble_args(pebble, dirs), "--no-ari", "--reload", "signal",
                          "--reload-target", str(nginx.pid_file), "--reload-verify", f"127.0.0.1:{port}"],
                         tmp_path / "service.log")
    status_args = ["--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state)]

    def status() -> dict[str, dict]:  # type: ignore[type-arg]
        out = run_acmebox("status", "--json", *status_args)
        return {row["name"]: row for row in json.loads(out.stdout)}

    try:
        svc.wait_log("wrote a self-signed placeholder", count=3)
        nginx.start()
        wait_sync(lambda: {r["condition"] for r in status().values()} == {"ok", "failing", "not served"},
                  timeout=60, what="one good, one failing, one not served")
        rows = status()
        assert rows["good.test"]["condition"] == "ok" and rows["good.test"]["served_matches"] is True
        assert rows["good.test"]["names"] == ["good.test", "www.good.test"]
        assert rows["blocked.test"]["condition"] == "failing" and rows["blocked.test"]["failures"] >= 1
        assert "blocked.test" in rows["blocked.test"]["last_error"]
        assert rows["unserved.test"]["served_matches"] is False
        assert rows["unserved.test"]["served_serial"] == rows["good.test"]["serial"]

        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{pebble.http_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'acmebox_certificate_served_matches{name="good.test"} 1.0' in metrics
        assert 'acmebox_certificate_served_matches{name="unserved.test"} 0.0' in metrics
        assert 'acmebox_certificate_served_expiry_timestamp_seconds{name="good.test"}' in metrics

        table = run_acmebox("status", *status_args)
        assert table.returncode == 1, "a failing or unserved certificate makes status fail"
        lines = table.stdout.splitlines()
        assert len(lines) == 4 and all(len(line) < 200 for line in lines), table.stdout

        renewed = run_acmebox("renew", "www.good.test", *status_args, "--timeout", "60")
        assert renewed.returncode == 0, renewed.stdout + renewed.stderr
        assert "www.good.test is a name of certificate good.test" in renewed.stdout
        assert "good.test: not due" in renewed.stdout

        forced = run_acmebox("renew", "--force", "good.test", *status_args, "--timeout", "90")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "renewed: serial" in forced.stdout and "the server serves it (verified)" in forced.stdout
    finally:
        svc.stop()
        nginx.stop()


FRONT = """
    server {{
        listen 127.0.0.1:{port};
        location /.well-known/acme-challenge/ {{ proxy_pass http://127.0.0.1:{upstream}; }}
        location / {{ return 404; }}
    }}
"""


def test_check_reports_before_going_live(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    front, upstream = free_port(), free_port()
    nginx = Nginx.serving(tmp_path / "nginx", FRONT.format(port=front, upstream=upstream))
    args = pebble_args(pebble, dirs)
    args[args.index("--listen") + 1] = f"127.0.0.1:{upstream}"
    args += ["--domain", "check.test", "--self-check-via", f"127.0.0.1:{front}", "--reload", "signal",
             "--reload-target", str(nginx.pid_file)]

    def findings() -> tuple[int, dict[str, dict]]:  # type: ignore[type-arg]
        out = run_acmebox("check", "--json", *args)
        assert "Traceback" not in out.stderr
        return out.returncode, {f["check"]: f for f in json.loads(out.stdout)}

    orders = pebble.orders_in_log()
    code, before = findings()  # nginx not started: no route, no PID
    assert code == 1
    assert before["CA"]["ok"] and before["certs dir"]["ok"] and before["state dir"]["ok"]
    assert not before["challenge path check.test"]["ok"] and not before["reload"]["ok"]
    assert not list(dirs.state.glob("accounts/**/key.pem")), "check registers nothing"
    try:
        nginx.start()
        code, after = findings()
        assert after["challenge path check.test"]["ok"], after["challenge path check.test"]
        assert after["reload"]["ok"]
        dns = after["DNS check.test"]
        assert dns["ok"] and "does not resolve here" in dns["detail"], "a warning: the self-check goes via nginx"
        assert code == 0
        assert pebble.orders_in_log() == orders, "check orders nothing"
    finally:
        nginx.stop()


def test_once_fails_when_the_server_is_not_reloaded(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    reload = ["--reload", "signal", "--reload-target", str(tmp_path / "missing.pid"),
              "--reload-verify", f"127.0.0.1:{free_port()}"]
    out = run_acmebox("run", "--once", "--domain", "noreload.test", *pebble_args(pebble, dirs), *reload)
    assert out.returncode == 1, out.stderr
    assert "not reloaded" in out.stderr.splitlines()[-1]
    assert (dirs.certs / "live" / "noreload.test" / "fullchain.pem").exists(), "the certificate is kept"


def test_a_staging_certificate_under_a_production_configuration_is_not_ok(
    pebble: Pebble, dirs: Dirs, tmp_path: Path
) -> None:
    """`status` cannot see the configuration; it reads the verdict the service records at start.
    A certificate from another CA directory (staging, before switching to production) is not
    ok while the new directory cannot replace it, and ok once it has."""
    name = "staging.test"
    assert run_acmebox("run", "--once", "--domain", name, *pebble_args(pebble, dirs)).returncode == 0
    status_args = ["--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state)]

    def row() -> tuple[int, dict]:  # type: ignore[type-arg]
        out = run_acmebox("status", "--json", *status_args)
        (only,) = json.loads(out.stdout)
        return out.returncode, only

    code, before = row()
    assert code == 0 and before["condition"] == "ok" and before["verdict"]["reason"] == "Ready"
    production = start_pebble(tmp_path / "production")
    stop_pebble(production)  # down for now: nothing can replace the staging certificate yet
    svc = ServiceProcess(["run", "--domain", name, *pebble_args(production, dirs), "--no-ari"],
                         tmp_path / "service.log")
    try:
        svc.wait_log("cannot reach the CA")
        code, during = row()
        assert code == 1, during
        assert during["condition"] == "other directory" and during["verdict"]["reason"] == "OtherDirectory"
        assert during["verdict"]["message"] == f"issued by another CA directory ({pebble.directory})"
        assert during["serial"] == before["serial"], "nothing was replaced"
        table = run_acmebox("status", *status_args)
        assert table.returncode == 1 and "other directory" in table.stdout and pebble.directory in table.stdout

        production = start_pebble(tmp_path / "production", **production.env)
        wait_sync(lambda: row()[1]["condition"] == "ok", timeout=60, what="the production certificate")
        code, after = row()
        assert code == 0 and after["serial"] != before["serial"] and after["directory"] == production.directory
        assert production.orders_in_log() == 1
    finally:
        svc.stop()
        stop_pebble(production)
