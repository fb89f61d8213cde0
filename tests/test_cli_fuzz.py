"""Property-based fuzz (hypothesis) of the command line, the ACMEBOX_* environment and the
--config TOML: whatever comes in, acmebox exits 2 with one `acmebox: error:` line and no
traceback, and when it refuses the input, nothing has been written.

Every case runs `run --once` against a CA that is not there (127.0.0.1:1), so input that
passes validation ends in "cannot reach the CA". The CLI's main() runs in-process for speed;
a few cases go through `python -m acmebox` as a user runs it. Generated values never reach the
network: --directory and --listen come from fixed lists on loopback, and every directory flag
points into the example's own temporary directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from acmebox import cli
from tests.helpers.process import acmebox_env, free_port, run_acmebox

UNREACHABLE = "https://127.0.0.1:1/dir"
PORT = free_port()

# Text as argv or the environment can carry it: no NUL; undecodable bytes as surrogate escapes.
argv_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    st.binary(max_size=20).filter(lambda b: b"\x00" not in b).map(os.fsdecode),
    st.sampled_from(["", " ", "-", "--", "a.example.com", "a..b", "xn--", "1", "0", "yes", "off", "y", "2",
                     "ec256", "rsa1024", "shortlived", "a@b.example", "../x", "*", "%s", "{}", "\\", "\n"]),
)
listen = st.sampled_from([f"127.0.0.1:{PORT}", ":0", "127.0.0.1:0", "nope", "127.0.0.1:99999", "127.0.0.1:-1",
                          "999.1.1.1:1", "no-such-host.invalid:1", "[::1]:x", ""])
directory = st.sampled_from([UNREACHABLE, "https://", "ftp://127.0.0.1/d", "not a url", "https://127.0.0.1:x/d"])
VALUE_FLAGS = ["--domain", "-d", "--cert", "--email", "--key-type", "--profile", "--eab-kid", "--eab-hmac-key",
               "--reload", "--reload-target", "--reload-verify", "--auth-service", "--auth-issuer", "--auth-ttl",
               "--auth-trusted-proxy", "--log-level"]
SWITCHES = ["--once", "--force-renew", "--staging", "--no-ari"]
ENV_NAMES = ["ACMEBOX_STAGING", "ACMEBOX_NO_ARI", "ACMEBOX_ONCE", "ACMEBOX_FORCE_RENEW", "ACMEBOX_LOG_LEVEL",
             "ACMEBOX_AUTH_TTL", "ACMEBOX_KEY_TYPE", "ACMEBOX_DOMAIN", "ACMEBOX_CERTS", "ACMEBOX_EMAIL",
             "ACMEBOX_PROFILE", "DOCKER_REGISTRY_DOMAIN_NAME"]
FILE_FLAGS = ["--config", "--ca-bundle", "--auth-htpasswd", "--auth-acl", "--auth-key"]

flag_pairs = st.lists(st.tuples(st.sampled_from(VALUE_FLAGS), argv_text), max_size=5)
switches = st.lists(st.sampled_from(SWITCHES), max_size=3)
environment = st.dictionaries(st.sampled_from(ENV_NAMES), argv_text.filter(bool), max_size=3)

# TOML documents: mostly the config's own shape with values of any type, sometimes raw text.
toml_scalar = st.one_of(st.integers(), st.booleans(), argv_text, st.floats(allow_nan=False, allow_infinity=False))
toml_value = st.recursive(toml_scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
cert_table = st.dictionaries(st.sampled_from(["names", "key_type", "profile", "keytype", "x"]),
                             st.one_of(toml_value, st.lists(st.sampled_from(["a.example.com", "b.example.com",
                                                                              "bad_name", ""]), max_size=3)),
                             max_size=4)
config_doc = st.fixed_dictionaries({}, optional={"email": toml_value, "certificate": st.lists(cert_table, max_size=3),
                                                 "other": toml_value})


def toml_dump(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_dump(v) for v in value) + "]"
    raise TypeError(value)


def render(doc: dict[str, object]) -> str:
    out = [f"{k} = {toml_dump(v)}" for k, v in doc.items() if k != "certificate"]
    for table in doc.get("certificate", []):  # type: ignore[attr-defined]
        out.append("[[certificate]]")
        out += [f"{k} = {toml_dump(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


toml_text = st.one_of(config_doc.map(render), argv_text, st.sampled_from(["x = " + "[" * 3000 + "]" * 3000,
                                                                          "email = ", "[certificate]\nnames = 1"]))


@contextlib.contextmanager
def sandbox(env: dict[str, str]) -> Iterator[tuple[Path, io.StringIO]]:
    """A fresh temporary directory as the working directory, only `env` among ACMEBOX_*
    variables, and the log captured (main() would otherwise attach it to the first stderr)."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for k in list(os.environ):
                if k.startswith(("ACMEBOX_", "DOCKER_REGISTRY_")):
                    del os.environ[k]
            os.environ.update(env)
            os.chdir(tmp)
            root.handlers = [logging.StreamHandler(log)]
            yield Path(tmp), log
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            root.handlers, root.level = saved_handlers, saved_level


def check(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str], files: dict[str, bytes]) -> None:
    with sandbox(env) as (tmp, log):
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        full = ["run", "--once", *argv, "--certs-dir", str(tmp / "certs"), "--state-dir", str(tmp / "state")]
        if "--directory" not in argv:
            full += ["--directory", UNREACHABLE]
        if "--listen" not in argv:
            full += ["--listen", f"127.0.0.1:{PORT}"]
        capsys.readouterr()
        try:
            rc = cli.main(full)
        except SystemExit as e:  # argparse's own refusals
            rc = e.code  # type: ignore[assignment]
        err = capsys.readouterr().err
        logged = log.getvalue()
        assert "Traceback" not in err and "Traceback" not in logged, (full, err, logged)
        assert rc == 2, (full, rc, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("acmebox: error: "), (full, err)
        event("passed validation" if "cannot reach the CA" in lines[-1] else "refused")
        if "cannot reach the CA" not in lines[-1]:
            assert len(lines) == 1, (full, err)  # a refusal is one line
            assert not (tmp / "certs").exists() and not (tmp / "state").exists(), ("written before refusing", full)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@FUZZ
@given(pairs=flag_pairs, flags=switches, env=environment, where=listen, ca=directory)
def test_flags_and_environment(pairs: list[tuple[str, str]], flags: list[str], env: dict[str, str], where: str,
                               ca: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--domain", "a.example.com", *[x for pair in pairs for x in pair], *flags, "--listen", where,
            "--directory", ca]
    check(argv, env, capsys, {})


@FUZZ
@given(doc=toml_text, acl=toml_text, flags=switches, file_flags=st.lists(st.sampled_from(FILE_FLAGS), max_size=3))
def test_config_and_files(doc: str, acl: str, flags: list[str], file_flags: list[str],
                          capsys: pytest.CaptureFixture[str]) -> None:
    # Every file flag points at a generated file: the TOML, the ACL, or garbage bytes.
    targets = {"--config": "c.toml", "--auth-acl": "acl.toml", "--auth-htpasswd": "acl.toml",
               "--ca-bundle": "c.toml", "--auth-key": "acl.toml"}
    argv = ["--config", "c.toml", *flags]
    for flag in file_flags:
        argv += [flag, targets[flag]]
    check(argv, {}, capsys, {"c.toml": doc.encode("utf-8", "surrogateescape"),
                             "acl.toml": acl.encode("utf-8", "surrogateescape")})


@settings(max_examples=6, deadline=None)
@given(pairs=flag_pairs, env=environment, where=listen)
def test_as_a_user_runs_it(pairs: list[tuple[str, str]], env: dict[str, str], where: str) -> None:
    """The same through `python -m acmebox`: what reaches the terminal is one line."""
    argv = [x for pair in pairs for x in pair]
    with tempfile.TemporaryDirectory() as tmp:
        result = run_acmebox("run", "--once", "--domain", "a.example.com", *argv, "--listen", where,
                             "--directory", UNREACHABLE, "--certs-dir", f"{tmp}/c", "--state-dir", f"{tmp}/s",
                             env=acmebox_env(**env), timeout=60)
        assert "Traceback" not in result.stderr
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("acmebox: error: ")
        if "cannot reach the CA" not in last:
            assert len(result.stderr.strip().splitlines()) == 1
            assert not Path(f"{tmp}/c").exists() and not Path(f"{tmp}/s").exists()
