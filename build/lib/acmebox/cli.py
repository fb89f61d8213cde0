"""Command line: flags (each also read from an ACMEBOX_* variable), logging, exit codes.

Exit codes: 0 success, 1 the CA refused or failed (its problem type and detail are printed),
2 bad input (one line saying what is wrong). No traceback reaches the user.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from acmebox import __version__
from acmebox.config import (
    LE_PRODUCTION,
    LE_STAGING,
    MAX_CONCURRENT_ORDERS,
    CertSpec,
    Config,
    HostPort,
    TokenAuth,
    certs_from_toml,
    normalize_email,
)
from acmebox.errors import AcmeboxError, ConfigError
from acmebox.keys import KEY_TYPES
from acmebox.reload import KINDS, ReloadTarget

log = logging.getLogger("acmebox")
TRUE = {"1", "true", "yes", "on"}
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"acmebox: error: {message} (see --help)\n")


def _env(name: str, *fallbacks: str) -> str | None:
    for var in (f"ACMEBOX_{name}", *fallbacks):
        value = os.environ.get(var)
        if value:
            return value
    return None


def _env_flag(name: str) -> bool:
    return (_env(name) or "").strip().lower() in TRUE


def _split(value: str | None) -> list[str]:
    return [v for v in re.split(r"[,\s]+", value or "") if v]


Group = argparse.ArgumentParser | argparse._ArgumentGroup


def _opt(group: Group, flag: str, help: str, default: str | None = None, also: tuple[str, ...] = (), **kw: Any) -> None:
    """A flag whose default comes from ACMEBOX_<FLAG> (then the `also` variables, then `default`)."""
    var = flag.lstrip("-").replace("-", "_").upper()
    names = " or ".join([f"ACMEBOX_{var}", *also])
    if kw.get("action") == "store_true":
        kw["default"] = _env_flag(var)
    else:
        kw["default"] = _env(var, *also) or default  # argparse applies `type` to string defaults
    group.add_argument(flag, help=f"{help} [{names}]", **kw)


def _dirs(parser: argparse.ArgumentParser) -> None:
    _opt(
        parser, "--certs-dir", "the shared certs volume (live/<name>/fullchain.pem ...)", "/etc/letsencrypt", type=Path
    )
    _opt(parser, "--state-dir", "account key and state", "/var/lib/acmebox", type=Path)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="acmebox", description="ACME sidecar for an nginx-fronted Docker registry.")
    parser.add_argument("--version", action="version", version=f"acmebox {__version__}")
    _opt(parser, "--log-level", "log verbosity", "info", choices=LOG_LEVELS, type=str.lower)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="obtain certificates and keep them fresh")
    run.add_argument(
        "--domain",
        "-d",
        action="append",
        metavar="NAME",
        help="a name for the certificate; repeat for more names "
        "[ACMEBOX_DOMAIN, comma-separated; or DOCKER_REGISTRY_DOMAIN_NAME]",
    )
    run.add_argument("--cert", action="append", metavar="NAME[,NAME...]",
                     help="one more certificate with these names; repeat for more certificates "
                          "[ACMEBOX_CERTS, certificates separated by ';']")  # fmt: skip
    _opt(run, "--config", "TOML file with [[certificate]] tables (names, key_type, profile)", type=Path)
    _opt(run, "--email", "contact address for the ACME account", also=("DOCKER_REGISTRY_CERT_EMAIL_ADDRESS",))
    _opt(run, "--directory", f"ACME directory URL (default: Let's Encrypt, {LE_PRODUCTION})")
    _opt(run, "--staging", "use Let's Encrypt's staging CA", action="store_true")
    _opt(run, "--ca-bundle", "PEM file of CAs to trust for the ACME server's HTTPS", type=Path)
    _dirs(run)
    _opt(run, "--listen", "HOST:PORT of the challenge, health and metrics server", "0.0.0.0:8080")
    _opt(run, "--key-type", "certificate key type", "ec256", choices=KEY_TYPES)
    _opt(run, "--profile", "ACME profile to ask for, e.g. shortlived")
    _opt(run, "--eab-kid", "external account binding key id")
    _opt(run, "--eab-hmac-key", "external account binding HMAC key, base64url")
    _opt(run, "--no-ari", "ignore the CA's renewal information (ARI); renew by lifetime only", action="store_true")
    _opt(run, "--reload", "how to tell nginx about new certificates", "none", choices=KINDS)
    _opt(run, "--reload-target", "docker: container name or label=KEY=VALUE; signal: PID or PID file; "
         "command: a command line")  # fmt: skip
    _opt(run, "--reload-verify", "after reloading, check by TLS handshake that HOST:PORT serves the new certificate",
         metavar="HOST:PORT")  # fmt: skip
    auth = run.add_argument_group("registry token service (enabled by --auth-htpasswd)")
    _opt(auth, "--auth-htpasswd", "htpasswd file with bcrypt entries of the users who may push", type=Path)
    _opt(auth, "--auth-key", "token signing key, created once (default: <state-dir>/token-signing.key)", type=Path)
    _opt(auth, "--auth-cert", "where to write the signing key's certificate, the registry's rootcertbundle "
         "(default: <state-dir>/token.crt)", type=Path)  # fmt: skip
    _opt(auth, "--auth-service", "the registry's auth.token.service", "registry")
    _opt(auth, "--auth-issuer", "the registry's auth.token.issuer", "acmebox")
    _opt(auth, "--auth-ttl", "token lifetime in seconds", "300", type=int)
    _opt(auth, "--auth-acl", 'TOML file narrowing users to repository patterns: alice = ["alice/*"]', type=Path)
    _opt(run, "--once", "obtain or confirm the certificates, then exit", action="store_true")
    _opt(run, "--force-renew", "order new certificates even when valid ones exist", action="store_true")
    _opt(run, "--max-concurrent-orders", "orders in flight at once (in --once and in the service)",
         str(MAX_CONCURRENT_ORDERS), type=int, metavar="N")  # fmt: skip

    status = sub.add_parser("status", help="a table of the certificates and their renewal plans")
    _dirs(status)
    renew = sub.add_parser("renew", help="ask the running service to check (or with --force, renew) now")
    renew.add_argument("name", nargs="?", help="certificate name (its first domain); default: all")
    renew.add_argument("--force", action="store_true", help="renew even when not due")
    renew.add_argument("--timeout", type=float, default=300, help="seconds to wait for the outcome")
    _dirs(renew)
    revoke = sub.add_parser("revoke", help="revoke a certificate at its CA; the service then replaces it")
    revoke.add_argument("name", help="certificate name (its first domain)")
    revoke.add_argument("--reason", type=int, default=0, choices=[0, 1, 3, 4, 5],
                        help="RFC 5280 reason code (0 unspecified, 1 keyCompromise, 4 superseded, ...)")  # fmt: skip
    _opt(revoke, "--ca-bundle", "PEM file of CAs to trust for the ACME server's HTTPS", type=Path)
    _dirs(revoke)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    if args.directory and args.staging:
        raise ConfigError("--staging and --directory are exclusive")
    directory = args.directory or (LE_STAGING if args.staging else LE_PRODUCTION)
    specs: list[CertSpec] = []
    email = args.email
    if args.config is not None:
        specs, file_email = certs_from_toml(args.config, args.key_type, args.profile)
        email = email or file_email
    cert_groups = args.cert or [g for g in (_env("CERTS") or "").split(";") if g.strip()]
    specs += [CertSpec.build(_split(group), args.key_type, args.profile) for group in cert_groups]
    domains = args.domain or ([] if specs else _split(_env("DOMAIN", "DOCKER_REGISTRY_DOMAIN_NAME")))
    if domains or not specs:
        specs.insert(0, CertSpec.build(domains, args.key_type, args.profile))
    return Config(
        certs=tuple(specs),
        email=normalize_email(email) if email else None,
        directory=directory,
        ca_bundle=args.ca_bundle,
        certs_dir=args.certs_dir,
        state_dir=args.state_dir,
        listen=HostPort.parse(args.listen),
        eab_kid=args.eab_kid,
        eab_hmac_key=args.eab_hmac_key,
        ari=not args.no_ari,
        reload=ReloadTarget.parse(args.reload, args.reload_target),
        reload_verify=HostPort.parse(args.reload_verify, "--reload-verify address") if args.reload_verify else None,
        token_auth=_token_auth(args),
        max_concurrent_orders=args.max_concurrent_orders,
    )


def _token_auth(args: argparse.Namespace) -> TokenAuth | None:
    if args.auth_htpasswd is None:
        for flag in ("auth_acl", "auth_key", "auth_cert"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --auth-htpasswd")
        return None
    if args.auth_ttl < 30 or args.auth_ttl > 86400:
        raise ConfigError("--auth-ttl must be between 30 and 86400 seconds")
    return TokenAuth(
        htpasswd=args.auth_htpasswd,
        key=args.auth_key or args.state_dir / "token-signing.key",
        cert=args.auth_cert or args.state_dir / "token.crt",
        service=args.auth_service,
        issuer=args.auth_issuer,
        ttl=args.auth_ttl,
        acl=args.auth_acl,
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("acme", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


async def _run_until_signalled(config: Config, once: bool, force: bool) -> int:
    from acmebox.service import Service  # imported late: `--help` stays fast

    task = asyncio.ensure_future(Service(config).run(once=once, force=force))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        log.info("stopped by signal")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `acmebox` command; returns the exit code. Meant to end the process: on the way out it
    freezes the garbage collector's objects, so the interpreter's teardown does not walk every
    object the imports made (50 ms, a tenth of a one-certificate `run --once`). Whatever the
    command wrote is closed by then, and logging is flushed at exit as before."""
    try:
        return _main(argv)
    finally:
        gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # argparse checks choices on flags, not on defaults from the environment
        print(f"acmebox: error: bad ACMEBOX_LOG_LEVEL {args.log_level!r}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level)
    try:
        if args.command == "run":
            config = config_from_args(args)
            return asyncio.run(_run_until_signalled(config, args.once, args.force_renew))
        from acmebox import commands

        if args.command == "status":
            return commands.status(args.certs_dir, args.state_dir)
        if args.command == "renew":
            return commands.renew(args.state_dir, args.name, args.force, args.timeout)
        if args.command == "revoke":
            return asyncio.run(commands.revoke(args.certs_dir, args.state_dir, args.name, args.reason, args.ca_bundle))
        raise ConfigError(f"unknown command {args.command}")
    except AcmeboxError as e:
        print(f"acmebox: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a disk or a file failing under a one-shot command
        where = f" ({e.filename})" if e.filename else ""
        print(f"acmebox: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line for the user, the traceback only at debug level
        log.debug("internal error", exc_info=True)
        print(f"acmebox: internal error: {type(e).__name__}: {e} (--log-level debug shows where)", file=sys.stderr)
        return 1
