"""Whose address a login is counted against: the trusted reverse proxies whose X-Forwarded-For is
believed, and the throttling key of a client address (IPv6 per /64)."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import socket
import time
from collections.abc import Iterable

from acmebox.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def check_proxy_entry(entry: str) -> None:
    """A trusted proxy: an IP address, a network in CIDR form, or a host name."""
    try:
        ipaddress.ip_network(entry, strict=False)
        return
    except ValueError:
        pass
    if not _HOSTNAME.match(entry):
        raise ConfigError(f"bad --auth-trusted-proxy entry {entry[:80]!r}: want an address, a network or a host name")


class TrustedProxies:
    """The reverse proxies whose X-Forwarded-For is believed: IP addresses, networks (CIDR) or
    host names (looked up again at most every RESOLVE_EVERY seconds: in compose, nginx's address
    is only known once it runs)."""

    RESOLVE_EVERY = 30.0

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: list[IPNetwork] = []
        self.names: list[str] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.append(entry)
        self._resolved: set[IPAddress] = set()
        self._resolved_at = -math.inf

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    async def _refresh(self) -> None:
        now = time.monotonic()
        if not self.names or now - self._resolved_at < self.RESOLVE_EVERY:
            return
        self._resolved_at = now
        found: set[IPAddress] = set()
        loop = asyncio.get_running_loop()
        for name in self.names:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError:
                continue
            found.update(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
        self._resolved = found

    async def trusts(self, addr: IPAddress) -> bool:
        if any(addr in net for net in self.networks):
            return True
        await self._refresh()
        return addr in self._resolved

    async def client(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
        X-Forwarded-For entry that is not itself a trusted proxy (entries further left are
        whatever the client chose to send)."""
        try:
            addr = ipaddress.ip_address(peer or "")
        except ValueError:
            return peer or "unknown"
        hops = [h.strip() for value in forwarded_for for h in value.split(",")]
        while await self.trusts(addr) and hops:
            try:
                addr = ipaddress.ip_address(hops.pop())
            except ValueError:
                break
        return str(addr)


def throttle_key(client: str) -> str:
    """IPv6 clients are counted per /64: one host usually has a whole /64 to pick from."""
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)
