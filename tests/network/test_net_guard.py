"""The private-network guard and the resolver, over real DNS, HTTP and TLS on 127.0.0.1.

A DNS stand-in (`tests.support.dns_server`) gives names the addresses a test wants, and changes them
from one query to the next to play DNS rebinding; HTTP and HTTPS stand-ins
(`tests.support.net_http_server`) count what reaches them. The guard is checked where it acts:
at each connection the client opens, and the tests assert that no request ever reached a server on a
refused address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Callable, Iterable, Iterator

import httpcore
import httpx
import pytest
import trustme

from mirror_assets.config import Settings
from mirror_assets.network.net_guard import (
    AddressGuard,
    GuardedTransport,
    LookupFailedError,
    NoSuchHostError,
    RefusedAddressError,
    Resolver,
    is_public,
    name_server,
)
from mirror_assets.network.xrpc import Politeness, UnavailableError, XrpcClient
from tests.support.atproto_server import Commit
from tests.support.dns_server import DnsStandIn
from tests.support.net_http_server import (
    HttpStandIn,
    serving,
    tls_client_context,
    tls_server_context,
)

PATH = "/xrpc/com.atproto.sync.getLatestCommit"
COMMIT = b'{"cid": "bafyreiexample", "rev": "3kabc"}'
# A global address that tests must never send a packet to: only `LoopbackOnly` is asked to
# connect to it, and it refuses.
PUBLIC = "9.9.9.9"
# Short timeouts: nothing here waits for a real network.
QUICK = Politeness(backoff_seconds=0.01, timeout_seconds=2.0, attempts=3)


@pytest.fixture
def target() -> Iterator[HttpStandIn]:
    """A local server a guarded request must never reach."""
    with serving() as server:
        server.answer(PATH, COMMIT, headers={"content-type": "application/json"})
        yield server


def guard_for(
    dns: DnsStandIn,
    *,
    allow_private_network: bool = False,
    plc_url: str = Settings.plc_url,
    handle_resolver_url: str = Settings.handle_resolver_url,
) -> AddressGuard:
    """The guard `Settings` make, with the DNS stand-in as DNS_SERVERS."""
    settings = Settings(
        allow_private_network=allow_private_network,
        dns_servers=(dns.server,),
        plc_url=plc_url,
        handle_resolver_url=handle_resolver_url,
    )
    return AddressGuard.for_settings(settings)


async def get_commit(client: XrpcClient, url: str) -> Commit:
    return await client.get(url + PATH, {}, Commit)


def fetch(
    guard: AddressGuard,
    url: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Commit:
    async def go() -> Commit:
        async with XrpcClient(QUICK, guard, transport, ssl_context=ssl_context) as client:
            return await get_commit(client, url)

    return asyncio.run(go())


class LoopbackOnly(httpcore.AsyncNetworkBackend):
    """httpcore's own backend for loopback addresses; any other address fails as if
    unreachable, without a packet sent.

    A stand-in, not a real part: no public host can run here, and tests send nothing to
    addresses outside this machine. It records every address it is asked to connect to.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.asked.append(host)
        if not host.startswith("127."):
            raise httpcore.ConnectError(f"{host} is unreachable from the test machine")
        return await self._real.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


def through_loopback_only(guard: AddressGuard) -> tuple[GuardedTransport, LoopbackOnly]:
    connector = LoopbackOnly()
    return GuardedTransport(guard, connector=connector), connector


# -- DNS rebinding and retries ------------------------------------------------------------------


def test_a_name_that_rebinds_to_loopback_on_the_retry_never_reaches_the_local_server(
    dns: DnsStandIn, target: HttpStandIn
) -> None:
    """The first answer is public (the attempt fails: that host cannot be reached), the
    second is 127.0.0.1: the retry's connection is checked again, and refused."""
    dns.sequence("rebind.test", "A", [PUBLIC], ["127.0.0.1"])
    guard = guard_for(dns)
    transport, connector = through_loopback_only(guard)

    started = time.monotonic()
    with pytest.raises(RefusedAddressError) as refused:
        fetch(guard, f"http://rebind.test:{target.port}", transport=transport)

    assert "rebind.test" in str(refused.value) and "127.0.0.1" in str(refused.value)
    assert "MIRROR_ALLOW_PRIVATE_NETWORK=1" in str(refused.value)
    assert target.requests == []
    assert connector.asked == [PUBLIC]  # the attempt that failed went to the checked address
    assert dns.count("rebind.test", "A") == 2  # checked at each connection
    assert time.monotonic() - started < 2.0


def test_every_attempt_resolves_and_checks_again(dns: DnsStandIn, target: HttpStandIn) -> None:
    """Attempts that go to public addresses fail (unreachable here), and the one that would
    go to loopback is refused, whichever attempt it is."""
    dns.sequence("rebind.test", "A", [PUBLIC], [PUBLIC], ["127.0.0.1"])
    guard = guard_for(dns)
    transport, connector = through_loopback_only(guard)

    with pytest.raises(RefusedAddressError):
        fetch(guard, f"http://rebind.test:{target.port}", transport=transport)

    assert target.requests == []
    assert connector.asked == [PUBLIC, PUBLIC]
    assert dns.count("rebind.test", "A") == 3


def test_a_name_resolving_to_loopback_is_refused_on_the_first_attempt_and_every_request(
    dns: DnsStandIn, target: HttpStandIn
) -> None:
    dns.set("private.test", "A", "127.0.0.1")
    guard = guard_for(dns)
    transport, connector = through_loopback_only(guard)

    async def two_requests() -> list[BaseException | Commit]:
        outcomes: list[BaseException | Commit] = []
        async with XrpcClient(QUICK, guard, transport=transport) as client:
            for _ in range(2):
                url = f"http://private.test:{target.port}"
                outcomes += await asyncio.gather(get_commit(client, url), return_exceptions=True)
        return outcomes

    outcomes = asyncio.run(two_requests())

    assert [type(outcome) for outcome in outcomes] == [RefusedAddressError] * 2
    assert target.requests == [] and connector.asked == []
    assert dns.count("private.test", "A") == 2  # asked again: a refusal is not remembered


@pytest.mark.parametrize(
    ("rdtype", "address"),
    [
        ("A", "10.0.0.1"),
        ("A", "169.254.169.254"),
        ("AAAA", "::1"),
        ("AAAA", "::ffff:127.0.0.1"),
        ("AAAA", "fd00::1"),
    ],
)
def test_any_private_address_among_the_answers_refuses_the_host(
    dns: DnsStandIn, target: HttpStandIn, rdtype: str, address: str
) -> None:
    dns.set("mixed.test", "A", PUBLIC)
    dns.set("mixed.test", rdtype, address)
    guard = guard_for(dns)
    transport, connector = through_loopback_only(guard)

    with pytest.raises(RefusedAddressError, match=address.replace(".", r"\.")):
        fetch(guard, f"http://mixed.test:{target.port}", transport=transport)

    assert connector.asked == [] and target.requests == []


def test_each_connection_goes_to_the_address_just_resolved(
    dns: DnsStandIn, target: HttpStandIn
) -> None:
    """Nothing listens on 127.0.0.2 (the server is bound to 127.0.0.1): the first attempt
    fails there, and the retry, resolving again, connects to 127.0.0.1."""
    dns.sequence("moving.test", "A", ["127.0.0.2"], ["127.0.0.1"])

    commit = fetch(guard_for(dns, allow_private_network=True), f"http://moving.test:{target.port}")

    assert commit.rev == "3kabc"
    assert dns.count("moving.test", "A") == 2
    assert target.count(PATH) == 1


def test_the_checked_addresses_are_tried_in_turn(dns: DnsStandIn, target: HttpStandIn) -> None:
    dns.set("two.test", "A", "127.0.0.2", "127.0.0.1")

    commit = fetch(guard_for(dns, allow_private_network=True), f"http://two.test:{target.port}")

    assert commit.rev == "3kabc"
    assert dns.count("two.test", "A") == 1  # one attempt, two addresses
    assert target.requests[0].host == f"two.test:{target.port}"


def test_a_name_that_does_not_exist_fails_at_once(dns: DnsStandIn) -> None:
    # DNS answered: no such name. Asking again would only delay the answer (a handle's
    # HTTPS check of a host that does not exist, a PDS URL with a typo).
    with pytest.raises(UnavailableError, match=r"nowhere\.test has no address"):
        fetch(guard_for(dns), "http://nowhere.test")

    assert dns.count("nowhere.test", "A") == 1


def test_a_name_whose_servers_do_not_answer_is_retried_as_a_connection_failure(
    dns: DnsStandIn,
) -> None:
    dns.silence("slow.test")
    guard = AddressGuard(False, resolver=Resolver([dns.server], timeout_seconds=0.2))

    with pytest.raises(UnavailableError, match=r"connection failed.*\(3 attempts\)"):
        fetch(guard, "http://slow.test")

    assert dns.count("slow.test", "A") >= 3


# -- what the guard lets through ----------------------------------------------------------------


@pytest.mark.parametrize(
    "configured",
    [
        lambda url: Settings(plc_url=url),
        lambda url: Settings(relay_url=url),
        lambda url: Settings(handle_resolver_url=url),
    ],
    ids=["PLC_URL", "RELAY_URL", "HANDLE_RESOLVER_URL"],
)
def test_the_configured_origins_on_loopback_are_trusted(
    dns: DnsStandIn, target: HttpStandIn, configured: Callable[[str], Settings]
) -> None:
    settings = dataclasses.replace(configured(target.url), dns_servers=(dns.server,))

    # Not even marked trusted by the caller: the guard knows the origin.
    assert fetch(AddressGuard.for_settings(settings), target.url).rev == "3kabc"
    assert target.count(PATH) == 1


def test_trust_is_by_host_and_port(dns: DnsStandIn, target: HttpStandIn) -> None:
    with serving() as other:
        other.answer(PATH, COMMIT)
        guard = guard_for(dns, plc_url=other.url)  # another port of the same host

        with pytest.raises(RefusedAddressError, match=r"127\.0\.0\.1"):
            fetch(guard, target.url)

    assert target.requests == []


def test_a_request_marked_trusted_is_not_checked(target: HttpStandIn) -> None:
    async def go() -> Commit:
        async with XrpcClient(QUICK, AddressGuard(allow_private_network=False)) as client:
            return await client.get(target.url + PATH, {}, Commit, trusted=True)

    assert asyncio.run(go()).rev == "3kabc"


def test_a_trusted_request_does_not_open_the_origin_to_others(target: HttpStandIn) -> None:
    async def go() -> BaseException | Commit:
        async with XrpcClient(QUICK, AddressGuard(allow_private_network=False)) as client:
            await client.get(target.url + PATH, {}, Commit, trusted=True)
            outcome = await asyncio.gather(get_commit(client, target.url), return_exceptions=True)
            return outcome[0]

    assert isinstance(asyncio.run(go()), RefusedAddressError)
    assert target.count(PATH) == 1


def test_allow_private_network_lets_a_name_resolving_to_loopback_through(
    dns: DnsStandIn, target: HttpStandIn
) -> None:
    dns.set("pds.test", "A", "127.0.0.1")

    commit = fetch(guard_for(dns, allow_private_network=True), f"http://pds.test:{target.port}")

    assert commit.rev == "3kabc"
    assert [seen.host for seen in target.requests] == [f"pds.test:{target.port}"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}",
        "http://localhost:{port}",  # the system's resolver: /etc/hosts
        "http://[::ffff:127.0.0.1]:{port}",
        "http://8.8.8.8@127.0.0.1:{port}",  # userinfo: the host is 127.0.0.1
    ],
)
def test_without_dns_servers_loopback_urls_are_refused_before_any_request(
    target: HttpStandIn, url: str
) -> None:
    with pytest.raises(RefusedAddressError, match="MIRROR_ALLOW_PRIVATE_NETWORK"):
        fetch(AddressGuard(allow_private_network=False), url.format(port=target.port))

    assert target.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/xrpc/com.atproto.sync.getLatestCommit",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://100.64.0.1/",
        "http://[::1]:8080/",
        "http://[fe80::1]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 to 169.254.169.254
    ],
)
def test_private_ip_addresses_are_refused_without_a_connection_attempt(url: str) -> None:
    guard = AddressGuard(allow_private_network=False)
    transport, connector = through_loopback_only(guard)

    with pytest.raises(RefusedAddressError, match="MIRROR_ALLOW_PRIVATE_NETWORK"):
        fetch(guard, url, transport=transport)

    assert connector.asked == []


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "file:///etc/passwd", "not a url", "http:///x"]
)
def test_urls_that_are_not_http_are_refused_even_when_private_networks_are_allowed(
    url: str,
) -> None:
    with pytest.raises(RefusedAddressError, match="not an http"):
        fetch(AddressGuard(allow_private_network=True), url)


# -- TLS keeps the host name --------------------------------------------------------------------


def test_tls_uses_the_host_name_for_sni_the_certificate_and_the_host_header(
    dns: DnsStandIn, authority: trustme.CA
) -> None:
    dns.set("pds.test", "A", "127.0.0.1")
    with serving(tls=tls_server_context(authority, "pds.test")) as server:
        server.answer(PATH, COMMIT)
        url = f"https://pds.test:{server.port}"

        commit = fetch(
            guard_for(dns, allow_private_network=True),
            url,
            ssl_context=tls_client_context(authority),
        )

    assert commit.rev == "3kabc"
    [seen] = server.requests
    assert (seen.sni, seen.host) == ("pds.test", f"pds.test:{server.port}")


def test_a_certificate_for_another_name_is_refused(dns: DnsStandIn, authority: trustme.CA) -> None:
    dns.set("impostor.test", "A", "127.0.0.1")
    with serving(tls=tls_server_context(authority, "pds.test")) as server:
        server.answer(PATH, COMMIT)

        with pytest.raises(UnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(
                guard_for(dns, allow_private_network=True),
                f"https://impostor.test:{server.port}",
                ssl_context=tls_client_context(authority),
            )

    assert server.requests == []


# -- the resolver -------------------------------------------------------------------------------


def test_the_resolver_asks_the_configured_servers_for_a_and_aaaa(dns: DnsStandIn) -> None:
    dns.set("pds.test", "AAAA", "2001:db8::7")
    dns.set("pds.test", "A", "192.0.2.7", "192.0.2.8")

    addresses = asyncio.run(Resolver([dns.server]).addresses("pds.test"))

    assert addresses == ["192.0.2.7", "192.0.2.8", "2001:db8::7"]  # IPv4 first
    assert dns.count("pds.test", "A") == dns.count("pds.test", "AAAA") == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "8.8.8.8"])
def test_an_ip_address_needs_no_lookup(dns: DnsStandIn, host: str) -> None:
    addresses = asyncio.run(Resolver([dns.server]).addresses(host))

    assert addresses == [host.strip("[]")]
    assert dns.queries == []


def test_localhost_is_loopback_whatever_the_configured_servers_say(dns: DnsStandIn) -> None:
    dns.set("localhost", "A", "8.8.8.8")

    assert asyncio.run(Resolver([dns.server]).addresses("localhost")) == ["127.0.0.1", "::1"]
    assert dns.queries == []


def test_without_configured_servers_the_system_resolver_reads_etc_hosts() -> None:
    assert "127.0.0.1" in asyncio.run(Resolver().addresses("localhost"))


def test_a_name_the_servers_do_not_know_fails_to_resolve(dns: DnsStandIn) -> None:
    with pytest.raises(NoSuchHostError, match=r"nowhere\.test has no address"):
        asyncio.run(Resolver([dns.server]).addresses("nowhere.test"))


def test_a_server_that_never_answers_fails_the_lookup_within_its_timeout(
    dns: DnsStandIn,
) -> None:
    dns.silence("slow.test")
    resolver = Resolver([dns.server], timeout_seconds=0.3)
    started = time.monotonic()

    with pytest.raises(LookupFailedError):
        asyncio.run(resolver.addresses("slow.test"))
    with pytest.raises(LookupFailedError):
        asyncio.run(resolver.txt("slow.test"))

    assert time.monotonic() - started < 2.0


def test_txt_records_come_from_the_configured_servers(dns: DnsStandIn) -> None:
    dns.set("_atproto.alice.test", "TXT", "did=did:plc:one", "other text")
    resolver = Resolver([dns.server])

    assert asyncio.run(resolver.txt("_atproto.alice.test")) == ["did=did:plc:one", "other text"]
    assert asyncio.run(resolver.txt("_atproto.nobody.test")) == []  # NXDOMAIN: no records
    dns.set("_atproto.empty.test", "A", "192.0.2.1")
    assert asyncio.run(resolver.txt("_atproto.empty.test")) == []  # the name, no TXT


@pytest.mark.parametrize(
    ("entry", "address", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        (" 10.0.0.53:5353 ", "10.0.0.53", 5353),
        ("::1", "::1", 53),
        ("[::1]", "::1", 53),
        ("[2001:db8::53]:5300", "2001:db8::53", 5300),
    ],
)
def test_dns_servers_entries_are_an_address_and_an_optional_port(
    entry: str, address: str, port: int
) -> None:
    server = name_server(entry)

    assert (server.address, server.port) == (address, port)


@pytest.mark.parametrize("entry", ["dns.example", "1.2.3.4:x", "1.2.3.4:70000", "1.2.3.4:0", ""])
def test_dns_servers_entries_that_are_not_addresses_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        Resolver([entry])


# -- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.1.1", False),
        ("172.16.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("224.0.0.1", False),  # multicast
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("8.8.8.8", True),
        ("2606:4700::1", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),  # NAT64 to 8.8.8.8
    ],
)
def test_is_public_accepts_only_global_unicast_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_the_guard_passes_public_addresses_without_connecting() -> None:
    guard = AddressGuard(allow_private_network=False)

    assert asyncio.run(guard.checked_addresses("8.8.8.8", 443)) == ["8.8.8.8"]


def test_for_settings_trusts_the_configured_origins_with_their_default_ports() -> None:
    guard = AddressGuard.for_settings(
        Settings(plc_url="https://PLC.example", relay_url="http://relay.example:2470")
    )

    assert guard.is_trusted("plc.example", 443)
    assert guard.is_trusted("relay.example", 2470)
    assert not guard.is_trusted("plc.example", 80)
    assert not guard.is_trusted("relay.example", 80)
    assert not guard.allow_private_network
