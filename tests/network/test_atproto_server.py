"""The PLC/PDS/relay stand-in itself: backfill tests are only as good as its semantics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.atproto_server import (
    GET_LATEST_COMMIT,
    LIST_RECORDS,
    LIST_REPOS_BY_COLLECTION,
    PLC,
    RESOLVE_HANDLE,
    AtprotoStandIn,
)
from tests.support.events_factory import BASE_US, CARD, PAGE, cid_of, did, record_body, tid

ALICE, BOB = did("alice"), did("bob")


@pytest.fixture
def server() -> Iterator[AtprotoStandIn]:
    with AtprotoStandIn() as running:
        yield running


@pytest.fixture
def http(server: AtprotoStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        yield client


def list_records(http: httpx.Client, repo: str = ALICE, **params: Any) -> httpx.Response:
    return http.get(f"/xrpc/{LIST_RECORDS}", params={"repo": repo, "collection": CARD, **params})


def page_through(http: httpx.Client, limit: int = 100) -> list[dict[str, Any]]:
    """Every page until an empty one, as a client that trusts only empty pages would."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(20):
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = list_records(http, **params)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        if not pages[-1]["records"]:
            return pages
        cursor = pages[-1]["cursor"]
    raise AssertionError("paging did not end")


def rkey_of(record: dict[str, Any]) -> str:
    return str(record["uri"]).rsplit("/", 1)[1]


# -- listRecords ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "sizes"),
    [(0, [0]), (1, [1, 0]), (100, [100, 0]), (101, [100, 1, 0]), (250, [100, 100, 50, 0])],
)
def test_list_records_pages(
    server: AtprotoStandIn, http: httpx.Client, count: int, sizes: list[int]
) -> None:
    server.add_account(ALICE)
    rkeys = server.create_records(ALICE, CARD, count)
    server.put_record(ALICE, PAGE, "other", record_body(PAGE, "not a card"))

    pages = page_through(http)

    assert [len(p["records"]) for p in pages] == sizes
    for page in pages:
        if page["records"]:  # the reference PDS: a cursor on every non-empty page, partial too
            assert page["cursor"] == rkey_of(page["records"][-1])
        else:
            assert "cursor" not in page
    listed = [r for p in pages for r in p["records"]]
    assert [rkey_of(r) for r in listed] == sorted(rkeys, reverse=True)  # newest first, once each
    state = server.records(ALICE, CARD)
    for record in listed:
        rkey = rkey_of(record)
        assert record["uri"] == f"at://{ALICE}/{CARD}/{rkey}"
        assert (record["cid"], record["value"]) == state[rkey]


def test_created_records_look_like_app_records(server: AtprotoStandIn) -> None:
    server.add_account(ALICE)
    rkeys = server.create_records(ALICE, CARD, 2, start_us=BASE_US + 1_000)
    assert rkeys == [tid(BASE_US + 1_000), tid(BASE_US + 1_001)]
    cid, value = server.records(ALICE, CARD)[rkeys[1]]
    assert value == {"$type": CARD, "text": "record 1", "createdAt": "2024-08-30T06:40:00.001Z"}
    assert cid == cid_of(value)


def test_list_records_limits_and_reverse(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    rkeys = server.create_records(ALICE, CARD, 60)

    assert len(list_records(http).json()["records"]) == 50  # the default limit
    for bad in ("0", "101", "many"):
        response = list_records(http, limit=bad)
        assert response.status_code == 400
        assert response.json()["error"] == "InvalidRequest"
    assert http.get(f"/xrpc/{LIST_RECORDS}", params={"repo": ALICE}).status_code == 400

    first = list_records(http, limit=10, reverse="true").json()
    assert [rkey_of(r) for r in first["records"]] == rkeys[:10]
    second = list_records(http, limit=10, reverse="true", cursor=first["cursor"]).json()
    assert [rkey_of(r) for r in second["records"]] == rkeys[10:20]


def test_changes_between_pages_show_up(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    rkeys = server.create_records(ALICE, CARD, 150)  # oldest first
    first = list_records(http, limit=100).json()
    assert first["cursor"] == rkeys[50]

    server.delete_record(ALICE, CARD, rkeys[10])  # not yet listed
    new_cid = server.put_record(ALICE, CARD, rkeys[20], record_body(CARD, "edited"))
    server.put_record(ALICE, CARD, tid(BASE_US - 5), record_body(CARD, "older"))
    server.put_record(ALICE, CARD, tid(BASE_US + 10_000), record_body(CARD, "newer"))

    second = list_records(http, limit=100, cursor=first["cursor"]).json()
    listed = {rkey_of(r): r["cid"] for r in second["records"]}
    assert rkeys[10] not in listed
    assert listed[rkeys[20]] == new_cid
    assert tid(BASE_US - 5) in listed  # behind the cursor: reached
    assert tid(BASE_US + 10_000) not in listed  # ahead of the cursor: missed, as on a real PDS
    assert len(listed) == 50


def test_revs_increase_across_the_server(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.add_account(BOB)
    revs = [server.rev(ALICE), server.rev(BOB)]
    server.create_records(ALICE, CARD, 30)
    revs.append(server.rev(ALICE))
    server.put_record(BOB, CARD, "a", record_body(CARD, "x"))
    revs.append(server.rev(BOB))
    server.delete_record(BOB, CARD, "a")
    revs.append(server.rev(BOB))
    revs.append(server.new_rev())
    assert revs == sorted(revs)
    assert len(set(revs)) == len(revs)
    assert all(len(rev) == 13 for rev in revs)
    assert server.records(BOB, CARD) == {}

    commit = http.get(f"/xrpc/{GET_LATEST_COMMIT}", params={"did": ALICE}).json()
    assert commit["rev"] == server.rev(ALICE)
    server.put_record(ALICE, CARD, "b", record_body(CARD, "y"))
    later = http.get(f"/xrpc/{GET_LATEST_COMMIT}", params={"did": ALICE}).json()
    assert later["rev"] == server.rev(ALICE) > commit["rev"]
    assert later["cid"] != commit["cid"]


@pytest.mark.parametrize("endpoint", [LIST_RECORDS, GET_LATEST_COMMIT])
def test_repo_errors(server: AtprotoStandIn, http: httpx.Client, endpoint: str) -> None:
    server.add_account(ALICE)
    server.create_records(ALICE, CARD, 3)

    def error(did_: str) -> tuple[int, str, str]:
        params = {"repo": did_, "did": did_, "collection": CARD}
        response = http.get(f"/xrpc/{endpoint}", params=params)
        body = response.json() if response.status_code != 200 else {}
        return response.status_code, body.get("error", ""), body.get("message", "")

    assert error(BOB) == (400, "RepoNotFound", f"Could not find repo for DID: {BOB}")
    server.set_repo_status(ALICE, "takendown")
    assert error(ALICE)[:2] == (400, "RepoTakendown")
    server.set_repo_status(ALICE, "deactivated")
    assert error(ALICE)[:2] == (400, "RepoDeactivated")
    server.set_repo_status(ALICE, None)
    assert error(ALICE) == (200, "", "")


# -- faults ---------------------------------------------------------------------------------


def test_fail_then_recover(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.fail(LIST_RECORDS, 429, headers={"ratelimit-reset": "1725000000"})
    server.fail(LIST_RECORDS, 500, times=2)

    limited = list_records(http)
    assert limited.status_code == 429
    assert limited.headers["ratelimit-reset"] == "1725000000"
    assert limited.json()["error"] == "RateLimitExceeded"
    assert [list_records(http).status_code for _ in range(3)] == [500, 500, 200]
    assert http.get(f"/xrpc/{GET_LATEST_COMMIT}", params={"did": ALICE}).status_code == 200
    assert server.count(LIST_RECORDS) == 4
    assert server.count(GET_LATEST_COMMIT) == 1


def test_fail_with_a_body_and_on_plc(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.fail(GET_LATEST_COMMIT, 502, body=b"<html>bad gateway</html>")
    server.fail(PLC, 503)
    response = http.get(f"/xrpc/{GET_LATEST_COMMIT}", params={"did": ALICE})
    assert (response.status_code, response.content) == (502, b"<html>bad gateway</html>")
    assert http.get(f"/{ALICE}").status_code == 503
    assert http.get(f"/{ALICE}").status_code == 200
    assert server.count(PLC) == 2


def test_malformed(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.malformed(LIST_RECORDS)
    response = list_records(http)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert list_records(http).json() == {"records": []}


def test_delay_times_out_a_client(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.delay(GET_LATEST_COMMIT, 0.5)
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"/xrpc/{GET_LATEST_COMMIT}", params={"did": ALICE}, timeout=0.1)
    started = time.monotonic()
    assert http.get(f"/xrpc/{GET_LATEST_COMMIT}", params={"did": ALICE}).status_code == 200
    assert time.monotonic() - started < 0.3


def test_repeat_cursor(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.create_records(ALICE, CARD, 30)
    server.repeat_cursor(ALICE, CARD)
    first = list_records(http, limit=10).json()
    again = list_records(http, limit=10, cursor=first["cursor"]).json()
    assert again == first


def test_foreign_records(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    rkeys = server.create_records(ALICE, CARD, 25)
    server.foreign_records(ALICE, CARD, BOB)
    pages = page_through(http, limit=10)
    assert [len(p["records"]) for p in pages] == [
        10,
        10,
        8,
        0,
    ]  # 9 + 9 + 7 genuine, one foreign each
    foreign = [r for p in pages for r in p["records"] if not r["uri"].startswith(f"at://{ALICE}/")]
    assert len(foreign) == 3
    assert all(r["uri"].startswith(f"at://{BOB}/{CARD}/") for r in foreign)
    genuine = [rkey_of(r) for p in pages for r in p["records"] if r not in foreign]
    assert genuine == sorted(rkeys, reverse=True)


def test_oversize_pages(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.create_records(ALICE, CARD, 40)
    server.oversize_pages(ALICE, CARD)
    assert [len(p["records"]) for p in page_through(http, limit=10)] == [15, 15, 10, 0]


def test_hold_list_records(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    rkeys = server.create_records(ALICE, CARD, 15)
    release = server.hold_list_records(after_pages=1)
    server.fail(LIST_RECORDS, 500)
    assert list_records(http, limit=10).status_code == 500  # not a page: does not count
    first = list_records(http, limit=10).json()

    second: list[dict[str, Any]] = []
    waiter = threading.Thread(
        target=lambda: second.append(list_records(http, limit=10, cursor=first["cursor"]).json())
    )
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive()  # held
    server.delete_record(ALICE, CARD, rkeys[0])
    release.set()
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert [rkey_of(r) for r in second[0]["records"]] == list(reversed(rkeys[1:5]))
    assert list_records(http, limit=10).status_code == 200  # no longer held


def test_max_in_flight(server: AtprotoStandIn) -> None:
    server.add_account(ALICE)
    with httpx.Client(base_url=server.url, timeout=5) as http:
        for _ in range(3):
            assert list_records(http).status_code == 200
    assert server.max_in_flight == 1

    server.delay(LIST_RECORDS, 0.3, times=4)

    def one() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert list_records(client).status_code == 200

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert server.max_in_flight == 4


# -- PLC and did:web ------------------------------------------------------------------------


def test_plc_documents(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE, handle="alice.test")
    server.add_account(BOB, pds_url="https://pds.example")

    assert http.get(f"/{ALICE}").json() == {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1",
        ],
        "id": ALICE,
        "alsoKnownAs": ["at://alice.test"],
        "verificationMethod": [],
        "service": [
            {
                "id": "#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": server.url,
            }
        ],
    }
    assert http.get(f"/{BOB}").json()["service"][0]["serviceEndpoint"] == "https://pds.example"

    carol = did("carol")
    missing = http.get(f"/{carol}")
    assert (missing.status_code, missing.json()) == (
        404,
        {"message": f"DID not registered: {carol}"},
    )
    server.tombstone_did(ALICE)
    gone = http.get(f"/{ALICE}")
    assert (gone.status_code, gone.json()) == (410, {"message": f"DID not available: {ALICE}"})

    server.set_did_document(ALICE, {"id": ALICE, "service": []})
    assert http.get(f"/{ALICE}").json() == {"id": ALICE, "service": []}
    server.set_did_document(BOB, b"not json")
    assert http.get(f"/{BOB}").content == b"not json"
    assert server.count(PLC) == 6


def test_web_document(server: AtprotoStandIn, http: httpx.Client) -> None:
    assert http.get("/.well-known/did.json").status_code == 404
    server.set_web_document({"id": "did:web:example.com"})
    assert http.get("/.well-known/did.json").json() == {"id": "did:web:example.com"}


def test_unknown_paths_and_the_request_log(server: AtprotoStandIn, http: httpx.Client) -> None:
    response = http.get("/xrpc/com.atproto.repo.getRecord", params={"repo": ALICE})
    assert response.status_code == 404
    assert response.json()["error"] == "NotFound"
    assert http.get("/nothing").status_code == 404
    assert server.requests == [
        ("/xrpc/com.atproto.repo.getRecord", {"repo": ALICE}),
        ("/nothing", {}),
    ]


# -- relay ----------------------------------------------------------------------------------


def test_relay_pages(server: AtprotoStandIn, http: httpx.Client) -> None:
    with_cards = sorted(did(f"user{i}") for i in range(5))
    for did_ in with_cards:
        server.add_account(did_)
        server.create_records(did_, CARD, 1)
    server.add_account(did("empty"))
    server.add_account(did("pages"))
    server.create_records(did("pages"), PAGE, 3)
    server.list_repos_page_size(2)

    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"collection": CARD, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        response = http.get(f"/xrpc/{LIST_REPOS_BY_COLLECTION}", params=params)
        assert response.status_code == 200
        pages.append(response.json())
        cursor = pages[-1].get("cursor")
        if cursor is None:
            break
        assert cursor == pages[-1]["repos"][-1]["did"]
    assert [[r["did"] for r in p["repos"]] for p in pages] == [
        with_cards[0:2],
        with_cards[2:4],
        with_cards[4:],
    ]

    server.list_repos_page_size(500)
    small = http.get(f"/xrpc/{LIST_REPOS_BY_COLLECTION}", params={"collection": CARD, "limit": 5})
    assert "cursor" not in small.json()  # nothing left after a full page: no cursor either
    bad = http.get(f"/xrpc/{LIST_REPOS_BY_COLLECTION}", params={"collection": CARD, "limit": 2001})
    assert bad.status_code == 400
    assert server.count(LIST_REPOS_BY_COLLECTION) == 5


def test_latency_delays_every_answer(server: AtprotoStandIn, http: httpx.Client) -> None:
    server.add_account(ALICE)
    server.latency_seconds = 0.2
    started = time.monotonic()
    assert list_records(http).status_code == 200
    assert http.get(f"/{ALICE}").status_code == 200
    assert time.monotonic() - started >= 0.4


# -- resolveHandle --------------------------------------------------------------------------


def test_resolve_handle_answers_the_did_of_a_known_handle_in_any_case(
    server: AtprotoStandIn, http: httpx.Client
) -> None:
    server.add_account(ALICE, handle="alice.test")
    server.add_account(BOB)

    found = http.get(f"/xrpc/{RESOLVE_HANDLE}", params={"handle": "Alice.TEST"})
    unknown = http.get(f"/xrpc/{RESOLVE_HANDLE}", params={"handle": "bob.test"})

    assert (found.status_code, found.json()) == (200, {"did": ALICE})
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "InvalidRequest"
