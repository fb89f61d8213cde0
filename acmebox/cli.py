"""Command line: flags (each also read from an ACMEBOX_* variable), logging, exit codes.

Exit codes: 0 success, 1 the CA refused or failed (its problem type and detail are printed),
2 bad input (one line saying what is wrong). No traceback reaches the user. Every flag and file
is checked before anything is written: a refusal leaves no directory behind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import socket
import ssl
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from acmebox import __version__
from acmebox.config import (
    LE_PRODUCTION,
    LE_STAGING,
    MAX_CONCURRENT_ORDERS,
    PROFILE_NAME,
    CertSpec,
    Config,
    HostPort,
    TokenAuth,
    certs_from_toml,
    normalize_email,
    parse_key_group,
    parse_key_mode,
)
from acmebox.errors import AcmeboxError, ConfigError
from acmebox.keys import KEY_TYPES
from acmebox.names import canonical_name
from acmebox.reload import KINDS, ReloadTarget

if TYPE_CHECKING:
    from acmebox.fleet import FleetSpec

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


def _dirs(parser: argparse.ArgumentParser) -> None:
    _opt(
        parser, "--certs-dir", "the shared certs volume (live/<name>/fullchain.pem ...)", "/etc/letsencrypt", type=Path
    )
    _opt(parser, "--state-dir", "account key and state", "/var/lib/acmebox", type=Path)
    # Also accepted after the command (`acmebox run --log-level debug`); SUPPRESS keeps the
    # value given before the command when it is not repeated here.
    parser.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, type=str.lower,
                        help="log verbosity, also accepted before the command "
                             "[ACMEBOX_LOG_LEVEL; default: info]")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="acmebox", description="ACME sidecar for an nginx-fronted Docker registry.")
    parser.add_argument("--version", action="version", version=f"acmebox {__version__}")
    _opt(parser, "--log-level", "log verbosity", "info", choices=LOG_LEVELS, type=str.lower)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", aliases=["check"], help="obtain certificates and keep them fresh; `check` "
                         "takes the same flags and only checks, orders nothing")  # fmt: skip
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
    _opt(run, "--key-group", "group (name or GID) given privkey.pem and combined.pem on every write "
         "(default: the previous key's group)")  # fmt: skip
    _opt(run, "--key-mode", "permissions of privkey.pem and combined.pem, e.g. 0640 (default: the previous "
         "key's, 0600 for a first key; 0640 with --key-group)")  # fmt: skip
    _opt(run, "--eab-kid", "external account binding key id")
    _opt(run, "--eab-hmac-key", "external account binding HMAC key, base64url")
    _opt(run, "--no-ari", "ignore the CA's renewal information (ARI); renew by lifetime only", action="store_true")
    _opt(run, "--reload", "how to tell nginx about new certificates", "none", choices=KINDS)
    _opt(run, "--reload-target", "file: the generation file nginx's watcher polls; docker: container name or "
         "label=KEY=VALUE; signal: PID or PID file; command: a command line")  # fmt: skip
    _opt(run, "--self-check-via", "before asking the CA to validate, fetch the challenge through HOST:PORT "
         "(Host: the name) instead of http://NAME/", metavar="HOST:PORT")
    _opt(run, "--no-self-check", "ask the CA to validate without fetching the challenge through the front door first",
         action="store_true")
    _opt(run, "--reload-verify", "after reloading, check by TLS handshake that HOST:PORT serves the new certificate",
         metavar="HOST:PORT")  # fmt: skip
    fleet = run.add_argument_group("frontends on other nodes (Docker Swarm; README \"Swarm\")")
    _opt(fleet, "--fleet-frontends", "the name that resolves to every frontend (e.g. tasks.nginx); each is checked "
         "by TLS handshake on 443 (NAME:PORT for another) and fed by an `acmebox follow` on its node")  # fmt: skip
    _opt(fleet, "--fleet-secret-file", "the secret followers authenticate with (a Swarm secret)", type=Path)
    auth = run.add_argument_group("registry token service (enabled by --auth-htpasswd)")
    _opt(auth, "--auth-htpasswd", "htpasswd file with bcrypt entries of the users who may push", type=Path)
    _opt(auth, "--auth-key", "token signing key, created once (default: <state-dir>/token-signing.key)", type=Path)
    _opt(auth, "--auth-cert", "where to write the signing key's certificate, the registry's rootcertbundle "
         "(default: <state-dir>/token.crt)", type=Path)  # fmt: skip
    _opt(auth, "--auth-service", "the registry's auth.token.service", "registry")
    _opt(auth, "--auth-issuer", "the registry's auth.token.issuer", "acmebox")
    _opt(auth, "--auth-ttl", "token lifetime in seconds", "300", type=int)
    _opt(auth, "--auth-acl", 'TOML file of users and the repositories they may write: alice = ["alice/*"]; '
         "users it does not list may only pull", type=Path)  # fmt: skip
    _opt(auth, "--auth-trusted-proxy", "addresses, networks (CIDR) or host names of the reverse proxies whose "
         "X-Forwarded-For names the client, comma-separated", also=())  # fmt: skip
    _opt(run, "--once", "obtain or confirm the certificates, then exit", action="store_true")
    _opt(run, "--force-renew", "with --once: order new certificates even when valid ones exist "
         "(a running service: `acmebox renew --force`)", action="store_true")  # fmt: skip
    _opt(run, "--max-concurrent-orders", "orders in flight at once (in --once and in the service)",
         str(MAX_CONCURRENT_ORDERS), type=int, metavar="N")  # fmt: skip

    status = sub.add_parser("status", help="the certificates and their renewal plans; exit 1 if any is not ok")
    _dirs(status)
    status.add_argument("--json", action="store_true", help="everything known, as JSON")
    renew = sub.add_parser("renew", help="ask the running service to check (or with --force, renew) now")
    renew.add_argument("name", nargs="?", help="any name of the certificate; default: all")
    renew.add_argument("--force", action="store_true", help="renew even when not due")
    renew.add_argument("--timeout", type=seconds, default=300, help="seconds to wait for the outcome [default: 300]")
    _dirs(renew)
    from acmebox import follow

    follow.add_parser(sub)
    revoke = sub.add_parser("revoke", help="revoke a certificate at its CA; the service then replaces it")
    revoke.add_argument("name", help="any name of the certificate")
    revoke.add_argument("--reason", type=int, default=0, choices=[0, 1, 3, 4, 5],
                        help="RFC 5280 reason code (0 unspecified, 1 keyCompromise, 4 superseded, ...) "
                             "[default: 0]")  # fmt: skip
    _opt(revoke, "--ca-bundle", "PEM file of CAs to trust for the ACME server's HTTPS", type=Path)
    _dirs(revoke)
    return parser


def seconds(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 86400:
        raise ValueError(raw)
    return value


def check_profile(profile: str | None, what: str = "--profile") -> None:
    """An empty profile means the CA's default, as before."""
    if profile and not PROFILE_NAME.match(profile):
        raise ConfigError(f"bad {what} {profile[:80]!r}: want a profile name such as shortlived")


def check_directory_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        scheme, host = "", None
    if scheme not in ("https", "http") or not host or any(c.isspace() for c in url):
        raise ConfigError(f"bad directory URL {url[:200]!r}: want https://HOST/...")


def check_listen(listen: HostPort) -> None:
    """Refuse port 0 and addresses this host cannot bind, before anything is written (the real
    bind happens later, after the certs and state directories are prepared)."""
    if listen.port == 0:
        raise ConfigError(f"bad listen address {str(listen)!r}: port 0 picks a random port the CA cannot find")
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"bad listen address {str(listen)!r}: {getattr(e, 'strerror', None) or e}") from None
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as e:
        raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}") from None


def check_dir(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is not usable: not a directory")


def check_ca_bundle(path: Path | None) -> None:
    if path is None or not path.is_file():
        return  # Config says "does not exist"
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"CA bundle {path} holds no usable PEM certificate ({reason})") from None


def config_from_args(args: argparse.Namespace) -> Config:
    if args.directory and args.staging:
        raise ConfigError("--staging and --directory are exclusive")
    if args.force_renew and not args.once:
        raise ConfigError("--force-renew needs --once; to renew through a running service use `acmebox renew --force`")
    directory = args.directory or (LE_STAGING if args.staging else LE_PRODUCTION)
    check_directory_url(directory)
    check_profile(args.profile)
    check_dir(args.certs_dir, "certs dir")
    check_dir(args.state_dir, "state dir")
    check_ca_bundle(args.ca_bundle)
    email = args.email
    specs = _certificates(args)
    if args.config is not None:
        file_specs, file_email = certs_from_toml(args.config, args.key_type, args.profile)
        specs += file_specs
        email = email or file_email
    specs = _merged(specs)
    _warn_if_not_canonical(specs[0].names)
    key_group = parse_key_group(args.key_group) if args.key_group else None
    key_mode = parse_key_mode(args.key_mode) if args.key_mode else (0o640 if key_group is not None else None)
    config = Config(
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
        self_check=not args.no_self_check,
        self_check_via=HostPort.parse(args.self_check_via, "--self-check-via address") if args.self_check_via else None,
        key_mode=key_mode,
        key_group=key_group,
        max_concurrent_orders=args.max_concurrent_orders,
        fleet=_fleet(args),
    )
    if args.command != "check":  # check runs beside the service, whose port this is
        check_listen(config.listen)
    return config


def _fleet(args: argparse.Namespace) -> FleetSpec | None:
    from acmebox.fleet import FleetSpec  # imported late: `--help` stays fast

    return FleetSpec.parse(args.fleet_frontends, args.fleet_secret_file)


def _certificates(args: argparse.Namespace) -> list[CertSpec]:
    """Every source adds certificates, none replaces another (compose always sets the registry's
    domain; a --cert for a second certificate must not drop it): the domain from the
    environment (ACMEBOX_DOMAIN, or DOCKER_REGISTRY_DOMAIN_NAME of the old stack), --domain,
    each --cert and each ;-separated group of ACMEBOX_CERTS. --config adds its own after these."""
    groups = [_split(_env("DOMAIN", "DOCKER_REGISTRY_DOMAIN_NAME")), args.domain or []]
    groups += [_split(g) for g in [*(args.cert or []), *(_env("CERTS") or "").split(";")]]
    specs = [CertSpec.build(g, args.key_type, args.profile) for g in groups if g]
    if not specs and args.config is None:
        CertSpec.build([])  # raises the "no domain given" error
    return specs


def _merged(specs: list[CertSpec]) -> list[CertSpec]:
    """One certificate per set of names, whichever sources named it; a name in two different
    certificates stays an error (Config says which)."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for spec in specs:
        key = tuple(sorted(spec.names))
        if key not in seen:
            seen.add(key)
            out.append(spec)
    if not out:
        raise ConfigError("no certificate configured: --config names none, and no --domain or --cert is given")
    return out


def _warn_if_not_canonical(names: tuple[str, ...]) -> None:
    """The compose file hands DOCKER_REGISTRY_DOMAIN_NAME to nginx's template as typed; if that
    is not the canonical form, nginx looks for a live/ directory acmebox never writes."""
    typed = (os.environ.get("DOCKER_REGISTRY_DOMAIN_NAME") or "").strip()
    try:
        same = bool(typed) and canonical_name(typed) == names[0]
    except ConfigError:
        return
    if same and typed != names[0]:
        log.warning("DOCKER_REGISTRY_DOMAIN_NAME=%r: the certificate is written to live/%s/; nginx's template "
                    "must use that form (compose/start-registry.sh writes it to .env)", typed, names[0])  # fmt: skip


def _token_auth(args: argparse.Namespace) -> TokenAuth | None:
    if args.auth_htpasswd is None:
        for flag in ("auth_acl", "auth_key", "auth_cert", "auth_trusted_proxy"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --auth-htpasswd")
        return None
    if args.auth_ttl < 30 or args.auth_ttl > 86400:
        raise ConfigError("--auth-ttl must be between 30 and 86400 seconds")
    for flag in ("auth_service", "auth_issuer"):
        value = getattr(args, flag)
        if not value or not value.isprintable() or value != value.strip() or len(value) > 255:
            raise ConfigError(f"bad --{flag.replace('_', '-')} {value!r}: want a non-empty name without spaces at "
                              "its ends, as in the registry's auth.token settings")  # fmt: skip
    from acmebox import registry_token  # imported late: `--help` stays fast

    # Read here, not only at startup, so a bad file is refused before anything is written.
    registry_token.Htpasswd(args.auth_htpasswd)
    registry_token.load_acl(args.auth_acl)
    if args.auth_key is not None:
        registry_token.check_signing_key(args.auth_key)
    proxies = _split(args.auth_trusted_proxy)
    for entry in proxies:
        registry_token.check_proxy_entry(entry)
    return TokenAuth(
        htpasswd=args.auth_htpasswd,
        key=args.auth_key or args.state_dir / "token-signing.key",
        cert=args.auth_cert or args.state_dir / "token.crt",
        service=args.auth_service,
        issuer=args.auth_issuer,
        ttl=args.auth_ttl,
        acl=args.auth_acl,
        trusted_proxies=tuple(proxies),
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
            return asyncio.run(_run_until_signalled(config, args.once, args.force_renew))
        if args.command == "check":
            from acmebox import check

            config = config_from_args(args)
            return check.report(asyncio.run(check.run(config)), args.json)
        if args.command == "follow":
            from acmebox import follow

            return asyncio.run(follow.main(follow.spec_from_args(args)))
        from acmebox import commands

        if args.command == "status":
            return commands.status(args.certs_dir, args.state_dir, args.json)
        name = canonical_name(args.name) if getattr(args, "name", None) else None  # as `run` wrote it
        if args.command == "renew":
            return commands.renew(args.certs_dir, args.state_dir, name, args.force, args.timeout)
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
