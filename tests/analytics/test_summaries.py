"""The summaries behind /users and /stats: rebuilt by the ingest job, equal to counting the
`records` view, and read by the API once they exist (on each store where a test takes
`store`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api import queries
from mirror_api.app import create_app
from mirror_assets.analytics.summaries import rebuild_summaries
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import Settings
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from tests.support.dagster_helpers import ingest_mirror, run_job
from tests.support.events_factory import CARD, PAGE, account, create, delete, did
from tests.support.jetstream_server import JetstreamServer
from tests.support.store_helpers import Where, apply_events, settings_on, store_of

ALICE, BOB, CAROL = did("alice"), did("bob"), did("carol")


def _mixed_file(where: Where) -> None:
    """Two collections, equal counts, a deleted record, a hidden account."""
    apply_events(
        where,
        [
            *(create(ALICE, f"a{i}", rev=i + 1, t=i) for i in range(3)),
            *(create(BOB, f"b{i}", rev=i + 1, t=10 + i) for i in range(3)),
            create(BOB, "p1", rev=9, t=20, collection=PAGE),
            *(create(CAROL, f"c{i}", rev=i + 1, t=30 + i) for i in range(4)),
            delete(ALICE, "a2", rev=20, t=40),
            account(CAROL, active=False, status="takendown", t=41),
        ],
    )


Counts = tuple[list[tuple[str, str, int]], list[tuple[str, int, int, int, int]]]


def _live(where: Where) -> Counts:
    with store_of(where).reading() as con:
        users = con.execute(
            "SELECT collection, did, count(*) FROM records GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        stats = con.execute(
            "SELECT collection, count(DISTINCT did), count(*), min(time_us), max(time_us) "
            "FROM records GROUP BY collection ORDER BY collection"
        ).fetchall()
    return users, stats


def _summaries(where: Where) -> Counts:
    with store_of(where).reading() as con:
        users = con.execute("SELECT * FROM user_counts ORDER BY ALL").fetchall()
        stats = con.execute(
            "SELECT collection, unique_users, total_records, first_record_time_us, "
            "last_record_time_us FROM collection_stats ORDER BY collection"
        ).fetchall()
    return users, stats


def test_a_rebuild_equals_counting_the_records_view(store: MirrorStore) -> None:
    _mixed_file(store)
    counts, _ = store.transact(rebuild_summaries)
    assert (counts.collections, counts.user_rows) == (2, 3)
    assert _summaries(store) == _live(store)
    assert _summaries(store)[0] == [(CARD, ALICE, 2), (CARD, BOB, 3), (PAGE, BOB, 1)]

    apply_events(store, [create(CAROL, "c9", rev=50, t=50), account(CAROL, active=True, t=51)])
    store.transact(rebuild_summaries)
    assert _summaries(store) == _live(store)
    assert (CARD, CAROL, 5) in _summaries(store)[0]


def test_the_api_reads_the_summaries_once_built(store: MirrorStore) -> None:
    _mixed_file(store)
    settings = settings_on(store, Settings(collections=CollectionFilter.parse(f"{CARD},{PAGE}")))
    with TestClient(app=create_app(settings)) as client:
        live_users = client.get(f"/users/{CARD}").json()
        live_stats = client.get(f"/stats/{CARD}").json()
        store.transact(rebuild_summaries)
        assert client.get(f"/users/{CARD}").json() == live_users
        assert client.get(f"/stats/{CARD}").json() == live_stats
        assert live_users == {
            "users": [{"did": BOB, "record_count": 3}, {"did": ALICE, "record_count": 2}]
        }

        # Until the next rebuild the answers are the summaries', not a live count.
        apply_events(store, [create(ALICE, "a7", rev=70, t=70), create(ALICE, "a8", rev=71, t=71)])
        assert client.get(f"/users/{CARD}").json() == live_users
        store.transact(rebuild_summaries)
        first = client.get(f"/users/{CARD}", params={"limit": 1}).json()
        assert first["users"] == [{"did": ALICE, "record_count": 4}]
        rest = client.get(f"/users/{CARD}", params={"cursor": first["cursor"]}).json()
        assert rest == {"users": [{"did": BOB, "record_count": 3}]}
        stats = client.get(f"/stats/{CARD}").json()
        assert (stats["unique_users"], stats["total_records"]) == (2, 7)
        assert client.get("/stats/app.blento.page").json()["total_records"] == 1


def test_the_ingest_job_rebuilds_the_summaries_after_records(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    with JetstreamServer() as server:
        for n in range(5):
            server.add(create(did(f"user{n % 2}"), f"r{n}", rev=n + 1, t=n))
        result = run_job(ingest_mirror(db, server.url), "ingest")
    assert result.success
    rows = {
        materialization.asset_key.to_user_string(): materialization.metadata[
            "dagster/row_count"
        ].value
        for materialization in result.asset_materializations_for_node("collection_summaries")
    }
    assert rows == {"user_counts": 2, "collection_stats": 1}
    assert _summaries(db) == _live(db)


def _walk(client: TestClient[Litestar], collection: str, user: str) -> list[str]:
    uris: list[str] = []
    params = {"did": user, "limit": "1"}
    while True:
        page = client.get(f"/records/{collection}", params=params).json()
        uris += [record["uri"] for record in page["records"]]
        if "cursor" not in page:
            return uris
        params["cursor"] = page["cursor"]


def test_a_users_pages_are_the_same_through_the_did_index_and_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "mirror.duckdb"
    _mixed_file(db)
    apply_events(db, [create(ALICE, "same-time", rev=30, t=1)])  # shares a time_us with a1
    with FileStore(db).writing() as tx:
        rebuild_summaries(tx.con)
    settings = Settings(
        db_path=db,
        collections=CollectionFilter.parse(f"{CARD},{PAGE}"),
        dagster_url="http://127.0.0.1:9",  # nothing there: `?did=` answers at once
        backfill_wait_seconds=0.0,
    )
    pairs = [(CARD, ALICE), (CARD, BOB), (PAGE, BOB), (CARD, CAROL), (PAGE, ALICE)]
    with TestClient(app=create_app(settings)) as client:
        through_index = {pair: _walk(client, *pair) for pair in pairs}
        monkeypatch.setattr(queries, "INDEXED_USER_RECORDS", 0)  # every user scanned
        scanned = {pair: _walk(client, *pair) for pair in pairs}
    assert through_index == scanned
    assert through_index[(CARD, ALICE)] == [
        f"at://{ALICE}/{CARD}/{rkey}" for rkey in ("same-time", "a1", "a0")
    ]
    assert through_index[(CARD, CAROL)] == []  # hidden
    assert through_index[(PAGE, BOB)] == [f"at://{BOB}/{PAGE}/p1"]


def test_pages_found_through_time_windows_are_the_pages_of_a_full_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page search looks in windows of time sized from `collection_stats`; skewed times
    (a burst of equal times, a sparse tail, a long gap) and records written after the
    summary, newer than its last and older than its first, must not change a single page."""
    db = tmp_path / "mirror.duckdb"
    burst = [create(ALICE, f"burst{i:03d}", rev=i + 1, t=1000) for i in range(120)]
    tail = [create(BOB, f"tail{i:03d}", rev=i + 1, t=i * 997) for i in range(40)]
    old = [create(CAROL, f"old{i}", rev=i + 1, t=-(10**6) - i) for i in range(5)]
    apply_events(db, [*burst, *tail, *old, delete(BOB, "tail003", rev=100, t=5000)])
    with FileStore(db).writing() as tx:
        rebuild_summaries(tx.con)
    later = [create(did("dave"), f"new{i}", rev=i + 1, t=10**6 + i) for i in range(30)]
    older = [create(did("erin"), f"ancient{i}", rev=i + 1, t=-(10**7) - i) for i in range(30)]
    apply_events(db, [*later, *older])
    with FileStore(db).reading() as con:
        expected = [
            row[0]
            for row in con.execute(
                "SELECT uri FROM records WHERE collection = ? ORDER BY time_us DESC, uri DESC",
                [CARD],
            ).fetchall()
        ]
    assert len(expected) == 120 + 39 + 5 + 30 + 30
    settings = Settings(
        db_path=db,
        collections=CollectionFilter.parse(CARD),
        dagster_url="http://127.0.0.1:9",
        backfill_wait_seconds=0.0,
    )
    monkeypatch.setattr(queries, "INDEXED_USER_RECORDS", 0)  # `?did=` pages scan too
    with TestClient(app=create_app(settings)) as client:
        for limit in ("1", "7", "50", "100"):
            uris: list[str] = []
            params = {"limit": limit}
            while True:
                page = client.get(f"/records/{CARD}", params=params).json()
                uris += [record["uri"] for record in page["records"]]
                if "cursor" not in page:
                    break
                params["cursor"] = page["cursor"]
            assert uris == expected, f"limit {limit}"
        assert _walk(client, CARD, BOB) == [u for u in expected if f"/{BOB}/" in u]
