"""From a DID to its PDS and from a PDS page to checked records, over real HTTP on 127.0.0.1.

The PLC/PDS stand-in (`tests.support.atproto_server`) serves the DID documents (PLC and
did:web) and the two PDS calls a backfill makes; hand-made `ListRecordsAnswer`s cover the page
shapes a PDS could send but the stand-in never does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from mirror_assets.network.identity import (
    DidNotFoundError,
    DidTombstonedError,
    Identity,
    IdentityError,
    did_document_url,
    resolve,
)
from mirror_assets.network.net_guard import AddressGuard, RefusedAddressError
from mirror_assets.network.pds import (
    ListRecordsAnswer,
    Page,
    StuckCursorError,
    check_page,
    latest_rev,
    list_records,
)
from mirror_assets.network.xrpc import Politeness, UnavailableError, XrpcClient, XrpcError
from tests.support.atproto_server import (
    DID_CONTEXT,
    GET_LATEST_COMMIT,
    LIST_RECORDS,
    PLC,
    WEB,
    AtprotoStandIn,
)
from tests.support.events_factory import BASE_US, CARD, PAGE

FAST = Politeness(backoff_seconds=0.01, timeout_seconds=5.0, attempts=3)  # no spurious timeouts


def plc(name: str) -> str:
    """A syntactically valid did:plc (24 base32 characters) starting with `name`."""
    return f"did:plc:{name:a<24}"


ALICE, BOB = plc("alice"), plc("bob")
HANDLE = "alice.test"


def client(*, allow_private_network: bool = True) -> XrpcClient:
    return XrpcClient(FAST, AddressGuard(allow_private_network))


def document(did: str, pds: Any, *, service_id: str = "#atproto_pds") -> dict[str, Any]:
    return {
        "@context": DID_CONTEXT,
        "id": did,
        "alsoKnownAs": ["https://elsewhere.example", f"at://{HANDLE}"],
        "verificationMethod": [],
        "service": [
            {"id": "#bsky_notif", "type": "BskyNotificationService", "serviceEndpoint": "x"},
            {"id": service_id, "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds},
        ],
    }


def resolve_on(net: AtprotoStandIn, did: str, *, allow_private_network: bool = True) -> Identity:
    async def go() -> Identity:
        async with client(allow_private_network=allow_private_network) as xrpc:
            return await resolve(xrpc, did, net.url)

    return asyncio.run(go())


def page_of(net: AtprotoStandIn, did: str, cursor: str | None = None) -> Page:
    async def go() -> Page:
        async with client() as xrpc:
            return await list_records(xrpc, net.url, did, CARD, cursor)

    return asyncio.run(go())


# -- DID syntax and where the document is -------------------------------------------------------


@pytest.mark.parametrize("plc_url", ["https://plc.directory", "https://plc.directory/"])
def test_a_did_plc_document_is_under_the_trusted_plc_url(plc_url: str) -> None:
    url, trusted = did_document_url("did:plc:ewvi7nxzyoun6zhxrhs64oiz", plc_url)

    assert url == "https://plc.directory/did%3Aplc%3Aewvi7nxzyoun6zhxrhs64oiz"
    assert trusted is True


@pytest.mark.parametrize(
    ("did", "url"),
    [
        ("did:web:example.com", "https://example.com/.well-known/did.json"),
        ("did:web:localhost", "http://localhost/.well-known/did.json"),
        ("did:web:localhost%3A8080", "http://localhost:8080/.well-known/did.json"),
        ("did:web:localhost%3a2583", "http://localhost:2583/.well-known/did.json"),
        ("did:web:localhost.example.com", "https://localhost.example.com/.well-known/did.json"),
    ],
)
def test_a_did_web_document_is_at_the_hosts_well_known_path_untrusted(did: str, url: str) -> None:
    assert did_document_url(did, "https://plc.directory") == (url, False)


@pytest.mark.parametrize(
    "did",
    [
        "did:web:example.com:user",  # did:web with a path: not an atproto DID
        "did:web:pds.example.com%3A8443",  # a port outside localhost
        "did:web:127.0.0.1%3A2583",  # an address, not a host name
        "did:key:zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN57im31pcTzbNQnm5w",
        "did:plc:tooshort",
        "did:plc:ewvi7nxzyoun6zhxrhs64oi0",  # 0 is not base32
    ],
)
def test_other_dids_cannot_be_resolved(did: str) -> None:
    with pytest.raises(IdentityError):
        did_document_url(did, "https://plc.directory")


# -- resolution through PLC ---------------------------------------------------------------------


def test_a_did_plc_resolves_to_its_pds_and_handle(net: AtprotoStandIn) -> None:
    net.add_account(ALICE, handle=HANDLE, pds_url="https://pds.example.com/")

    identity = resolve_on(net, ALICE)

    assert identity == Identity(ALICE, "https://pds.example.com", HANDLE)
    assert net.requests == [(f"/{ALICE}", {})]


def test_a_did_without_a_handle_resolves_with_none(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)

    assert resolve_on(net, ALICE) == Identity(ALICE, net.url, None)


@pytest.mark.parametrize("service_id", ["#atproto_pds", f"{ALICE}#atproto_pds"])
def test_both_forms_of_the_pds_service_id_are_accepted(
    net: AtprotoStandIn, service_id: str
) -> None:
    net.set_did_document(ALICE, document(ALICE, "https://pds.example.com", service_id=service_id))

    assert resolve_on(net, ALICE) == Identity(ALICE, "https://pds.example.com", HANDLE)


def test_a_document_about_another_did_is_refused(net: AtprotoStandIn) -> None:
    net.set_did_document(ALICE, document(BOB, "https://pds.example.com"))

    with pytest.raises(IdentityError, match="is about"):
        resolve_on(net, ALICE)
    assert net.count(PLC) == 1


def test_a_document_without_a_pds_service_is_refused(net: AtprotoStandIn) -> None:
    doc = document(ALICE, "https://pds.example.com", service_id=f"{BOB}#atproto_pds")
    net.set_did_document(ALICE, doc)

    with pytest.raises(IdentityError, match="no #atproto_pds"):
        resolve_on(net, ALICE)


@pytest.mark.parametrize(
    "endpoint",
    [
        42,
        None,
        {"uri": "https://pds.example.com"},
        "ftp://pds.example.com",
        "pds.example.com",
        "https://",
        "https://user:secret@pds.example.com",
        "https://pds.example.com/?next=http://127.0.0.1",
        "https://pds.example.com/#fragment",
        "https://pds.example.com/" + "x" * 600,
    ],
)
def test_a_pds_endpoint_that_is_not_an_http_url_is_refused(
    net: AtprotoStandIn, endpoint: Any
) -> None:
    net.set_did_document(ALICE, document(ALICE, endpoint))

    with pytest.raises(IdentityError, match="is not an http"):
        resolve_on(net, ALICE)
    assert net.count(PLC) == 1  # a bad document is an answer, not a failure to retry


def test_an_unknown_did_is_not_found_at_once(net: AtprotoStandIn) -> None:
    with pytest.raises(DidNotFoundError):
        resolve_on(net, ALICE)
    assert net.count(PLC) == 1


def test_a_tombstoned_did_is_reported_as_such(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    net.tombstone_did(ALICE)

    with pytest.raises(DidTombstonedError):
        resolve_on(net, ALICE)
    assert net.count(PLC) == 1


def test_a_malformed_document_every_time_is_unavailable(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    net.malformed(PLC, times=10)

    with pytest.raises(UnavailableError, match="unreadable"):
        resolve_on(net, ALICE)
    assert net.count(PLC) == FAST.attempts


def test_a_malformed_document_once_is_retried(net: AtprotoStandIn) -> None:
    net.add_account(ALICE, handle=HANDLE)
    net.malformed(PLC)

    assert resolve_on(net, ALICE) == Identity(ALICE, net.url, HANDLE)
    assert net.count(PLC) == 2


# -- did:web --------------------------------------------------------------------------------------


def web_did(net: AtprotoStandIn) -> str:
    """A did:web of the stand-in's own host: `localhost`, the one host that may have a port."""
    return "did:web:localhost%3A" + net.url.rsplit(":", 1)[1]


def test_a_did_web_resolves_through_the_host_itself(net: AtprotoStandIn) -> None:
    did = web_did(net)
    net.set_web_document(document(did, "https://pds.example.com/"))

    assert resolve_on(net, did) == Identity(did, "https://pds.example.com", HANDLE)
    assert (net.count(WEB), net.count(PLC)) == (1, 0)


def test_a_did_web_on_a_private_host_is_refused_before_any_request(net: AtprotoStandIn) -> None:
    did = web_did(net)
    net.set_web_document(document(did, "https://pds.example.com"))

    with pytest.raises(RefusedAddressError):
        resolve_on(net, did, allow_private_network=False)
    assert net.requests == []


def test_a_did_web_without_a_document_is_not_found(net: AtprotoStandIn) -> None:
    with pytest.raises(DidNotFoundError):
        resolve_on(net, web_did(net))
    assert net.count(WEB) == 1


def test_a_plc_document_pointing_at_a_private_pds_resolves_but_is_not_fetched(
    net: AtprotoStandIn,
) -> None:
    net.add_account(ALICE, handle=HANDLE)  # its PDS is the stand-in: 127.0.0.1

    async def go() -> tuple[Identity, BaseException | None]:
        async with client(allow_private_network=False) as xrpc:
            identity = await resolve(xrpc, ALICE, net.url)  # PLC_URL is configuration: trusted
            try:
                await latest_rev(xrpc, identity.pds, ALICE)
            except RefusedAddressError as error:
                return identity, error
            return identity, None

    identity, error = asyncio.run(go())

    assert identity == Identity(ALICE, net.url, HANDLE)
    assert isinstance(error, RefusedAddressError)
    assert (net.count(PLC), net.count(GET_LATEST_COMMIT)) == (1, 0)


# -- the PDS: getLatestCommit -------------------------------------------------------------------


def rev_on(net: AtprotoStandIn, did: str) -> str:
    async def go() -> str:
        async with client() as xrpc:
            return await latest_rev(xrpc, net.url, did)

    return asyncio.run(go())


def test_latest_rev_is_the_repos_current_rev(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    net.create_records(ALICE, CARD, 2)

    assert rev_on(net, ALICE) == net.rev(ALICE)
    assert net.requests == [(f"/xrpc/{GET_LATEST_COMMIT}", {"did": ALICE})]


def test_a_taken_down_repo_is_an_xrpc_error_named_repo_takendown(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    net.set_repo_status(ALICE, "takendown")

    with pytest.raises(XrpcError) as raised:
        rev_on(net, ALICE)

    assert (raised.value.status, raised.value.error) == (400, "RepoTakendown")
    assert net.count(GET_LATEST_COMMIT) == 1


# -- the PDS: listRecords pages -----------------------------------------------------------------

FETCHED_US = BASE_US + 3600 * 1_000_000  # when a hand-made page was fetched


def test_a_page_keeps_the_records_bytes_rkeys_and_times(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    rkeys = net.create_records(ALICE, CARD, 3)
    net.create_records(ALICE, PAGE, 2)

    page = page_of(net, ALICE)

    stored = net.records(ALICE, CARD)
    assert [e.rkey for e in page.entries] == sorted(rkeys, reverse=True)
    assert [json.loads(e.value) for e in page.entries] == [stored[e.rkey][1] for e in page.entries]
    assert [e.cid for e in page.entries] == [stored[e.rkey][0] for e in page.entries]
    assert [e.time_us for e in page.entries] == [BASE_US + i for i in (2, 1, 0)]  # the TIDs
    assert (page.listed, page.next_cursor, page.refused.counts, page.oversized) == (
        3,
        min(rkeys),
        {},
        False,
    )
    assert net.requests[-1][1] == {"repo": ALICE, "collection": CARD, "limit": "100"}


def test_a_record_of_another_repo_is_dropped_and_counted(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    rkeys = net.create_records(ALICE, CARD, 3)
    net.foreign_records(ALICE, CARD, BOB)

    page = page_of(net, ALICE)

    assert page.listed == 4
    assert [e.rkey for e in page.entries] == sorted(rkeys, reverse=True)
    assert page.refused.counts == {"other_repo_or_collection": 1}


def test_an_oversized_page_is_flagged_and_kept_whole(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    rkeys = net.create_records(ALICE, CARD, 110)
    net.oversize_pages(ALICE, CARD)

    page = page_of(net, ALICE)

    assert page.oversized is True
    assert page.listed == len(page.entries) == 105
    assert [e.rkey for e in page.entries] == sorted(rkeys, reverse=True)[:105]
    assert page.refused.counts == {}


def test_a_page_answering_with_the_cursor_it_was_asked_for_is_stuck(net: AtprotoStandIn) -> None:
    net.add_account(ALICE)
    net.create_records(ALICE, CARD, 3)
    net.repeat_cursor(ALICE, CARD)
    first = page_of(net, ALICE)
    assert first.next_cursor is not None

    with pytest.raises(StuckCursorError):
        page_of(net, ALICE, first.next_cursor)
    assert net.count(LIST_RECORDS) == 2


def listed(uri: str, value: bytes, cid: Any = "bafyreiexample") -> msgspec.Raw:
    """One record of a listRecords answer, as the PDS sent it."""
    return msgspec.Raw(
        b'{"uri":%s,"cid":%s,"value":%s}'
        % (json.dumps(uri).encode(), json.dumps(cid).encode(), value)
    )


def test_records_outside_the_listing_asked_for_are_dropped_by_reason() -> None:
    prefix = f"at://{ALICE}/{CARD}"
    good = b'{"$type":"app.blento.card","createdAt":"2024-08-30T06:40:00.000Z"}'
    answer = ListRecordsAnswer(
        records=[
            listed(f"{prefix}/3kgood", good),
            listed(f"at://{BOB}/{CARD}/3kbob", good),
            listed(f"at://{ALICE}/{PAGE}/3kpage", good),
            listed(f"at://{ALICE}/{CARD}x/3kprefix", good),
            listed(f"{prefix}/", good),  # no rkey
            listed(f"{prefix}/3k/deeper", good),
            listed(f"{prefix}/..", good),
            listed(f"{prefix}/3klist", b"[1]"),
            listed(f"{prefix}/3kstring", b'"text"'),
            listed(f"{prefix}/3knull", b"null"),
            listed(f"{prefix}/3knotype", b'{"a": 1}'),
            listed(f"{prefix}/3kfloat", b'{"$type":"app.blento.card","a":0.5}'),
            listed(f"{prefix}/3kbadcid", good, cid="not a cid"),
            listed(f"{prefix}/3kcidnumber", good, cid=12),
            msgspec.Raw(b'{"uri": 17}'),
            msgspec.Raw(b"[]"),
        ],
        cursor="3knull",
    )

    page = check_page(answer, ALICE, CARD, FETCHED_US)

    assert [e.rkey for e in page.entries] == ["3kgood"]
    assert page.refused.counts == {
        "other_repo_or_collection": 3,
        "invalid_rkey": 3,
        "record_not_object": 3,
        "record_bad_type": 1,
        "record_float": 1,
        "invalid_cid": 1,
        "invalid": 3,
    }
    assert (page.listed, page.next_cursor, page.oversized) == (16, "3knull", False)


@pytest.mark.parametrize(
    ("value", "time_us"),
    [
        (b'{"$type":"a.b.c","createdAt":"2024-08-30T06:40:00.000Z"}', BASE_US),
        (b'{"$type":"a.b.c","createdAt":1725000000}', FETCHED_US),
        (b'{"$type":"a.b.c","createdAt":{"$date":"2024"}}', FETCHED_US),
        (b'{"$type":"a.b.c","createdAt":null}', FETCHED_US),
        (b'{"$type":"a.b.c","text":"no date"}', FETCHED_US),
    ],
)
def test_a_record_without_a_tid_is_timed_by_a_created_at_string(value: bytes, time_us: int) -> None:
    answer = ListRecordsAnswer(records=[listed(f"at://{ALICE}/{CARD}/3krkey", value)])

    page = check_page(answer, ALICE, CARD, FETCHED_US)

    assert [(e.rkey, e.value, e.time_us) for e in page.entries] == [("3krkey", value, time_us)]


def test_the_claimed_handle_is_the_first_valid_one_lowercased(net: AtprotoStandIn) -> None:
    doc = document(ALICE, "https://pds.example.com")
    doc["alsoKnownAs"] = [
        "at://not a handle",
        17,
        "at://127.0.0.1",
        "https://elsewhere.example",
        "at://Alice.Example.COM",
        "at://second.example.com",
    ]
    net.set_did_document(ALICE, doc)

    assert resolve_on(net, ALICE).claimed_handle == "alice.example.com"
