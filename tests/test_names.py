"""One canonical form for every name, decided by acmebox.names at every entry point: --domain,
--cert, ACMEBOX_DOMAIN, DOCKER_REGISTRY_DOMAIN_NAME, ACMEBOX_CERTS, the TOML file and
compose/start-registry.sh. Either the canonical result or the one-line exit-2 message."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from acmebox import cli
from acmebox.errors import ConfigError
from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import free_port, run_acmebox, user_free_env
from tests.helpers.stack import NGINX_MAIN, compose, fit_host_nginx, host_path_of, render_templates

HUNDRED = [f"n{i}.example.com" for i in range(100)]

# (what the user typed, the canonical names or the message of the exit-2 error)
CASES: list[tuple[list[str], list[str] | str]] = [
    (["Registry.Example.COM"], ["registry.example.com"]),
    (["registry.example.com."], ["registry.example.com"]),
    # IDNA 2003 (Python's "idna" codec) maps these to fass.de, strasse.de and xn--nxasmq6b.com
    (["faß.de"], ["xn--fa-hia.de"]),
    (["STRAßE.de"], ["xn--strae-oqa.de"]),
    (["βόλος.com"], ["xn--nxasmm1c.com"]),
    (["XN--FA-HIA.DE"], ["xn--fa-hia.de"]),
    (["Bücher.example"], ["xn--bcher-kva.example"]),
    # full-width letters, which UTS 46 maps to ASCII
    (["\uff52\uff45\uff47\uff49\uff53\uff54\uff52\uff59.example.com"], ["registry.example.com"]),
    # IDNA 2008 refuses what IDNA 2003 took
    (["☃.com"], "malformed domain name '☃.com': Codepoint U+2603"),
    (["a\u200db.example.com"], "malformed domain name 'a\\u200db.example.com'"),
    # characters the mapping would drop unseen
    (["exa\u200bmple.com"], "contains U+200B (zero width space); remove it"),
    (["exa\u00admple.com"], "contains U+00AD (soft hyphen); remove it"),
    # A-labels are held to the same rules as what they encode
    (["xn--zz.test"], "malformed domain name 'xn--zz.test': Invalid A-label"),
    (["xn--a.com"], "malformed domain name 'xn--a.com'"),
    (["under_score.test"], "malformed domain name 'under_score.test'"),
    (["*.example.com"], "wildcard domain '*.example.com'"),
    (["registry.example.com", "Registry.Example.Com."], "duplicate domain name 'registry.example.com'"),
    (HUNDRED, HUNDRED),
    ([*HUNDRED, "one-more.example.com"], "101 names in one certificate; at most 100 are allowed"),
]
SINGLE = [c for c in CASES if len(c[0]) == 1]


def case_id(case: tuple[list[str], list[str] | str]) -> str:
    return repr(case[0][0])[:40] + (f" +{len(case[0]) - 1}" if len(case[0]) > 1 else "")


def clean_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for var in os.environ:
        if var.startswith(("ACMEBOX_", "DOCKER_REGISTRY_")):
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)


def entry_points(names: list[str], tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """(argv after `run`, environment) that hand `names` to acmebox, one way each."""
    toml = tmp_path / "certs.toml"
    toml.write_text(f"[[certificate]]\nnames = {json.dumps(names)}\n")
    return {
        "--domain": ([f"--domain={n}" for n in names], {}),
        "--cert": (["--cert", ",".join(names)], {}),
        "ACMEBOX_DOMAIN": ([], {"ACMEBOX_DOMAIN": ",".join(names)}),
        "DOCKER_REGISTRY_DOMAIN_NAME": ([], {"DOCKER_REGISTRY_DOMAIN_NAME": " ".join(names)}),
        "ACMEBOX_CERTS": ([], {"ACMEBOX_CERTS": ",".join(names)}),
        "--config": (["--config", str(toml)], {}),
    }


@pytest.mark.parametrize(("typed", "expected"), CASES, ids=[case_id(c) for c in CASES])
def test_every_entry_point_gives_the_canonical_name_or_one_error(
    typed: list[str], expected: list[str] | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for entry, (argv, env) in entry_points(typed, tmp_path).items():
        clean_env(monkeypatch, **env)
        if isinstance(expected, list):
            config = cli.config_from_args(cli.build_parser().parse_args(["run", *argv]))
            assert list(config.certs[0].names) == expected, entry
            assert len(config.certs) == 1
        else:
            with pytest.raises(ConfigError) as e:  # what main() prints, and exits 2 with
                cli.config_from_args(cli.build_parser().parse_args(["run", *argv]))
            assert e.value.exit_code == 2 and expected in str(e.value), (entry, str(e.value))
            assert "\n" not in str(e.value)
    if isinstance(expected, str):  # and once through main(): one line on stderr, exit code 2
        clean_env(monkeypatch)
        code = cli.main(["run", "--once", *[f"--domain={n}" for n in typed], "--certs-dir", str(tmp_path / "c")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("acmebox: error: ") and expected in err[-1], err
        assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("typed", "expected"), SINGLE, ids=[case_id(c) for c in SINGLE])
def test_start_script_asks_acmebox(typed: list[str], expected: list[str] | str, compose_copy: Path) -> None:
    out = subprocess.run(["bash", str(compose_copy / "start-registry.sh"), "--prepare-only", typed[0],
                          "ops@example.com"], capture_output=True, text=True, env=user_free_env())
    if isinstance(expected, list):
        assert out.returncode == 0, out.stderr
        assert f"DOCKER_REGISTRY_DOMAIN_NAME={expected[0]}\n" in (compose_copy / ".env").read_text()
    else:
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith(f"start-registry.sh: bad DOMAIN '{typed[0]}': ") and expected in out.stderr


def test_a_differently_typed_compose_name_is_reported(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    clean_env(monkeypatch, DOCKER_REGISTRY_DOMAIN_NAME="Registry.Example.COM")
    with caplog.at_level(logging.WARNING, logger="acmebox"):
        config = cli.config_from_args(cli.build_parser().parse_args(["run"]))
    assert config.certs[0].name == "registry.example.com"
    assert "written to live/registry.example.com/" in caplog.text


@pytest.mark.e2e
def test_nginx_template_points_at_what_acmebox_wrote(pebble: Pebble, dirs: Dirs, compose_copy: Path,
                                                     tmp_path: Path) -> None:
    """The user types the name in mixed case with a trailing dot; start-registry.sh writes
    .env; the nginx template is rendered from what `docker-compose config` makes of the
    compose file's nginx environment (as the nginx image renders it); acmebox runs with the
    name as typed. nginx -t then loads the certificate the template names."""
    typed = "Registry.TEST."
    out = subprocess.run(["bash", str(compose_copy / "start-registry.sh"), "--prepare-only", typed,
                          "ops@example.com"], capture_output=True, text=True, env=user_free_env())
    assert out.returncode == 0, out.stderr
    resolved = subprocess.run(["docker-compose", "config"], cwd=compose_copy, capture_output=True, text=True,
                              env=user_free_env())
    assert resolved.returncode == 0, resolved.stderr
    nginx_env = {k: str(v) for k, v in yaml.safe_load(resolved.stdout)["services"]["nginx"]["environment"].items()}
    host_specific = {  # what only differs because this runs on loopback, not in containers
        "NGINX_LISTEN_HTTP": f"127.0.0.1:{free_port()}",
        "NGINX_LISTEN_HTTPS": f"127.0.0.1:{free_port()}",
        "ACMEBOX_UPSTREAM": "127.0.0.1:1",
        "REGISTRY_UPSTREAM": "127.0.0.1:1",
        "CERTS_DIR": str(dirs.certs),
    }
    assert set(host_specific) < set(nginx_env) and "REGISTRY_DOMAIN" not in host_specific
    run = tmp_path / "nginx"
    (run / "tmp").mkdir(parents=True)
    template_dir = host_path_of(compose()["services"]["nginx"], "/etc/nginx/templates")
    (conf,) = render_templates(template_dir, run / "conf.d", {"PATH": os.environ["PATH"], **nginx_env,
                                                              **host_specific})
    fit_host_nginx([conf], shutil.which("nginx") or "/usr/sbin/nginx")  # `http2 on;` for nginx < 1.25.1

    result = run_acmebox("run", "--once", "--domain", typed, *pebble_args(pebble, dirs))
    assert result.returncode == 0, result.stderr
    paths = {line.split()[1].rstrip(";") for line in conf.read_text().splitlines()
             if line.strip().startswith(("ssl_certificate ", "ssl_certificate_key "))}
    assert paths == {str(dirs.certs / "live" / "registry.test" / "combined.pem")}
    assert all(Path(p).is_file() for p in paths)
    (run / "nginx.conf").write_text(NGINX_MAIN.format(run=run))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([nginx, "-t", "-c", str(run / "nginx.conf"), "-p", str(run)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
