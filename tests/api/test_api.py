"""The query API against a real DuckDB file, through Litestar's test client (docs/api.md).

Data is written through the real write path (`apply_events`: the Jetstream apply step in a
`FileStore.writing()` transaction), so the API reads exactly what ingestion leaves behind. Every
test asserts exact status codes and exact JSON bodies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api import reader as reader_module
from mirror_api.cursor_key import cursor_key
from mirror_api.paging import TAG_BYTES
from mirror_api.sources.file import LINGER_SECONDS, FileSource
from mirror_assets.config import Settings
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lock import write_lock
from tests.support.api_helpers import (
    STORED_CID,
    api_client,
    lake_of,
    newest_first,
    open_files_of,
    record_json,
    set_backfill,
    set_handle,
    settings_for,
    store_rows,
    walk,
)
from tests.support.events_factory import (
    CARD,
    PAGE,
    SECOND,
    account,
    at,
    create,
    delete,
    did,
    identity,
    update,
)
from tests.support.store_helpers import apply_events, store_cursor

Client = TestClient[Litestar]

NOT_FOUND = {"error": "Not found"}
NOT_TRACKED = {"error": "Collection not tracked"}
NOT_ALLOWED = {"error": "Method not allowed"}
BAD_LIMIT = {"error": "Invalid limit parameter"}
BAD_CURSOR = {"error": "Invalid cursor parameter"}
BAD_DID = {"error": "Invalid did parameter"}

ALICE, BOB, CAROL = did("alice"), did("bob"), did("carol")

# Every GET endpoint of the contract, with a tracked collection and a valid DID.
ENDPOINTS = [
    "/",
    "/health",
    "/cursor",
    f"/records/{CARD}",
    f"/users/{CARD}",
    f"/stats/{CARD}",
    f"/backfill/{CARD}/{ALICE}",
]
PAGED = [f"/records/{CARD}", f"/users/{CARD}"]


@pytest.fixture
def settings(store: MirrorStore) -> Settings:
    return settings_for(store)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    """A client of the API over each store in turn."""
    with api_client(settings) as client:
        yield client


@pytest.fixture
def file_client(db: Path) -> Iterator[Client]:
    """A client of the API over the file at `db`, for what only the file has (its lock)."""
    with api_client(settings_for(db)) as client:
        yield client


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _get(client: Client, path: str, **params: Any) -> tuple[int, Any]:
    response = client.get(path, params=params)
    assert response.headers.get("content-type", "").startswith("application/json"), response
    return response.status_code, response.json()


# --- /health and / -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/"])
def test_health(file_client: Client, path: str) -> None:
    response = file_client.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["access-control-allow-origin"] == "*"


# --- /cursor -------------------------------------------------------------------------------


def _written(store: MirrorStore) -> object:
    """What a writer would change: the file's existence, or the lake's snapshot and files."""
    if isinstance(store, FileStore):
        return store.path.exists()
    with store.reading() as con:
        snapshot_id = con.execute("SELECT id FROM mirror.current_snapshot()").fetchall()
    return snapshot_id, sorted(Path(lake_of(store).data_path).rglob("*"))


def test_every_endpoint_answers_before_the_file_exists(client: Client, store: MirrorStore) -> None:
    """No run yet: an empty mirror answers, and the API does not create the file (nor
    write to an empty lake)."""
    before = _written(store)
    assert _get(client, "/cursor") == (200, {"cursor": None})
    assert _get(client, f"/records/{CARD}") == (200, {"records": []})
    assert _get(client, f"/users/{CARD}") == (200, {"users": []})
    assert _get(client, f"/stats/{CARD}") == (
        200,
        {"collection": CARD, "unique_users": 0, "total_records": 0, "last_record_time_us": None},
    )
    assert _get(client, f"/backfill/{CARD}/{ALICE}") == (
        200,
        {"did": ALICE, "collection": CARD, "status": "unknown", "state": None},
    )
    assert _written(store) == before, "the API must never create or write the store"
    assert before is not True, "the file was there before the test"


def test_cursor_is_null_before_the_first_ingest(client: Client, store: MirrorStore) -> None:
    store.init()  # the schema exists, no ingest has committed a cursor
    assert _get(client, "/cursor") == (200, {"cursor": None})


def test_cursor_after_an_ingest(client: Client, store: MirrorStore) -> None:
    time_us = at(5.123457)  # microseconds that a float round trip could lose
    store_cursor(store, time_us)
    status, body = _get(client, "/cursor")
    asked_at = time.time()
    assert status == 200
    assert set(body) == {"time_us", "date", "seconds_ago"}
    assert body["time_us"] == time_us
    date = datetime.fromisoformat(body["date"])
    assert date.utcoffset() == timedelta(0), body["date"]
    assert date == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
    assert type(body["seconds_ago"]) is int
    assert abs(body["seconds_ago"] - (asked_at - time_us / SECOND)) <= 2


def test_cursor_seconds_ago_of_a_recent_cursor(client: Client, store: MirrorStore) -> None:
    store_cursor(store, int((time.time() - 30) * SECOND))
    status, body = _get(client, "/cursor")
    assert status == 200
    assert 29 <= body["seconds_ago"] <= 32, body


# --- /records ------------------------------------------------------------------------------


def test_records_shape_and_order(client: Client, store: MirrorStore) -> None:
    first = create(ALICE, "a1", rev=1, t=1, text="first")
    second = create(BOB, "b1", rev=1, t=2)
    edited = update(ALICE, "a1", rev=2, t=3, text="second thoughts")
    on_page = create(ALICE, "p1", rev=3, t=4, collection=PAGE)
    third = create(ALICE, "a2", rev=4, t=5, text="ünïcödé ✓")
    apply_events(store, [first, second, edited, on_page, third])

    assert _get(client, f"/records/{CARD}") == (
        200,
        {"records": [record_json(third), record_json(edited), record_json(second)]},
    )
    assert _get(client, f"/records/{PAGE}") == (200, {"records": [record_json(on_page)]})
    # The record is an object, not a JSON string.
    _, body = _get(client, f"/records/{CARD}")
    assert body["records"][0]["record"] == third["commit"]["record"]


# Record values JSON can carry and a decoder may refuse, as a file written before the mirror
# checked records at its door may hold them (docs/validation.md), with their own spacing.
STORED_AS_IS = {
    "integer past 64 bits": '{"$type": "app.blento.card", "n": 123456789012345678901234567890}',
    "float out of range": '{"$type": "app.blento.card", "x": 1e400, "y": -1e400}',
    "fraction": '{"$type":"app.blento.card","f":1.5}',
    "2,000 levels deep": '{"$type": "app.blento.card", "deep": ' + "[" * 2000 + "]" * 2000 + "}",
}


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def test_stored_records_are_served_as_stored(client: Client, store: MirrorStore) -> None:
    """Every record a row holds is served, byte for byte: no page fails on a record that a
    decoder refuses (1e400, 2,000 levels of nesting), none is rewritten."""
    store.init()
    records = list(STORED_AS_IS.values())
    times = [at(t) for t in range(1, len(records) + 1)]
    uris = store_rows(store, [ALICE] * len(records), records, times)
    rkeys = [uri.rsplit("/", 1)[1] for uri in uris]
    response = client.get(f"/records/{CARD}")
    assert response.status_code == 200, response.text
    items = [
        f'{{"uri":{_compact(uri)},"did":{_compact(ALICE)},"collection":{_compact(CARD)},'
        f'"rkey":{_compact(rkey)},"cid":{_compact(STORED_CID)},"record":{record},'
        f'"time_us":{time_us}}}'
        for uri, rkey, record, time_us in zip(uris, rkeys, records, times, strict=True)
    ]
    assert response.text == '{"records":[' + ",".join(reversed(items)) + "]}"


def test_records_cursor_only_while_there_is_more(client: Client, store: MirrorStore) -> None:
    events = [create(ALICE, f"r{i}", rev=i, t=i) for i in range(3)]
    apply_events(store, events)
    expected = newest_first(record_json(e) for e in events)

    status, body = _get(client, f"/records/{CARD}", limit=2)
    assert status == 200
    assert set(body) == {"records", "cursor"}
    assert body["records"] == expected[:2]
    assert _get(client, f"/records/{CARD}", limit=2, cursor=body["cursor"]) == (
        200,
        {"records": expected[2:]},
    )
    # A page that is exactly full is the last one too: no cursor.
    assert _get(client, f"/records/{CARD}", limit=3) == (200, {"records": expected})


def test_equal_time_records_are_ordered_by_uri_descending(
    client: Client, store: MirrorStore
) -> None:
    events = [create(did(name), "same", rev=1, t=7) for name in ("b", "c", "a")]
    apply_events(store, events)
    status, body = _get(client, f"/records/{CARD}")
    assert status == 200
    assert [r["did"] for r in body["records"]] == [did("c"), did("b"), did("a")]


# --- /users --------------------------------------------------------------------------------


def test_users_shape_and_order(client: Client, store: MirrorStore) -> None:
    counts = {did("d"): 1, did("b"): 2, did("c"): 3, did("a"): 2, did("e"): 1}
    events = [create(author, f"r{i}", rev=i, t=i) for author, n in counts.items() for i in range(n)]
    events.append(create(did("z"), "p", rev=1, t=1, collection=PAGE))
    apply_events(store, events)
    assert _get(client, f"/users/{CARD}") == (
        200,
        {
            "users": [
                {"did": did("c"), "record_count": 3},
                {"did": did("a"), "record_count": 2},
                {"did": did("b"), "record_count": 2},
                {"did": did("d"), "record_count": 1},
                {"did": did("e"), "record_count": 1},
            ]
        },
    )
    status, body = _get(client, f"/users/{CARD}", limit=2)
    assert status == 200
    assert body["users"] == [
        {"did": did("c"), "record_count": 3},
        {"did": did("a"), "record_count": 2},
    ]
    assert isinstance(body["cursor"], str)
    assert _get(client, f"/users/{PAGE}") == (
        200,
        {"users": [{"did": did("z"), "record_count": 1}]},
    )


# --- /stats --------------------------------------------------------------------------------


def test_stats(client: Client, store: MirrorStore) -> None:
    apply_events(
        store,
        [
            create(ALICE, "a1", rev=1, t=1),
            create(ALICE, "a2", rev=2, t=9),
            create(BOB, "b1", rev=1, t=4),
            create(CAROL, "p1", rev=1, t=20, collection=PAGE),
        ],
    )
    assert _get(client, f"/stats/{CARD}") == (
        200,
        {"collection": CARD, "unique_users": 2, "total_records": 3, "last_record_time_us": at(9)},
    )
    assert _get(client, f"/stats/{PAGE}") == (
        200,
        {"collection": PAGE, "unique_users": 1, "total_records": 1, "last_record_time_us": at(20)},
    )


def test_stats_of_an_empty_tracked_collection(store: MirrorStore) -> None:
    apply_events(store, [create(ALICE, "a1", rev=1, t=1)])
    with api_client(settings_for(store, "app.blento.*")) as client:
        assert _get(client, "/stats/app.blento.empty") == (
            200,
            {
                "collection": "app.blento.empty",
                "unique_users": 0,
                "total_records": 0,
                "last_record_time_us": None,
            },
        )


# --- /backfill -----------------------------------------------------------------------------

BACKFILL_STATUSES = [
    ("pending", "in_progress"),
    ("in_progress", "in_progress"),
    ("failed", "in_progress"),
    ("complete", "complete"),
    ("not_found", "complete"),
    ("takendown", "complete"),
    ("suspended", "complete"),
    ("deactivated", "complete"),
    ("tombstoned", "complete"),
]


def test_backfill_unknown_without_a_row(client: Client, store: MirrorStore) -> None:
    store.init()
    assert _get(client, f"/backfill/{CARD}/{ALICE}") == (
        200,
        {"did": ALICE, "collection": CARD, "status": "unknown", "state": None},
    )


@pytest.mark.parametrize(("state", "status"), BACKFILL_STATUSES)
def test_backfill_status_mapping(file_client: Client, db: Path, state: str, status: str) -> None:
    set_backfill(db, ALICE, CARD, state)
    assert _get(file_client, f"/backfill/{CARD}/{ALICE}") == (
        200,
        {"did": ALICE, "collection": CARD, "status": status, "state": state},
    )
    # Per collection: the other collection of the same DID is still unknown.
    assert _get(file_client, f"/backfill/{PAGE}/{ALICE}") == (
        200,
        {"did": ALICE, "collection": PAGE, "status": "unknown", "state": None},
    )


def test_a_live_record_queues_a_pending_backfill(client: Client, store: MirrorStore) -> None:
    apply_events(store, [create(ALICE, "a1", rev=1, t=1)])
    assert _get(client, f"/backfill/{CARD}/{ALICE}") == (
        200,
        {"did": ALICE, "collection": CARD, "status": "in_progress", "state": "pending"},
    )


def test_backfill_errors(file_client: Client) -> None:
    assert _get(file_client, f"/backfill/app.other.thing/{ALICE}") == (404, NOT_TRACKED)
    assert _get(file_client, f"/backfill/{CARD}/not-a-did") == (400, BAD_DID)


# --- the cursor walk -----------------------------------------------------------------------

SHARED_T = 50.0


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """1,000 records sharing one time_us (10 DIDs x 100 rkeys), 40 before and after it, and
    records of another collection; returns the file and the expected /records order."""
    db = tmp_path_factory.mktemp("crowded") / "mirror.duckdb"
    events = [
        create(did(f"same{d:02d}"), f"r{k:03d}", rev=k, t=SHARED_T)
        for d in range(10)
        for k in range(100)
    ]
    events += [create(did("early"), f"e{i:02d}", rev=i, t=i) for i in range(20)]
    events += [create(did("late"), f"l{i:02d}", rev=i, t=SHARED_T + 1 + i) for i in range(20)]
    events += [create(did("other"), f"o{i}", rev=i, t=SHARED_T, collection=PAGE) for i in range(30)]
    apply_events(db, events)
    expected = newest_first(record_json(e) for e in events if e["commit"]["collection"] == CARD)
    assert sum(1 for r in expected if r["time_us"] == at(SHARED_T)) == 1000
    return db, expected


@pytest.fixture
def crowded_client(crowded: tuple[Path, list[dict[str, Any]]]) -> Iterator[Client]:
    with api_client(settings_for(crowded[0])) as client:
        yield client


@pytest.mark.parametrize("limit", [7, 100, None])
def test_records_walk_returns_each_record_once_in_order(
    crowded: tuple[Path, list[dict[str, Any]]], crowded_client: Client, limit: int | None
) -> None:
    _, expected = crowded
    items, pages = walk(crowded_client, f"/records/{CARD}", "records", limit)
    uris = [r["uri"] for r in items]
    assert len(uris) == len(set(uris)), "a record came back twice"
    assert uris == [r["uri"] for r in expected]
    assert items == expected
    assert pages == math.ceil(len(expected) / (limit or 50))


def test_records_walk_is_stable_while_newer_records_arrive(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    events = [create(did(f"u{d}"), f"r{k:02d}", rev=k, t=10) for d in range(5) for k in range(30)]
    apply_events(db, events)
    expected = [r["uri"] for r in newest_first(record_json(e) for e in events)]
    with api_client(settings_for(db)) as client:
        status, body = _get(client, f"/records/{CARD}", limit=40)
        assert status == 200
        seen = [r["uri"] for r in body["records"]]
        # New records arrive between pages, newer and at the very same time_us: the latter
        # of a DID that sorts above every DID of the walk, so it lies ahead of the cursor,
        # among the records already served.
        ahead = did("zzz")  # did:plc:zzz... sorts above every did:plc:u... of the walk
        assert ahead > max(r["did"] for r in body["records"])
        apply_events(
            db,
            [create(did("new"), f"n{i}", rev=i, t=20 + i) for i in range(10)]
            + [create(ahead, "zz", rev=1, t=10)],
        )
        cursor = body["cursor"]
        while cursor is not None:
            status, body = _get(client, f"/records/{CARD}", limit=40, cursor=cursor)
            assert status == 200
            seen += [r["uri"] for r in body["records"]]
            cursor = body.get("cursor")
    assert seen == expected


@pytest.mark.parametrize("limit", [7, 100])
def test_users_walk_returns_each_user_once_in_order(tmp_path: Path, limit: int) -> None:
    db = tmp_path / "mirror.duckdb"
    counts = {did(f"three{i:02d}"): 3 for i in range(5)}
    counts |= {did(f"two{i:02d}"): 2 for i in range(45)}
    counts |= {did(f"one{i:03d}"): 1 for i in range(110)}
    events = [create(author, f"r{i}", rev=i, t=i) for author, n in counts.items() for i in range(n)]
    events += [create(did("two00"), "p", rev=9, t=9, collection=PAGE)]  # not counted on CARD
    apply_events(db, events)
    expected = [
        {"did": d, "record_count": n}
        for d, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    with api_client(settings_for(db)) as client:
        items, pages = walk(client, f"/users/{CARD}", "users", limit)
    dids = [u["did"] for u in items]
    assert len(dids) == len(set(dids)), "a user came back twice"
    assert items == expected
    assert pages == math.ceil(len(expected) / limit)


# --- limit ---------------------------------------------------------------------------------

INVALID_LIMITS = ["0", "-1", "1.5", "abc", "", " 5", "5 ", "+5", "1e2", "0x10", "٣", "00"]


@pytest.mark.parametrize("path", PAGED)
@pytest.mark.parametrize("limit", INVALID_LIMITS)
def test_invalid_limit_is_400(file_client: Client, path: str, limit: str) -> None:
    response = file_client.get(path, params={"limit": limit})
    assert (response.status_code, response.json()) == (400, BAD_LIMIT)
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    ("limit", "rows"),
    [
        (None, 50),
        ("1", 1),
        ("0001", 1),
        ("100", 100),
        ("101", 100),
        ("1000", 100),
        ("9" * 120, 100),
    ],
)
def test_records_limit(
    crowded: tuple[Path, list[dict[str, Any]]],
    crowded_client: Client,
    limit: str | None,
    rows: int,
) -> None:
    params = {} if limit is None else {"limit": limit}
    status, body = _get(crowded_client, f"/records/{CARD}", **params)
    assert status == 200
    assert body["records"] == crowded[1][:rows]
    assert "cursor" in body


@pytest.mark.parametrize(
    ("limit", "rows"), [(None, 50), ("1", 1), ("7", 7), ("101", 100), ("1000", 100)]
)
def test_users_limit(tmp_path: Path, limit: str | None, rows: int) -> None:
    db = tmp_path / "mirror.duckdb"
    apply_events(db, [create(did(f"u{i:03d}"), "r", rev=1, t=i) for i in range(120)])
    params = {} if limit is None else {"limit": limit}
    with api_client(settings_for(db)) as client:
        status, body = _get(client, f"/users/{CARD}", **params)
    assert status == 200
    assert len(body["users"]) == rows
    assert "cursor" in body


def test_limit_clamp_keeps_the_walk_whole(
    crowded: tuple[Path, Any], crowded_client: Client
) -> None:
    """limit=1000 walks in pages of 100, and its cursors continue where each page ended."""
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str] = {"limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        status, body = _get(crowded_client, f"/records/{CARD}", **params)
        assert status == 200
        seen += [r["uri"] for r in body["records"]]
        if "cursor" not in body:
            break
        assert len(body["records"]) == 100
        cursor = body["cursor"]
    assert seen == [r["uri"] for r in crowded[1]]


# --- cursor --------------------------------------------------------------------------------

INVALID_CURSORS = {
    "empty": "",
    "garbage": "not a cursor!",
    "percent": "%%%",
    "one char": "A",
    "bad padding": "QUJD=A",
    "hello": _b64(b"hello"),
    "json": _b64(json.dumps({"time_us": 1, "uri": "at://x"}).encode()),
    "no text": _b64(b"12 "),
    "no number": _b64(b" at://did:plc:x/app.blento.card/r"),
    "float": _b64(b"1.5 at://did:plc:x/app.blento.card/r"),
    "word": _b64(b"abc at://did:plc:x/app.blento.card/r"),
    "not utf-8": _b64(b"\xff\xfe 1"),
    "standard base64 padding": base64.b64encode(b"hi").decode(),
}


@pytest.mark.parametrize("path", PAGED)
@pytest.mark.parametrize("cursor", INVALID_CURSORS.values(), ids=INVALID_CURSORS.keys())
def test_invalid_cursor_is_400(file_client: Client, db: Path, path: str, cursor: str) -> None:
    FileStore(db).init()
    response = file_client.get(path, params={"cursor": cursor})
    assert (response.status_code, response.json()) == (400, BAD_CURSOR)
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", PAGED)
def test_truncated_cursor_is_400(crowded_client: Client, path: str) -> None:
    """A cursor cut short (a copy-paste, a URL length limit) is not a cursor we gave out.

    Cut at the end, today's cursor still decodes to a plausible position whose tie-breaker
    lost its last characters; answering it with a page silently skips (or repeats) every
    row whose tie-breaker lies between the cut one and the real one.
    """
    # The cursor lands among ties: on /records after the 20 newest and 5 of the 1,000 that
    # share a time_us; on /users after 3 of the 10 DIDs with 100 records each.
    status, body = _get(crowded_client, path, limit=25 if path.startswith("/records") else 3)
    assert status == 200
    cursor = body["cursor"]
    _, honest = _get(crowded_client, path, limit=5, cursor=cursor)
    key = "records" if "records" in honest else "users"
    answers: dict[int, Any] = {}
    for cut in (1, 2, 3, 4, 8, len(cursor) // 2):
        status, page = _get(crowded_client, path, limit=5, cursor=cursor[:-cut])
        answers[cut] = page if status == 400 else f"200, {_page_diff(honest[key], page[key])}"
    assert answers == dict.fromkeys(answers, BAD_CURSOR), (
        f"{path}: truncated cursors accepted ({cursor=}): {answers}"
    )


def _page_diff(honest: list[dict[str, Any]], page: list[dict[str, Any]]) -> str:
    """How a page after a damaged cursor differs from the page after the real one."""
    ids = [item.get("uri") or item["did"] for item in honest]
    got = [item.get("uri") or item["did"] for item in page]
    if got == ids:
        return "the same page"
    return f"starts at {got[0] if got else None} instead of {ids[0]}"


def test_cursor_of_another_endpoint(
    crowded: tuple[Path, list[dict[str, Any]]], crowded_client: Client
) -> None:
    """A cursor names the endpoint it was made by: a /users cursor on /records, or the other
    way round, is a 400, never a page read from a position of another kind."""
    users_path, records_path = f"/users/{CARD}", f"/records/{CARD}"
    status, users = _get(crowded_client, users_path, limit=2)
    assert status == 200 and isinstance(users["cursor"], str), users
    status, records = _get(crowded_client, records_path, limit=2)
    assert status == 200 and isinstance(records["cursor"], str), records
    # Each cursor is good where it was made (an absent or broken one would be a 400 as well):
    # the refusals below come from the endpoint alone.
    status, next_users = _get(crowded_client, users_path, limit=2, cursor=users["cursor"])
    assert status == 200 and len(next_users["users"]) == 2, next_users
    assert not {u["did"] for u in next_users["users"]} & {u["did"] for u in users["users"]}
    status, next_records = _get(crowded_client, records_path, limit=2, cursor=records["cursor"])
    assert (status, next_records["records"]) == (200, crowded[1][2:4])

    assert _get(crowded_client, records_path, cursor=users["cursor"]) == (400, BAD_CURSOR)
    assert _get(crowded_client, users_path, cursor=records["cursor"]) == (400, BAD_CURSOR)


@pytest.mark.parametrize("kind", ["records", "users"])
@pytest.mark.parametrize(
    "position",
    [
        f"{10**19 - 1} x",  # 19 digits, past 64 bits
        f"-{10**19 - 1} x",
        f"{2**63 - 1} \x00",
        f"{-(2**63)} at://{ALICE}/{CARD}/a1",
    ],
)
def test_out_of_range_cursor_is_not_a_500(
    file_client: Client, db: Path, kind: str, position: str
) -> None:
    """Positions at and past the ends of 64 bits, signed with the file's key as if the API
    had made them: the query still answers (an empty page or the whole), or the cursor is
    refused, never a 500."""
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    payload = f"{kind} {position}".encode()
    tag = hashlib.blake2b(payload, digest_size=TAG_BYTES, key=cursor_key(db)).digest()
    status, body = _get(file_client, f"/{kind}/{CARD}", cursor=_b64(tag + payload))
    assert status in (200, 400), body
    assert status == 200 or body == BAD_CURSOR


# --- collections ---------------------------------------------------------------------------

COLLECTION_PATHS = ["/records/{}", "/users/{}", "/stats/{}", "/backfill/{}/" + ALICE]


@pytest.mark.parametrize("template", COLLECTION_PATHS)
@pytest.mark.parametrize(
    "collection",
    ["app.other.thing", "app.blento.cards", "app.blento.card.extra", "APP.BLENTO.CARD", "app"],
)
def test_untracked_collection_is_404(
    file_client: Client, db: Path, template: str, collection: str
) -> None:
    # Even with data for it in the file: only tracked collections are served.
    apply_events(db, [create(ALICE, "x", rev=1, t=1, collection="app.other.thing")])
    response = file_client.get(template.format(collection))
    assert (response.status_code, response.json()) == (404, NOT_TRACKED)
    assert response.headers["access-control-allow-origin"] == "*"


def test_a_collection_with_many_dots(store: MirrorStore) -> None:
    deep = "com.example.very.deeply.nested.thing"
    event = create(ALICE, "d1", rev=1, t=3, collection=deep)
    apply_events(store, [event, create(BOB, "c1", rev=1, t=4)])
    with api_client(settings_for(store, f"{CARD},{deep}")) as client:
        assert _get(client, f"/records/{deep}") == (200, {"records": [record_json(event)]})
        assert _get(client, f"/users/{deep}") == (
            200,
            {"users": [{"did": ALICE, "record_count": 1}]},
        )
        assert _get(client, f"/stats/{deep}") == (
            200,
            {
                "collection": deep,
                "unique_users": 1,
                "total_records": 1,
                "last_record_time_us": at(3),
            },
        )
        assert _get(client, f"/records/{PAGE}") == (404, NOT_TRACKED)


def test_a_wildcard_tracks_every_collection_under_it(store: MirrorStore) -> None:
    anything = create(ALICE, "x1", rev=1, t=1, collection="app.blento.anything")
    card = create(BOB, "c1", rev=1, t=2)
    apply_events(store, [anything, card])
    with api_client(settings_for(store, "app.blento.*")) as client:
        assert _get(client, "/records/app.blento.anything") == (
            200,
            {"records": [record_json(anything)]},
        )
        assert _get(client, f"/records/{CARD}") == (200, {"records": [record_json(card)]})
        assert _get(client, "/records/app.blento.never.seen") == (200, {"records": []})
        assert _get(client, "/backfill/app.blento.anything/" + ALICE) == (
            200,
            {
                "did": ALICE,
                "collection": "app.blento.anything",
                "status": "in_progress",
                "state": "pending",
            },
        )
        for outside in ("app.blento", "app.blentos.card", "app.other.card"):
            assert _get(client, f"/records/{outside}") == (404, NOT_TRACKED), outside


# --- ?did= ---------------------------------------------------------------------------------


def test_did_filters_and_reports_the_backfill(client: Client, store: MirrorStore) -> None:
    alice = [create(ALICE, f"a{i}", rev=i, t=i) for i in range(3)]
    others = [
        create(BOB, "b1", rev=1, t=1.5),
        create(ALICE, "p1", rev=9, t=9, collection=PAGE),
    ]
    apply_events(store, alice + others)
    pending = {"did": ALICE, "collection": CARD, "status": "in_progress", "state": "pending"}
    assert _get(client, f"/records/{CARD}", did=ALICE) == (
        200,
        {"records": newest_first(record_json(e) for e in alice), "backfill": pending},
    )

    status, first = _get(client, f"/records/{CARD}", did=ALICE, limit=2)
    assert status == 200
    assert set(first) == {"records", "cursor", "backfill"}
    assert first["backfill"] == pending
    assert _get(client, f"/records/{CARD}", did=ALICE, limit=2, cursor=first["cursor"]) == (
        200,
        {"records": [record_json(alice[0])], "backfill": pending},
    )

    set_backfill(store, ALICE, CARD, "complete")
    status, body = _get(client, f"/records/{CARD}", did=ALICE)
    assert status == 200
    assert body["backfill"] == {
        "did": ALICE,
        "collection": CARD,
        "status": "complete",
        "state": "complete",
    }
    # A DID with nothing in the mirror.
    assert _get(client, f"/records/{CARD}", did=CAROL) == (
        200,
        {
            "records": [],
            "backfill": {"did": CAROL, "collection": CARD, "status": "unknown", "state": None},
        },
    )
    # Without ?did=, no backfill field.
    status, body = _get(client, f"/records/{CARD}")
    assert status == 200
    assert set(body) == {"records"}


# Not a user anyone can be: broken syntax, methods the protocol does not support, did:plc
# of the wrong length or alphabet, did:web with a port (only localhost may carry one) or
# longer than any host name, handles of no syntax.
INVALID_DIDS = {
    "empty": "",
    "word": "not-a-did",
    "no method": "did:",
    "empty plc": "did:plc:",
    "upper method": "did:PLC:" + "a" * 24,
    "trailing colon": "did:plc:abc:",
    "percent": "did:plc:ab%",
    "3,000 characters": "d" * 3000,
    "2,000-character plc": "did:plc:" + "a" * 2000,
    "short plc": "did:plc:" + "a" * 23,
    "long plc": "did:plc:" + "a" * 25,
    "plc outside base32": "did:plc:" + "a" * 23 + "1",
    "other method": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
    "example method": "did:example:123456789abcdefghi",
    "web with a port": "did:web:example.com%3A8080",
    "web with a path": "did:web:example.com:user:alice",
    "web too long": "did:web:" + ".".join(["a" * 63] * 4) + ".com",
    "ip address": "did:web:127.0.0.1",
    "handle of one label": "alice",
    "handle as an ip": "127.0.0.1",
}


@pytest.mark.parametrize("bad", INVALID_DIDS.values(), ids=INVALID_DIDS.keys())
def test_invalid_did_is_400(file_client: Client, db: Path, bad: str) -> None:
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    assert _get(file_client, f"/records/{CARD}", did=bad) == (400, BAD_DID)
    # In the path, percent-encoded as a client must; an empty segment is no route at all.
    answer = (404, NOT_FOUND) if bad == "" else (400, BAD_DID)
    assert _get(file_client, f"/backfill/{CARD}/{quote(bad, safe='')}") == answer


@pytest.mark.parametrize(
    "good", ["did:plc:" + "a2" * 12, "did:web:example.com", "did:web:localhost%3A2583"]
)
def test_dids_of_the_supported_methods_are_taken(file_client: Client, good: str) -> None:
    assert _get(file_client, f"/records/{CARD}", did=good) == (
        200,
        {
            "records": [],
            "backfill": {"did": good, "collection": CARD, "status": "unknown", "state": None},
        },
    )
    if "%" not in good:  # Litestar decodes a path parameter twice: a `%` cannot be sent
        assert _get(file_client, f"/backfill/{CARD}/{good}") == (
            200,
            {"did": good, "collection": CARD, "status": "unknown", "state": None},
        )


def test_a_handle_the_mirror_knows_stands_for_its_did(client: Client, store: MirrorStore) -> None:
    mine = create(ALICE, "a1", rev=1, t=1)
    apply_events(store, [mine, create(BOB, "b1", rev=1, t=2)])
    set_handle(store, ALICE, "alice.test")
    status, body = _get(client, f"/records/{CARD}", did="Alice.Test")
    assert status == 200
    assert body["records"] == [record_json(mine)]
    assert body["backfill"]["did"] == ALICE
    assert _get(client, f"/records/{CARD}", did="nobody.test") == (400, BAD_DID)


def test_a_handle_only_announced_is_not_known(client: Client, store: MirrorStore) -> None:
    """An identity event names a handle, but the mirror knows it only once checked both
    ways (`accounts.handle`): an announced handle is not a user the API answers for."""
    apply_events(store, [create(ALICE, "a1", rev=1, t=1), identity(ALICE, "claimed.test", t=3)])
    assert _get(client, f"/records/{CARD}", did="claimed.test") == (400, BAD_DID)


def test_did_with_untracked_collection_is_404(file_client: Client) -> None:
    assert _get(file_client, "/records/app.other.thing", did="not-a-did") == (404, NOT_TRACKED)


# --- hidden accounts and deleted records ---------------------------------------------------


@pytest.mark.parametrize("hiding", ["takendown", "deactivated", "suspended"])
def test_hidden_accounts_are_left_out_everywhere(
    client: Client, store: MirrorStore, hiding: str
) -> None:
    alice = [create(ALICE, f"a{i}", rev=i, t=i) for i in range(1, 3)]
    bob = create(BOB, "b1", rev=1, t=5)
    apply_events(store, [*alice, bob])
    everyone = newest_first(record_json(e) for e in [*alice, bob])

    def answers() -> tuple[Any, ...]:
        return (
            _get(client, f"/records/{CARD}"),
            _get(client, f"/users/{CARD}"),
            _get(client, f"/stats/{CARD}"),
            _get(client, f"/records/{CARD}", did=ALICE)[1]["records"],
        )

    visible = answers()
    assert visible[0] == (200, {"records": everyone})

    apply_events(store, [account(ALICE, active=False, status=hiding, t=10)])
    assert answers() == (
        (200, {"records": [record_json(bob)]}),
        (200, {"users": [{"did": BOB, "record_count": 1}]}),
        (
            200,
            {
                "collection": CARD,
                "unique_users": 1,
                "total_records": 1,
                "last_record_time_us": at(5),
            },
        ),
        [],
    )

    apply_events(store, [account(ALICE, active=True, t=20)])
    assert answers() == visible


def test_deleted_records_never_appear(client: Client, store: MirrorStore) -> None:
    apply_events(
        store,
        [
            create(ALICE, "gone", rev=1, t=1),
            create(ALICE, "kept", rev=2, t=2),
            create(BOB, "only", rev=1, t=3),
        ],
    )
    apply_events(store, [delete(ALICE, "gone", rev=3, t=4), delete(BOB, "only", rev=2, t=5)])
    # A replayed create older than the delete stays deleted.
    apply_events(store, [create(ALICE, "gone", rev=1, t=1)])
    kept = record_json(create(ALICE, "kept", rev=2, t=2))
    assert _get(client, f"/records/{CARD}") == (200, {"records": [kept]})
    assert _get(client, f"/records/{CARD}", did=BOB)[1]["records"] == []
    assert _get(client, f"/users/{CARD}") == (200, {"users": [{"did": ALICE, "record_count": 1}]})
    assert _get(client, f"/stats/{CARD}") == (
        200,
        {"collection": CARD, "unique_users": 1, "total_records": 1, "last_record_time_us": at(2)},
    )


def test_deleted_account_records_are_gone(client: Client, store: MirrorStore) -> None:
    apply_events(store, [create(ALICE, "a1", rev=1, t=1), create(BOB, "b1", rev=1, t=2)])
    apply_events(store, [account(ALICE, active=False, status="deleted", t=5)])
    assert _get(client, f"/users/{CARD}") == (200, {"users": [{"did": BOB, "record_count": 1}]})


# --- errors and CORS -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/no/such/path",
        "/records",
        "/records/",
        f"/records/{CARD}/extra",
        "/users",
        "/stats/",
        f"/backfill/{CARD}",
        f"/backfill/{CARD}/{ALICE}/more",
        "/schema/nothing-here",
    ],
)
def test_unknown_path_is_404(file_client: Client, path: str) -> None:
    response = file_client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json"), (
        f"{path}: a {response.headers['content-type']} 404: {response.text.strip()[:60]!r}"
    )
    assert response.json() == NOT_FOUND
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(file_client: Client, db: Path, path: str, method: str) -> None:
    response = file_client.request(method, path, json={"x": 1})
    assert (response.status_code, response.json()) == (405, NOT_ALLOWED)
    assert response.headers["access-control-allow-origin"] == "*"
    assert not db.exists()  # nothing was written


CORS_CASES = {
    "200 health": ("GET", "/health", 200),
    "200 records": ("GET", f"/records/{CARD}", 200),
    "200 schema": ("GET", "/schema/openapi.json", 200),
    "400 limit": ("GET", f"/records/{CARD}?limit=0", 400),
    "400 cursor": ("GET", f"/users/{CARD}?cursor=x", 400),
    "400 did": ("GET", f"/records/{CARD}?did=x", 400),
    "404 path": ("GET", "/nope", 404),
    "404 collection": ("GET", "/stats/app.other.thing", 404),
    "405": ("DELETE", f"/records/{CARD}", 405),
}


@pytest.mark.parametrize("origin", [None, "https://example.com", "null"])
@pytest.mark.parametrize("case", CORS_CASES.values(), ids=CORS_CASES.keys())
def test_cors_header_on_every_answer(
    file_client: Client, case: tuple[str, str, int], origin: str | None
) -> None:
    method, path, status = case
    headers = {} if origin is None else {"Origin": origin}
    response = file_client.request(method, path, headers=headers)
    assert response.status_code == status
    assert response.headers.get_list("access-control-allow-origin") == ["*"]


def test_cors_header_does_not_depend_on_origin(file_client: Client) -> None:
    response = file_client.get("/health", headers={"Origin": "https://example.com"})
    assert response.headers["access-control-allow-origin"] == "*"


# --- OpenAPI -------------------------------------------------------------------------------


def test_openapi_document_lists_every_path(file_client: Client) -> None:
    response = file_client.get("/schema/openapi.json")
    assert response.status_code == 200
    document = json.loads(response.text)
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in [
        "/",
        "/health",
        "/cursor",
        "/records/{collection}",
        "/users/{collection}",
        "/stats/{collection}",
        "/backfill/{collection}/{did}",
    ]:
        assert path in paths, f"{path} missing from {sorted(paths)}"
        assert set(paths[path]) >= {"get"}, paths[path]
    params = {p["name"] for p in paths["/records/{collection}"]["get"]["parameters"]}
    assert params >= {"collection", "limit", "cursor", "did"}
    # A record is served as stored, and described as what it is: an object.
    record = document["components"]["schemas"]["Record"]["properties"]["record"]
    assert record["type"] == "object", record


def test_schema_page(file_client: Client) -> None:
    response = file_client.get("/schema")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


# --- the file: fresh reads, and never held while idle --------------------------------------


def test_reads_see_writes_made_after_the_app_started(client: Client, store: MirrorStore) -> None:
    assert _get(client, f"/records/{CARD}") == (200, {"records": []})  # no file yet
    first = create(ALICE, "a1", rev=1, t=1)
    apply_events(store, [first])  # creates the file while the app runs
    assert _get(client, f"/records/{CARD}") == (200, {"records": [record_json(first)]})
    second = create(BOB, "b1", rev=1, t=2)
    apply_events(store, [second])
    assert _get(client, f"/records/{CARD}") == (
        200,
        {"records": [record_json(second), record_json(first)]},
    )
    assert _get(client, f"/stats/{CARD}")[1]["total_records"] == 2
    store_cursor(store, at(3))
    assert _get(client, "/cursor")[1]["time_us"] == at(3)


@pytest.mark.parametrize(
    "path",
    [*ENDPOINTS, f"/records/{CARD}?did={ALICE}", f"/records/{CARD}?limit=0", "/nope"],
)
def test_the_api_holds_nothing_when_idle(file_client: Client, db: Path, path: str) -> None:
    """The file stays attached a moment after a request (LINGER_SECONDS), then is let go;
    a writer never waits for that moment."""
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    response = file_client.get(path)
    assert response.status_code in (200, 400, 404)
    deadline = time.monotonic() + LINGER_SECONDS + 5
    while open_files_of(db) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_files_of(db) == [], "the DuckDB file is still open long after the request"
    # A writer gets the file right away, and so does one right after a request.
    apply_events(db, [create(BOB, "b1", rev=1, t=2)])
    assert file_client.get(path).status_code == response.status_code
    with write_lock(db, timeout=0.1):  # raises LockTimeoutError if the API keeps the file
        assert open_files_of(db) == []


def test_requests_wait_for_a_short_write(file_client: Client, db: Path) -> None:
    """A request that arrives while a writer holds the file waits for it, then answers."""
    event = create(ALICE, "a1", rev=1, t=1)
    apply_events(db, [event])
    with write_lock(db, timeout=1):
        holding_since = time.monotonic()
        answer: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: answer.update(r=_get(file_client, f"/records/{CARD}")), daemon=True
        )
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "the request did not wait for the writer"
    thread.join(timeout=10)
    assert answer["r"] == (200, {"records": [record_json(event)]})
    assert time.monotonic() - holding_since >= 0.3


def test_a_writer_holding_the_file_too_long_is_a_503(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/api.md: readers wait for a writer; "a 503 is for a writer that holds the
    file far past its budget". The reader's lock timeout is shortened to make it testable."""
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    monkeypatch.setattr(reader_module, "FileSource", partial(FileSource, lock_timeout=0.2))
    with api_client(settings_for(db)) as client, write_lock(db, timeout=1):
        response = client.get(f"/records/{CARD}")
    assert response.status_code == 503, response.text
    assert set(response.json()) == {"error"}
    assert response.headers["access-control-allow-origin"] == "*"
