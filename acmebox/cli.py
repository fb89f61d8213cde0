"""Command line: flags (each also read from an ACMEBOX_* variable), logging, exit codes.

This module maps flags and environment to raw values (config.Sources) and runs the commands; the
rules for those values live in config.py (Config.from_sources), which checks every flag and file
before anything is written: a refusal leaves no directory behind.

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
from acmebox.config import LE_PRODUCTION, MAX_CONCURRENT_ORDERS, Config, ReloadSpec, Sources, TokenKeySettings
from acmebox.errors import AcmeboxError, ConfigError
from acmebox.keys import KEY_TYPES
from acmebox.names import canonical_name

log = logging.getLogger("acmebox")
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
LOG_LEVELS = ("debug", "info", "warning", "error")
BOOL_FLAGS: set[str] = set()  # dests of on/off flags whose ACMEBOX_* value is checked in main()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"acmebox: error: {message} (see --help)\n")


def _env(name: str, *fallbacks: str) -> str | None:
    for var in (f"ACMEBOX_{name}", *fallbacks):
        value = os.environ.get(var)
        if value:
            return value
    return None


def strict_bool(value: str, what: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off` (any case); anything else is a ConfigError, so a
    typo such as ACMEBOX_STAGING=y cannot silently mean production."""
    word = value.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise ConfigError(f"bad {what} {value!r}: want 1/true/yes/on or 0/false/no/off")


def _split(value: str | None) -> list[str]:
    return [v for v in re.split(r"[,\s]+", value or "") if v]


Group = argparse.ArgumentParser | argparse._ArgumentGroup


def _opt(group: Group, flag: str, help: str, default: str | None = None, also: tuple[str, ...] = (), **kw: Any) -> None:
    """A flag whose default comes from ACMEBOX_<FLAG> (then the `also` variables, then `default`)."""
    var = flag.lstrip("-").replace("-", "_").upper()
    names = " or ".join([f"ACMEBOX_{var}", *also])
    if kw.get("action") == "store_true":
        # The raw ACMEBOX_* word (or False); main() turns it into a bool or refuses it.
        kw["default"] = _env(var) or False
        BOOL_FLAGS.add(var.lower())
        default = "off"
    else:
        kw["default"] = _env(var, *also) or default  # argparse applies `type` to string defaults
    # The built-in default, never the environment's value: that may be a secret (EAB key).
    shown = f"; default: {default}" if default is not None else ""
    group.add_argument(flag, help=f"{help} [{names}{shown}]", **kw)


def _path(text: str) -> Path:
    """A path flag's value; an empty one (an unset variable in a script) would mean the current
    directory, so it is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


def _dirs(parser: argparse.ArgumentParser) -> None:
    _opt(
        parser, "--certs-dir", "the shared certs volume (live/<name>/fullchain.pem ...)", "/etc/letsencrypt", type=_path
    )
    _opt(parser, "--state-dir", "account key and state", "/var/lib/acmebox", type=_path)
    # Also accepted after the command (`acmebox run --log-level debug`); SUPPRESS keeps the
    # value given before the command when it is not repeated here.
    parser.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, type=str.lower,
                        help="log verbosity, also accepted before the command "
                             "[ACMEBOX_LOG_LEVEL; default: info]")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="acmebox", description="ACME sidecar for an nginx-fronted Docker registry.")
    parser.add_argument("--version", action="version", version=f"acmebox {__version__}")
    _opt(parser, "--log-level", "log verbosity", "info", choices=LOG_LEVELS, type=str.lower)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", aliases=["check"], help="obtain certificates and keep them fresh; `check` "
                         "takes the same flags and only checks, orders nothing")
    run.add_argument("--json", action="store_true", help="check: the findings as JSON")
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
                          "[ACMEBOX_CERTS, certificates separated by ';']")
    _opt(run, "--config", "TOML file with [[certificate]] tables (names, key_type, profile)", type=_path)
    _opt(run, "--email", "contact address for the ACME account", also=("DOCKER_REGISTRY_CERT_EMAIL_ADDRESS",))
    _opt(run, "--directory", f"ACME directory URL (default: Let's Encrypt, {LE_PRODUCTION})")
    _opt(run, "--staging", "use Let's Encrypt's staging CA", action="store_true")
    _opt(run, "--ca-bundle", "PEM file of CAs to trust for the ACME server's HTTPS", type=_path)
    _dirs(run)
    _opt(run, "--listen", "HOST:PORT of the challenge, health and metrics server", "0.0.0.0:8080")
    _opt(run, "--key-type", "certificate key type", "ec256", choices=KEY_TYPES)
    _opt(run, "--profile", "ACME profile to ask for, e.g. shortlived")
    _opt(run, "--key-group", "group (name or GID) given privkey.pem and combined.pem on every write "
         "(default: the previous key's group)")
    _opt(run, "--key-mode", "permissions of privkey.pem and combined.pem, e.g. 0640 (default: the previous "
         "key's, 0600 for a first key; 0640 with --key-group)")
    _opt(run, "--eab-kid", "external account binding key id")
    _opt(run, "--eab-hmac-key", "external account binding HMAC key, base64url")
    _opt(run, "--no-ari", "ignore the CA's renewal information (ARI); renew by lifetime only", action="store_true")
    _opt(run, "--reload", "how to tell nginx about new certificates", "none", choices=ReloadSpec.KINDS)
    _opt(run, "--reload-target", "file: the generation file nginx's watcher polls; docker: container name or "
         "label=KEY=VALUE; signal: PID or PID file; command: a command line")
    _opt(run, "--self-check-via", "before asking the CA to validate, fetch the challenge through HOST:PORT "
         "(Host: the name) instead of http://NAME/", metavar="HOST:PORT")
    _opt(run, "--no-self-check", "ask the CA to validate without fetching the challenge through the front door first",
         action="store_true")
    _opt(run, "--tls-alpn-listen", "validate DNS names with TLS-ALPN-01 instead of HTTP-01, answering acme-tls/1 "
         "connections (nginx's stream module passes them on from 443) on HOST:PORT; port 80 may then be closed",
         metavar="HOST:PORT")
    _opt(run, "--reload-verify", "after reloading, check by TLS handshake that HOST:PORT serves the new certificate",
         metavar="HOST:PORT")
    fleet = run.add_argument_group("frontends on other nodes (Docker Swarm; docs/swarm.md)")
    _opt(fleet, "--fleet-frontends", "the name that resolves to every frontend (e.g. tasks.nginx); each is checked "
         "by TLS handshake on 443 (NAME:PORT for another) and fed by an `acmebox follow` on its node")
    _opt(fleet, "--fleet-secret-file", "the secret followers authenticate with (a Swarm secret)", type=_path)
    auth = run.add_argument_group("registry token service (enabled by --auth-htpasswd)")
    _opt(auth, "--auth-htpasswd", "htpasswd file with bcrypt entries of the users who may push", type=_path)
    _opt(auth, "--auth-key", "token signing key, created once (default: <state-dir>/token-signing.key)", type=_path)
    _opt(auth, "--auth-cert", "where to write the signing key's certificate, the registry's rootcertbundle "
         "(default: <state-dir>/token.crt)", type=_path)
    _opt(auth, "--auth-service", "the registry's auth.token.service", "registry")
    _opt(auth, "--auth-issuer", "the registry's auth.token.issuer", "acmebox")
    _opt(auth, "--auth-ttl", "token lifetime in seconds", "300", type=int)
    _opt(auth, "--auth-acl", 'TOML file of users and the repositories they may write: alice = ["alice/*"]; '
         "users it does not list may only pull", type=_path)
    _opt(auth, "--auth-trusted-proxy", "addresses, networks (CIDR) or host names of the reverse proxies whose "
         "X-Forwarded-For names the client, comma-separated", also=())
    catalog = run.add_argument_group("catalog index for the browse page (enabled by --catalog-registry)")
    _opt(catalog, "--catalog-registry", "the registry's own URL, read to build the index (http://registry:5000)")
    _opt(catalog, "--catalog-secret", "the bearer secret the registry's notifications carry")
    _opt(catalog, "--registry-storage", "the registry's storage root: its use on /metrics, a warning on /healthz "
         "before its disk is full", type=_path)
    _opt(run, "--once", "obtain or confirm the certificates, then exit", action="store_true")
    _opt(run, "--force-renew", "with --once: order new certificates even when valid ones exist "
         "(a running service: `acmebox renew --force`)", action="store_true")
    _opt(run, "--ignore-ledger", "with --force-renew: order even past the order ledger's limits "
         "(which forced runs otherwise keep)", action="store_true")
    _opt(run, "--max-concurrent-orders", "orders in flight at once (in --once and in the service)",
         str(MAX_CONCURRENT_ORDERS), type=int, metavar="N")

    status = sub.add_parser("status", help="the certificates and their renewal plans; exit 1 if any is not ok")
    _dirs(status)
    status.add_argument("--json", action="store_true", help="everything known, as JSON")
    _opt(status, "--registry-storage", "the registry's storage root: a line on its disk's use, exit 1 from "
         "97%% full", type=_path)
    renew = sub.add_parser("renew", help="ask the running service to check (or with --force, renew) now")
    renew.add_argument("name", nargs="?", help="any name of the certificate; default: all")
    renew.add_argument("--force", action="store_true", help="renew even when not due")
    renew.add_argument("--ignore-ledger", action="store_true",
                       help="with --force: order even past the order ledger's limits")
    renew.add_argument("--timeout", type=seconds, default=300, help="seconds to wait for the outcome [default: 300]")
    _dirs(renew)
    from acmebox import follow

    follow.add_parser(sub)
    revoke = sub.add_parser("revoke", help="revoke a certificate at its CA; the service then replaces it")
    revoke.add_argument("name", help="any name of the certificate")
    revoke.add_argument("--reason", type=int, default=0, choices=[0, 1, 3, 4, 5],
                        help="RFC 5280 reason code (0 unspecified, 1 keyCompromise, 4 superseded, ...) "
                             "[default: 0]")
    _opt(revoke, "--ca-bundle", "PEM file of CAs to trust for the ACME server's HTTPS", type=_path)
    _dirs(revoke)
    token_key = sub.add_parser("token-key", help="the registry token signing keys: `show` them, or `rotate` "
                               "to the pre-published next key (docs/deploying.md, \"Token signing key rotation\")")
    token_key.add_argument("action", choices=["show", "rotate"])
    _dirs(token_key)
    _opt(token_key, "--auth-key", "token signing key (default: <state-dir>/token-signing.key)", type=_path)
    _opt(token_key, "--auth-cert", "the registry's rootcertbundle (default: <state-dir>/token.crt)", type=_path)
    _opt(token_key, "--auth-service", "the registry's auth.token.service", "registry")
    _opt(token_key, "--auth-issuer", "the registry's auth.token.issuer", "acmebox")
    _opt(token_key, "--auth-ttl", "the service's token lifetime in seconds: the old key retires after it",
         "300", type=int)
    token_key.add_argument("--registry", metavar="URL", help="rotate: first check that the registry at URL (e.g. "
                           "http://registry:5000) accepts tokens of the next key; refuse (exit 1) if not")
    gc_cmd = sub.add_parser("gc", help="the registry's garbage collection, read-only meanwhile; reports bytes freed")
    _dirs(gc_cmd)
    _opt(gc_cmd, "--registry-storage", "the registry's storage root", type=_path)
    gc_cmd.add_argument("--registry-config", type=_path, help="the registry's config.yml (runs `docker-registry "
                        "garbage-collect` or `registry garbage-collect` with it)")
    gc_cmd.add_argument("--registry-command", help="the whole garbage-collect command line instead, e.g. `docker "
                        "compose run --rm --no-deps -T registry garbage-collect /etc/distribution/config.yml`")
    gc_cmd.add_argument("--delete-untagged", action="store_true", help="also remove manifests no tag points at")
    gc_cmd.add_argument("--drain", type=float, default=10.0, help="seconds between refusing writes and collecting, "
                        "for uploads in flight [default: 10]")
    gc_cmd.add_argument("--expect", type=float, default=300.0, help="seconds the run is announced for "
                        "(Retry-After) [default: 300]")
    gc_cmd.add_argument("--timeout", type=float, default=3600.0, help="seconds the collector may run before it is "
                        "stopped (the registry is read-only meanwhile) [default: 3600]")
    return parser


def seconds(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 86400:
        raise ValueError(raw)
    return value


def sources_from_args(args: argparse.Namespace) -> Sources:
    """The raw values `run` and `check` were given; no rule is applied here (Config.from_sources does).
    Every source adds certificates, none replaces another (compose always sets the registry's
    domain; a --cert for a second certificate must not drop it): the domain from the
    environment (ACMEBOX_DOMAIN, or DOCKER_REGISTRY_DOMAIN_NAME of the old stack), --domain,
    each --cert and each ;-separated group of ACMEBOX_CERTS. --config adds its own after these."""
    groups = [_split(_env("DOMAIN", "DOCKER_REGISTRY_DOMAIN_NAME")), args.domain or []]
    # a --cert given with no name in it (`--cert ,,,`) stays as typed, for the name rules to refuse
    groups += [_split(g) or [g] for g in args.cert or []]
    groups += [_split(g) for g in (_env("CERTS") or "").split(";")]
    proxies = args.auth_trusted_proxy
    return Sources(
        cert_groups=tuple(tuple(g) for g in groups),
        config_file=args.config,
        email=args.email,
        directory=args.directory,
        staging=args.staging,
        ca_bundle=args.ca_bundle,
        certs_dir=args.certs_dir,
        state_dir=args.state_dir,
        listen=args.listen,
        key_type=args.key_type,
        profile=args.profile,
        key_group=args.key_group,
        key_mode=args.key_mode,
        eab_kid=args.eab_kid,
        eab_hmac_key=args.eab_hmac_key,
        ari=not args.no_ari,
        reload=args.reload,
        reload_target=args.reload_target,
        reload_verify=args.reload_verify,
        self_check=not args.no_self_check,
        self_check_via=args.self_check_via,
        tls_alpn_listen=args.tls_alpn_listen,
        auth_htpasswd=args.auth_htpasswd,
        auth_key=args.auth_key,
        auth_cert=args.auth_cert,
        auth_service=args.auth_service,
        auth_issuer=args.auth_issuer,
        auth_ttl=args.auth_ttl,
        auth_acl=args.auth_acl,
        auth_trusted_proxies=None if proxies is None else tuple(_split(proxies)),
        catalog_registry=getattr(args, "catalog_registry", None),
        catalog_secret=getattr(args, "catalog_secret", None),
        registry_storage=getattr(args, "registry_storage", None),
        max_concurrent_orders=args.max_concurrent_orders,
        fleet_frontends=args.fleet_frontends,
        fleet_secret_file=args.fleet_secret_file,
        once=args.once,
        force_renew=args.force_renew,
        ignore_ledger=args.ignore_ledger,
        compose_domain=os.environ.get("DOCKER_REGISTRY_DOMAIN_NAME"),
        probe_listen=args.command != "check",  # check runs beside the service, whose port this is
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return Config.from_sources(sources_from_args(args))


def _token_key(args: argparse.Namespace) -> int:
    settings = TokenKeySettings.build(args.state_dir, key=args.auth_key, cert=args.auth_cert, issuer=args.auth_issuer,
                                      service=args.auth_service, ttl=args.auth_ttl, registry=args.registry)
    from acmebox.registry import signing  # imported late: `--help` stays fast

    keyring = signing.Keyring(settings.key, settings.cert, settings.issuer)
    if args.action == "show":
        return signing.show_command(keyring)
    return signing.rotate_command(keyring, settings.ttl, settings.service, settings.registry)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("acme", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


async def _run_until_signalled(config: Config, once: bool, force: bool, ignore_ledger: bool = False) -> int:
    from acmebox.service import Service  # imported late: `--help` stays fast

    task = asyncio.ensure_future(Service(config).run(once=once, force=force, ignore_ledger=ignore_ledger))
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
    try:
        for dest in BOOL_FLAGS & set(vars(args)):
            value = getattr(args, dest)
            if isinstance(value, str):
                setattr(args, dest, strict_bool(value, f"ACMEBOX_{dest.upper()}"))
    except ConfigError as e:
        print(f"acmebox: error: {e}", file=sys.stderr)
        return e.exit_code
    _setup_logging(args.log_level)
    try:
        if args.command == "run":
            config = config_from_args(args)
            return asyncio.run(_run_until_signalled(config, args.once, args.force_renew, args.ignore_ledger))
        if args.command == "check":
            from acmebox import check

            config = config_from_args(args)
            return check.report(asyncio.run(check.run(config)), args.json)
        if args.command == "token-key":
            return _token_key(args)
        if args.command == "follow":
            from acmebox import follow

            return asyncio.run(follow.main(follow.spec_from_args(args)))
        from acmebox import commands

        if args.command == "status":
            storage = None
            if args.registry_storage is not None:
                from acmebox.registry.maintenance import judge_now

                storage = judge_now(args.registry_storage)
            return commands.status(args.certs_dir, args.state_dir, args.json, storage)
        name = canonical_name(args.name) if getattr(args, "name", None) else None  # as `run` wrote it
        if args.command == "renew":
            if args.ignore_ledger and not args.force:
                print("acmebox: error: --ignore-ledger needs --force", file=sys.stderr)
                return 2
            return commands.renew(args.certs_dir, args.state_dir, name, args.force, args.timeout, args.ignore_ledger)
        if args.command == "gc":
            from acmebox.operations import GcSettings
            from acmebox.service import collect_garbage

            return collect_garbage(GcSettings.build(
                config=args.registry_config, command=args.registry_command, storage=args.registry_storage,
                certs_dir=args.certs_dir, delete_untagged=args.delete_untagged, drain=args.drain, expect=args.expect,
                timeout=args.timeout))
        if args.command == "revoke":
            assert name is not None
            return asyncio.run(commands.revoke(args.certs_dir, args.state_dir, name, args.reason, args.ca_bundle))
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
