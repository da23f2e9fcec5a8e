"""The private-network guard: DID documents are untrusted, so the URLs in them are too.

A DID document may name any host as its PDS. Without this guard, anyone could make the
mirror send requests into the network it runs in (loopback, a cloud metadata address,
the office LAN). URLs from DID documents must use http(s) and resolve only to global
addresses, unless MIRROR_ALLOW_PRIVATE_NETWORK=1 (local development and tests).

The check runs on the addresses DNS gives at the time of the check; a host that answers
differently a moment later (DNS rebinding) is not caught, which docs/backfill.md notes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class RefusedAddressError(Exception):
    """A URL from a DID document points where the mirror must not send requests."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: str) -> bool:
    """Whether an IP address is globally routable; an IPv6 address that carries an IPv4
    one (mapped, 6to4, NAT64) is judged by the IPv4 address it leads to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


class AddressGuard:
    """Refuses URLs that are not http(s), and hosts that resolve to non-global addresses."""

    def __init__(self, allow_private_network: bool) -> None:
        self.allow_private_network = allow_private_network

    async def check(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RefusedAddressError(f"{url!r} is not an http(s) URL")
        if self.allow_private_network:
            return
        for address in await self._addresses(parts.hostname):
            if not is_public(address):
                raise RefusedAddressError(
                    f"{url} resolves to {address}, a private or loopback address; "
                    "set MIRROR_ALLOW_PRIVATE_NETWORK=1 to allow it"
                )

    @staticmethod
    async def _addresses(host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except socket.gaierror as error:
            raise RefusedAddressError(f"{host} does not resolve: {error}") from None
        return [str(info[4][0]) for info in infos]
