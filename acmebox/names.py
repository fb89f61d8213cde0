"""The one canonical form of a DNS name, used at every entry point (flags, environment, TOML,
compose/start-registry.sh through `python -m acmebox.names`) and as the live/<name> directory.

Canonical: lower case, no trailing dot, internationalised labels as IDNA 2008 A-labels after
UTS #46 mapping (non-transitional: `faß.de` is `xn--fa-hia.de`, not IDNA 2003's `fass.de`).
What IDNA 2008 refuses is refused, and so is anything the mapping would silently drop
(zero-width space, soft hyphen): the certificate must be for the name the user meant.
Kept apart from config.py so that the start script can run it with nothing but `idna`.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import unicodedata

import idna

from acmebox.errors import ConfigError

MIN_IDNA = (3, 7)  # as pyproject.toml requires
MAX_NAMES = 100  # per certificate: Let's Encrypt's limit on names in one order
_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _invisible(name: str) -> str | None:
    """The first character UTS #46 maps to nothing (so the name would change unseen), or None."""
    for ch in name:
        if ord(ch) > 0x7F and idna.uts46_remap(ch, std3_rules=False, transitional=False) == "":
            return ch
    return None


def canonical_name(raw: str) -> str:
    """`raw` as a lower-case ASCII DNS name HTTP-01 can validate (RFC 5890 A-labels, UTS #46
    mapping, RFC 8555 section 7.1.4: no wildcard, no IP address), or a ConfigError saying why.

    >>> canonical_name("Registry.Example.COM.")
    'registry.example.com'
    >>> canonical_name("faß.de")
    'xn--fa-hia.de'
    """
    name = raw.strip()
    if name.endswith((".", "\u3002", "\uff0e", "\uff61")):  # one trailing dot: the root, in any script
        name = name[:-1]
    if not name:
        raise ConfigError("empty domain name")
    if "*" in name:
        raise ConfigError(f"wildcard domain {raw!r}: HTTP-01 cannot validate wildcards; list each name instead")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise ConfigError(f"{raw!r} is an IP address; acmebox issues certificates for DNS names only")
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
    """`python -m acmebox.names NAME...`: each canonical form on its own line, or one error
    line and exit code 2 (compose/start-registry.sh uses this). Exit code 1 when this
    python's `idna` is older than acmebox requires: the script then asks the image instead."""
    if tuple(int(p) for p in idna.__version__.split(".")[:2] if p.isdigit()) < MIN_IDNA:
        print(f"acmebox: idna {idna.__version__} is older than {'.'.join(map(str, MIN_IDNA))}", file=sys.stderr)
        return 1
    try:
        for name in canonical_names(argv):
            print(name)
    except ConfigError as e:
        print(f"acmebox: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
