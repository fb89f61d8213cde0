"""The one canonical form of a certificate name, used at every entry point (flags, environment,
TOML, compose/start-registry.sh through `python -m acmebox.names`) and as the live/<name>
directory.

A DNS name: lower case, no trailing dot, internationalised labels as IDNA 2008 A-labels after
UTS #46 mapping (non-transitional: `faß.de` is `xn--fa-hia.de`, not IDNA 2003's `fass.de`).
What IDNA 2008 refuses is refused, and so is anything the mapping would silently drop
(zero-width space, soft hyphen): the certificate must be for the name the user meant.

An IP address (RFC 8738): IPv4 in dotted decimal without leading zeros, IPv6 as RFC 5952
writes it (lower case, `::` compression), brackets dropped; no zone (`%eth0`), no IPv4-mapped
IPv6. A public CA validates only publicly routable addresses: `check_addresses` refuses
private, loopback, link-local, shared, documentation and other reserved ranges when the
directory is a public CA's (a test or in-house CA, Pebble for one, may validate them).
Kept apart from config.py so that the start script can run it with nothing but `idna`.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import unicodedata
import urllib.parse

import idna

from acmebox.errors import ConfigError

MIN_IDNA = (3, 7)  # as pyproject.toml requires
MAX_NAMES = 100  # per certificate: Let's Encrypt's limit on names in one order
_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# ACME CAs whose certificates browsers trust: they issue for public addresses only.
PUBLIC_CA_HOSTS = frozenset({
    "acme-v02.api.letsencrypt.org", "acme-staging-v02.api.letsencrypt.org", "acme.zerossl.com",
    "dv.acme-v02.api.pki.goog", "dv.acme-v02.test-api.pki.goog", "api.buypass.com", "api.test4.buypass.no",
    "acme.ssl.com",
})


def _invisible(name: str) -> str | None:
    """The first character UTS #46 maps to nothing (so the name would change unseen), or None."""
    for ch in name:
        if ord(ch) > 0x7F and idna.uts46_remap(ch, std3_rules=False, transitional=False) == "":
            return ch
    return None


def canonical_address(raw: str) -> str | None:
    """The canonical text of the IP address `raw` spells (brackets allowed), None when it
    spells none, or a ConfigError for an address acmebox cannot certify as written.

    >>> canonical_address("[2001:DB8:0:0::1]")
    '2001:db8::1'
    """
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text and ":" in text:
        raise ConfigError(f"{raw!r}: an IPv6 address with a zone is local to one host; give the address alone")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        if re.fullmatch(r"[0-9]+(\.[0-9]+){3}", text):  # 010.0.0.1: octal to some parsers, decimal to others
            raise ConfigError(f"{raw!r} is not an IPv4 address as RFC 8738 writes it: dotted decimal "
                              "without leading zeros") from None
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ConfigError(f"{raw!r} is an IPv4-mapped IPv6 address; give the IPv4 address {addr.ipv4_mapped}")
    return str(addr)


def is_address(name: str) -> bool:
    """True when the canonical name `name` is an IP address."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def public_ca(directory: str) -> bool:
    """True when `directory` is a publicly trusted CA's (Let's Encrypt's, production or staging,
    and a few others): those validate only public addresses."""
    return (urllib.parse.urlsplit(directory).hostname or "").lower() in PUBLIC_CA_HOSTS


def check_addresses(names: list[str], directory: str | None) -> None:
    """ConfigError naming the first address a public CA will not certify (`directory` None:
    the caller targets a public CA)."""
    if directory is not None and not public_ca(directory):
        return
    for name in names:
        if is_address(name) and not ipaddress.ip_address(name).is_global:
            raise ConfigError(f"{name!r} is an IP address in a private or reserved range; a public CA "
                              "issues only for publicly routable addresses (use a DNS name, or an in-house "
                              "CA with --directory)")


def canonical_name(raw: str) -> str:
    """`raw` as a lower-case ASCII DNS name HTTP-01 can validate (RFC 5890 A-labels, UTS #46
    mapping, RFC 8555 section 7.1.4: no wildcard), or as a canonical IP address (RFC 8738),
    or a ConfigError saying why not.

    >>> canonical_name("Registry.Example.COM.")
    'registry.example.com'
    >>> canonical_name("faß.de")
    'xn--fa-hia.de'
    >>> canonical_name("[::1]")
    '::1'
    """
    address = canonical_address(raw)
    if address is not None:
        return address
    name = raw.strip()
    if name.endswith((".", "\u3002", "\uff0e", "\uff61")):  # one trailing dot: the root, in any script
        name = name[:-1]
    if not name:
        raise ConfigError("empty domain name")
    if "*" in name:
        raise ConfigError(f"wildcard domain {raw!r}: HTTP-01 cannot validate wildcards; list each name instead")
    try:
        hidden = _invisible(name)
        if hidden is not None:
            what = unicodedata.name(hidden, "an invisible character").lower()
            raise ConfigError(f"domain name {raw!r} contains U+{ord(hidden):04X} ({what}); remove it")
        ascii_name = idna.encode(name, uts46=True, std3_rules=True, transitional=False).decode("ascii")
        # An A-label must be the encoding of a valid U-label, and the only one: decode and
        # encode again, so `xn--` labels typed by hand are held to the same rules.
        if "xn--" in ascii_name and idna.encode(idna.decode(ascii_name)).decode("ascii") != ascii_name:
            raise idna.IDNAError("an A-label is not in its canonical form")
    except (UnicodeError, ValueError) as e:  # idna's errors are UnicodeErrors
        raise ConfigError(f"malformed domain name {raw!r}: {e}") from None
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise ConfigError(f"malformed domain name {raw!r}: a single label; a public CA issues for full names only")
    if len(ascii_name) > 253 or not all(_LDH_LABEL.match(label) for label in labels):
        raise ConfigError(f"malformed domain name {raw!r}")
    if labels[-1].isdigit():
        raise ConfigError(f"malformed domain name {raw!r}: the top-level label is numeric")
    return ascii_name


def canonical_names(raw_names: list[str]) -> list[str]:
    """The names of one certificate: each canonical, no duplicates, at most MAX_NAMES."""
    names: list[str] = []
    for raw in raw_names:
        name = canonical_name(raw)
        if name in names:
            raise ConfigError(f"duplicate domain name {name!r}")
        names.append(name)
    if len(names) > MAX_NAMES:
        raise ConfigError(f"{len(names)} names in one certificate; at most {MAX_NAMES} are allowed")
    return names


def main(argv: list[str]) -> int:
    """`python -m acmebox.names [--public-ca] NAME...`: each canonical form on its own line, or
    one error line and exit code 2 (compose/start-registry.sh uses this; `--public-ca` refuses
    addresses a public CA does not certify). Exit code 1 when this python's `idna` is older than
    acmebox requires: the script then asks the image instead."""
    if tuple(int(p) for p in idna.__version__.split(".")[:2] if p.isdigit()) < MIN_IDNA:
        print(f"acmebox: idna {idna.__version__} is older than {'.'.join(map(str, MIN_IDNA))}", file=sys.stderr)
        return 1
    public = argv[:1] == ["--public-ca"]
    try:
        names = canonical_names(argv[1:] if public else argv)
        if public:
            check_addresses(names, None)
        for name in names:
            print(name)
    except ConfigError as e:
        print(f"acmebox: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
