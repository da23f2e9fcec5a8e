"""The private-network guard: DID documents are untrusted, so the URLs in them are too.

A DID document may name any host as its PDS, and a handle any host at all. Without this
guard, anyone could make the mirror send requests into the network it runs in (loopback,
a cloud metadata address, the office LAN). URLs must use http(s), and every connection goes
only to addresses that are global, unless MIRROR_ALLOW_PRIVATE_NETWORK=1 (local development
and tests) or the origin is the operator's own (PLC_URL, RELAY_URL, HANDLE_RESOLVER_URL).

The check is made where the connection is opened (docs/backfill.md, "Identity, and the
private-network guard"): the network backend under httpx resolves the host itself, checks
every address, and connects to exactly those addresses. Checking the URL beforehand and
letting httpx resolve the name again would connect to whatever DNS answers the second time
(DNS rebinding), on every retry.

The names are resolved by `Resolver`: the name servers of DNS_SERVERS through dnspython, or
the system's resolver when none are configured.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdata
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import httpcore
import httpx

from mirror_assets.config import Settings, ip_literal, name_server_address


class RefusedAddressError(Exception):
    """A URL points where the mirror must not send requests."""


class LookupFailedError(Exception):
    """A name has no address, or DNS gave no answer in time."""


class NoSuchHostError(LookupFailedError):
    """DNS answered that the name has no address: asking again will not change that soon,
    so a request to it is not retried."""


# getaddrinfo's answers that the name has no address (not "try again later").
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOOPBACK = ["127.0.0.1", "::1"]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DNS_TRY_SECONDS = 2.0  # one name server's share of a lookup, so a dead one leaves time


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


def _unique(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


def name_server(entry: str) -> dns.nameserver.Do53Nameserver:
    """One DNS_SERVERS entry, `address[:port]` (config.py reads it)."""
    return dns.nameserver.Do53Nameserver(*name_server_address(entry))


class Resolver:
    """Addresses and TXT records of names, with every lookup bounded in time.

    With `servers` (DNS_SERVERS), A and AAAA come from them; without, from the system's
    resolver (`getaddrinfo`, so /etc/hosts and `localhost` work as everywhere else). TXT
    records come from `servers`, or from the name servers of the system's resolv.conf.
    """

    def __init__(self, servers: Sequence[str] = (), *, timeout_seconds: float = 5.0) -> None:
        self._timeout = timeout_seconds
        name_servers = [name_server(entry) for entry in servers]
        self._configured = self._dns(name_servers) if name_servers else None
        self._system: dns.asyncresolver.Resolver | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Resolver:
        return cls(settings.dns_servers)

    def _dns(
        self, servers: Sequence[str | dns.nameserver.Nameserver]
    ) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(servers)
        resolver.lifetime = self._timeout
        resolver.timeout = min(_DNS_TRY_SECONDS, self._timeout)
        return resolver

    async def addresses(self, host: str) -> list[str]:
        """The IP addresses of `host`, IPv4 first; an IP address is its own answer.

        Raises LookupFailedError when there is none, or no answer in time.
        """
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        if self._configured is None:
            return await self._system_addresses(host)
        # The configured servers need not know `localhost`, which always means this machine.
        if host == "localhost" or host.endswith(".localhost"):
            return list(_LOOPBACK)
        ipv4, ipv6 = await asyncio.gather(
            self._records(self._configured, host, "A"),
            self._records(self._configured, host, "AAAA"),
        )
        addresses = _unique(
            rdata.address
            for rdata in [*ipv4, *ipv6]
            if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
        )
        if not addresses:
            raise NoSuchHostError(f"{host} has no address")
        return addresses

    async def txt(self, name: str) -> list[str]:
        """The TXT records of `name`, each one's strings joined; [] when it has none.

        Raises LookupFailedError when DNS gives no answer in time.
        """
        resolver = self._configured or self._system_resolver()
        return [
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in await self._records(resolver, name, "TXT")
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
        ]

    def _system_resolver(self) -> dns.asyncresolver.Resolver:
        if self._system is None:
            try:
                system = dns.asyncresolver.Resolver()  # reads /etc/resolv.conf
            except (dns.exception.DNSException, OSError) as error:
                raise LookupFailedError(f"no system name servers: {error}") from None
            self._system = self._dns(system.nameservers)
        return self._system

    async def _records(
        self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
    ) -> list[dns.rdata.Rdata]:
        """A name's records of one type: [] if the name or the type does not exist."""
        try:
            answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as error:  # timeouts, SERVFAIL, bad answers
            raise LookupFailedError(f"{name} {rdtype}: {error}") from None
        return list(answer)

    async def _system_addresses(self, host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            if error.errno in _NO_SUCH_NAME:
                raise NoSuchHostError(f"{host} does not resolve: {error}") from None
            raise LookupFailedError(f"{host} does not resolve: {error}") from None
        except (OSError, TimeoutError) as error:
            raise LookupFailedError(f"{host} does not resolve: {error}") from None
        ipv4 = [str(info[4][0]) for info in infos if info[0] == socket.AF_INET]
        others = [str(info[4][0]) for info in infos if info[0] != socket.AF_INET]
        return _unique([*ipv4, *others])


def _origin(url: str) -> tuple[str, int]:
    """(host, port) of a URL, spelled as httpx spells them when it opens a connection."""
    parsed = httpx.URL(url)
    return parsed.raw_host.decode("ascii"), parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 0)


class AddressGuard:
    """Decides which addresses the mirror may connect to; resolves names to do so.

    `trusted_origins` are URLs of the operator's configuration: connections to their
    (host, port) are not checked.
    """

    def __init__(
        self,
        allow_private_network: bool,
        *,
        resolver: Resolver | None = None,
        trusted_origins: Iterable[str] = (),
    ) -> None:
        self.allow_private_network = allow_private_network
        self.resolver = resolver or Resolver()
        self._trusted = {_origin(url) for url in trusted_origins}

    @classmethod
    def for_settings(cls, settings: Settings) -> AddressGuard:
        """MIRROR_ALLOW_PRIVATE_NETWORK, DNS_SERVERS, and the configured services trusted."""
        configured = (settings.plc_url, settings.relay_url, settings.handle_resolver_url)
        return cls(
            settings.allow_private_network,
            resolver=Resolver.for_settings(settings),
            trusted_origins=[url for url in configured if url],
        )

    def is_trusted(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self._trusted

    @staticmethod
    def check_url(url: str) -> None:
        """Refuse what is not an http(s) URL with a host (before any connection)."""
        parsed = httpx.URL(url)
        if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
            raise RefusedAddressError(f"{url!r} is not an http(s) URL")

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` the mirror may connect to on `port`: all of them, or a
        RefusedAddressError naming the first that is not global.

        Raises LookupFailedError when the host does not resolve.
        """
        addresses = await self.resolver.addresses(host)
        if self.allow_private_network or self.is_trusted(host, port):
            return addresses
        for address in addresses:
            if not is_public(address):
                raise RefusedAddressError(
                    f"{host} resolves to {address}, a private or loopback address; "
                    "set MIRROR_ALLOW_PRIVATE_NETWORK=1 to allow it"
                )
        return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the guard has just checked.

    httpcore asks it for a connection to (host, port) each time it needs a new one, on the
    first attempt and on every retry; it resolves the host through the guard, and connects
    to the checked addresses in turn, so no second lookup can send the connection elsewhere.
    TLS is started on the stream afterwards by httpcore, with the host name for SNI and the
    certificate check, and the Host header keeps the name too.
    """

    def __init__(
        self, guard: AddressGuard, connector: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._guard = guard
        self._connector = connector or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._guard.checked_addresses(host, port)
        except NoSuchHostError:
            raise  # final: the client does not retry it (xrpc.py)
        except LookupFailedError as error:
            # Worth retrying like a refused connection: DNS may answer next time.
            raise httpcore.ConnectError(str(error)) from None
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._connector.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None  # a lookup gives one address at least
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedAddressError(f"a Unix socket ({path}) is not a network address")

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)


DEFAULT_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, over connections opened by `GuardedNetworkBackend`.

    httpx 0.28's AsyncHTTPTransport takes no network backend, but the httpcore connection
    pool under it does: this builds that pool as AsyncHTTPTransport.__init__ does when there
    is no proxy, and keeps the rest of the class (mapping requests, responses and errors).
    There is no proxy: a proxy would resolve the names itself, past the guard.
    `connector` replaces httpcore's own backend underneath the guard (tests).
    """

    def __init__(
        self,
        guard: AddressGuard,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        # No super().__init__(): it would build a pool and an SSL context only to drop them.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(guard, connector),
        )
