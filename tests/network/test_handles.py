"""Handle resolution and verification, over real DNS and real HTTPS on 127.0.0.1.

The DNS stand-in (`tests.support.dns_server`) holds the `_atproto` TXT records and maps the handles'
host names to 127.0.0.1; an HTTPS stand-in (`tests.support.net_http_server`) on 127.0.0.1:443, the
port the method uses, serves `/.well-known/atproto-did` under a `trustme` certificate for those
names, and the client trusts that test authority alone. Port 443 needs root, which the tests
run as: if it cannot be bound, the tests fail saying so.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import trustme

from mirror_assets.config import Settings
from mirror_assets.network.handles import WELL_KNOWN_PATH, HandleVerifier
from mirror_assets.network.net_guard import AddressGuard, Resolver
from mirror_assets.network.xrpc import Politeness, XrpcClient
from tests.support.dns_server import DnsStandIn, running_dns
from tests.support.events_factory import did
from tests.support.net_http_server import (
    HttpStandIn,
    serving,
    tls_client_context,
    tls_server_context,
)

ALICE, BOB = did("alice"), did("bob")
HANDLE = "alice.test"
OTHER = "elsewhere.test"
CERTIFIED = (HANDLE, OTHER)  # the names the test certificate covers
RESOLVE_PATH = "/xrpc/com.atproto.identity.resolveHandle"
QUICK = Politeness(backoff_seconds=0.01, timeout_seconds=2.0, attempts=2)


# One server on port 443 for the whole module: its tests run in one test process (xdist).
pytestmark = pytest.mark.xdist_group("port_443")


@pytest.fixture(scope="module")
def https_443(authority: trustme.CA) -> Iterator[HttpStandIn]:
    try:
        server = HttpStandIn(port=443, tls=tls_server_context(authority, *CERTIFIED)).start()
    except OSError as error:
        pytest.fail(
            f"cannot listen on 127.0.0.1:443 ({error}): the HTTPS handle tests need that port, "
            "so they must run as root with the port free"
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def well_known(https_443: HttpStandIn) -> HttpStandIn:
    """The HTTPS server on 443, with no answers and no requests from earlier tests."""
    https_443.clear()
    return https_443


@pytest.fixture
def dns() -> Iterator[DnsStandIn]:
    with running_dns() as server:
        server.set(HANDLE, "A", "127.0.0.1")
        server.set(OTHER, "A", "127.0.0.1")
        yield server


def serve_did(
    server: HttpStandIn,
    handle: str,
    body: bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    delay_seconds: float = 0.0,
    close_delimited: bool = False,
) -> None:
    """`https://{handle}/.well-known/atproto-did` answers `body`."""
    server.answer(
        WELL_KNOWN_PATH,
        body,
        host=handle,
        status=status,
        headers=headers,
        delay_seconds=delay_seconds,
        close_delimited=close_delimited,
    )


def resolve(
    dns: DnsStandIn,
    authority: trustme.CA,
    handle: str,
    *,
    allow_private_network: bool = True,
    timeout_seconds: float = 5.0,
) -> str | None:
    async def go() -> str | None:
        resolver = Resolver([dns.server], timeout_seconds=1.0)
        guard = AddressGuard(allow_private_network, resolver=resolver)
        async with XrpcClient(QUICK, guard, ssl_context=tls_client_context(authority)) as client:
            verifier = HandleVerifier(client, resolver, timeout_seconds=timeout_seconds)
            return await verifier.resolve(handle)

    return asyncio.run(go())


def verify(dns: DnsStandIn, authority: trustme.CA, did_: str, claimed: str | None) -> str | None:
    async def go() -> str | None:
        resolver = Resolver([dns.server], timeout_seconds=1.0)
        guard = AddressGuard(True, resolver=resolver)
        async with XrpcClient(QUICK, guard, ssl_context=tls_client_context(authority)) as client:
            return await HandleVerifier(client, resolver).verified(did_, claimed)

    return asyncio.run(go())


# -- DNS ----------------------------------------------------------------------------------------


def test_a_handle_whose_txt_record_names_the_did_is_verified_in_lower_case(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    dns.set(f"_atproto.{HANDLE}", "TXT", "some other record", f"did={ALICE}")

    assert verify(dns, authority, ALICE, "Alice.TEST") == HANDLE
    assert verify(dns, authority, BOB, HANDLE) is None
    assert dns.count(f"_atproto.{HANDLE}", "TXT") == 2


def test_the_same_did_in_two_txt_records_still_resolves(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    dns.set(f"_atproto.{HANDLE}", "TXT", f"did={ALICE}", f"did={ALICE}")

    assert resolve(dns, authority, HANDLE) == ALICE


def test_txt_records_with_different_dids_do_not_resolve(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    dns.set(f"_atproto.{HANDLE}", "TXT", f"did={ALICE}", f"did={BOB}")

    assert resolve(dns, authority, HANDLE) is None


@pytest.mark.parametrize("record", ["did=did:plc:short", "did=not-a-did", f"did= {ALICE}"])
def test_a_txt_record_that_is_not_a_did_does_not_resolve(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn, record: str
) -> None:
    dns.set(f"_atproto.{HANDLE}", "TXT", record)

    assert resolve(dns, authority, HANDLE) is None


def test_when_dns_and_https_disagree_dns_wins(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    dns.set(f"_atproto.{HANDLE}", "TXT", f"did={ALICE}")
    serve_did(well_known, HANDLE, BOB.encode())

    assert verify(dns, authority, ALICE, HANDLE) == HANDLE
    assert verify(dns, authority, BOB, HANDLE) is None


def test_a_name_server_that_never_answers_gives_none_in_bounded_time(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    dns.silence(f"_atproto.{HANDLE}")
    dns.silence(HANDLE)
    started = time.monotonic()

    assert resolve(dns, authority, HANDLE) is None
    assert time.monotonic() - started < 4.0  # two lookups of 1 s, and the HTTPS attempts
    assert well_known.requests == []


# -- HTTPS --------------------------------------------------------------------------------------


def test_a_handle_whose_well_known_answer_is_the_did_is_verified(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    serve_did(well_known, HANDLE, f"  {ALICE}\r\n".encode())

    assert verify(dns, authority, ALICE, HANDLE) == HANDLE
    assert verify(dns, authority, BOB, HANDLE) is None
    seen = well_known.requests[0]
    assert (seen.sni, seen.host, seen.path) == (HANDLE, HANDLE, WELL_KNOWN_PATH)


@pytest.mark.parametrize(
    "body",
    [
        b"not a did",
        b"did:plc:short",
        b'{"did": "' + ALICE.encode() + b'"}',
        b"<html><body>" + ALICE.encode() + b"</body></html>",
        ALICE.encode() + b"\n" + BOB.encode(),
        b"",
    ],
)
def test_a_well_known_answer_that_is_not_one_did_does_not_resolve(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn, body: bytes
) -> None:
    serve_did(well_known, HANDLE, body)

    assert resolve(dns, authority, HANDLE) is None
    assert well_known.count(WELL_KNOWN_PATH) == 1


def test_a_redirect_is_not_followed(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    elsewhere = f"https://{OTHER}{WELL_KNOWN_PATH}"
    serve_did(well_known, HANDLE, b"", status=302, headers={"location": elsewhere})
    serve_did(well_known, OTHER, ALICE.encode())  # the right DID, if it were followed

    assert resolve(dns, authority, HANDLE) is None
    assert [seen.host for seen in well_known.requests] == [HANDLE]


def test_a_huge_well_known_answer_does_not_resolve(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    # The DID and blank space: it would pass once stripped, were the body not bounded.
    serve_did(well_known, HANDLE, ALICE.encode() + b" " * 4096, close_delimited=True)

    assert resolve(dns, authority, HANDLE) is None


def test_a_slow_well_known_answer_gives_none_within_the_timeout(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    serve_did(well_known, HANDLE, ALICE.encode(), delay_seconds=3.0)
    started = time.monotonic()

    assert resolve(dns, authority, HANDLE, timeout_seconds=0.5) is None
    assert time.monotonic() - started < 1.5


def test_a_handle_host_that_does_not_exist_does_not_resolve(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    assert resolve(dns, authority, "nobody.test") is None
    assert well_known.requests == []


def test_no_handle_resolution_reaches_a_private_address_while_the_guard_is_on(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn
) -> None:
    serve_did(well_known, HANDLE, ALICE.encode())  # alice.test is 127.0.0.1

    assert resolve(dns, authority, HANDLE, allow_private_network=False) is None
    assert well_known.requests == []
    assert resolve(dns, authority, HANDLE, allow_private_network=True) == ALICE  # control


# -- which handles are resolved at all ----------------------------------------------------------


@pytest.mark.parametrize(
    "claimed",
    [
        None,
        "alice.local",
        "alice.onion",
        "alice.example",
        "alice.internal",
        "alice.localhost",
        "localhost",
        "127.0.0.1",
        "alice test",
        "-alice.test",
        "a" * 250 + ".test",
    ],
)
def test_handles_that_may_not_resolve_are_not_looked_up(
    dns: DnsStandIn, authority: trustme.CA, well_known: HttpStandIn, claimed: str | None
) -> None:
    assert verify(dns, authority, ALICE, claimed) is None
    assert dns.queries == []
    assert well_known.requests == []


# -- HANDLE_RESOLVER_URL ------------------------------------------------------------------------


@pytest.fixture
def resolver_service() -> Iterator[HttpStandIn]:
    with serving() as server:
        yield server


def verify_through_service(
    dns: DnsStandIn, service: HttpStandIn, did_: str, claimed: str
) -> str | None:
    """Verification as the mirror sets it up: from `Settings`, the private network off."""
    settings = Settings(dns_servers=(dns.server,), handle_resolver_url=service.url + "/")

    async def go() -> str | None:
        async with XrpcClient(QUICK, AddressGuard.for_settings(settings)) as client:
            return await HandleVerifier.for_settings(settings, client).verified(did_, claimed)

    return asyncio.run(go())


def test_the_resolver_service_answers_when_configured(
    dns: DnsStandIn, resolver_service: HttpStandIn
) -> None:
    resolver_service.answer(RESOLVE_PATH, json.dumps({"did": ALICE}).encode())

    assert verify_through_service(dns, resolver_service, ALICE, "Alice.test") == HANDLE
    assert verify_through_service(dns, resolver_service, BOB, HANDLE) is None
    assert [seen.query for seen in resolver_service.requests] == [f"handle={HANDLE}"] * 2
    assert dns.queries == []  # the service resolves; the mirror does not


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"error": "InvalidRequest", "message": "Unable to resolve handle"}'),
        (200, b'{"did": "not a did"}'),
        (200, b"not json"),
        (503, b""),
    ],
)
def test_a_resolver_service_that_cannot_say_gives_none(
    dns: DnsStandIn, resolver_service: HttpStandIn, status: int, body: bytes
) -> None:
    resolver_service.answer(RESOLVE_PATH, body, status=status)

    assert verify_through_service(dns, resolver_service, ALICE, HANDLE) is None
