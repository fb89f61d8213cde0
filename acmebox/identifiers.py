"""What each certificate name is at the CA: a DNS name (RFC 8555 `dns` identifier) or an IP
address (RFC 8738 `ip` identifier), and what follows from that: the ACME identifier, the
subjectAltName entries (for a CSR or a placeholder), how an address is written in a URL or Host
header. Names arrive here canonical (acmebox.names); this module decides nothing about their
validity, nor which profile an address gets (issuance.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from acme import messages

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address(name: str) -> IPAddress | None:
    """The address `name` spells, or None for a DNS name."""
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def acme_identifier(name: str) -> messages.Identifier:
    typ = messages.IDENTIFIER_IP if address(name) is not None else messages.IDENTIFIER_FQDN
    return messages.Identifier(typ=typ, value=name)


def csr_entries(names: Iterable[str]) -> tuple[list[str], list[IPAddress]]:
    """(DNS names, addresses), each in the given order, for acme.crypto_util.make_csr."""
    dns, ips = [], []
    for n in names:
        ip = address(n)
        if ip is None:
            dns.append(n)
        else:
            ips.append(ip)
    return dns, ips


def url_host(name: str) -> str:
    """`name` as the host part of a URL or a Host header: IPv6 in brackets (RFC 3986)."""
    ip = address(name)
    return f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else name
