"""The analytics tables: daily activity from the apply log, and first and last record times,
materialized by the ingest job against a real file; the roll-up on each store (`store`)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

from mirror_assets.analytics.activity import roll_up_activity
from mirror_assets.model.apply import apply_commits
from mirror_assets.network.pds import RecordEntry
from mirror_assets.runs.backfill import page_rows
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from tests.support.dagster_helpers import ingest_mirror, metadata_of, run_job
from tests.support.events_factory import (
    CARD,
    PAGE,
    SECOND,
    account,
    at,
    cid_of,
    create,
    delete,
    did,
    record_body,
    rev_tid,
    update,
)
from tests.support.jetstream_server import JetstreamServer
from tests.support.store_helpers import Where, apply_events, store_of

ALICE, BOB = did("alice"), did("bob")
DAY = 86_400.0  # seconds
Activity = list[tuple[str, date, int, int, int, int]]


def _day(t: float) -> date:
    return datetime.fromtimestamp(at(t) / SECOND, tz=UTC).date()


def _activity(where: Where) -> Activity:
    store = store_of(where)
    store.transact(roll_up_activity)
    with store.reading() as con:
        return con.execute("SELECT * FROM daily_activity ORDER BY collection, day").fetchall()


def _log_rows(where: Where) -> int:
    with store_of(where).reading() as con:
        return int(con.execute("SELECT count(*) FROM activity_log").fetchall()[0][0])


def test_live_creates_updates_and_deletes_count_on_their_day_once(store: MirrorStore) -> None:
    day_one = [
        create(ALICE, "a1", rev=1, t=0),
        create(ALICE, "a2", rev=2, t=1),
        update(ALICE, "a1", rev=3, t=2),
        create(BOB, "p1", rev=1, t=3, collection=PAGE),
    ]
    day_two = [
        delete(ALICE, "a2", rev=4, t=DAY),
        delete(ALICE, "never-seen", rev=5, t=DAY + 1),  # a delete of a record made before us
        create(ALICE, "a2", rev=6, t=DAY + 2),  # the same rkey made again
        update(ALICE, "a1", rev=7, t=DAY + 3, text="edited"),  # the same CID as rev 3: no change
    ]
    apply_events(store, day_one)
    apply_events(store, day_two)
    expected = [
        (CARD, _day(0), 2, 1, 0, 0),
        (CARD, _day(DAY), 1, 0, 2, 0),
        (PAGE, _day(0), 1, 0, 0, 0),
    ]
    assert _activity(store) == expected
    # A replay of both batches (a rewound cursor) changes nothing, so it counts nothing.
    apply_events(store, day_one + day_two)
    assert _activity(store) == expected


def test_an_account_deletion_is_not_counted_as_record_deletes(store: MirrorStore) -> None:
    apply_events(store, [create(ALICE, "a1", rev=1, t=0), create(ALICE, "a2", rev=2, t=1)])
    apply_events(store, [account(ALICE, active=False, status="deleted", t=2)])
    assert _activity(store) == [(CARD, _day(0), 2, 0, 0, 0)]


def _entry(rkey: str, t: float, text: str = "hello") -> RecordEntry:
    body = record_body(CARD, text)
    return RecordEntry(rkey, cid_of(body), json.dumps(body).encode(), at(t))


def test_backfilled_history_counts_on_the_records_own_days(store: MirrorStore) -> None:
    apply_events(store, [create(ALICE, "live", rev=10, t=30 * DAY)])
    page = [_entry("old1", 0), _entry("old2", 1), _entry("older", -DAY), _entry("live", 30 * DAY)]
    store.transact(lambda con: apply_commits(con, page_rows(ALICE, CARD, rev_tid(11), page)))
    expected = [
        (CARD, _day(-DAY), 1, 0, 0, 1),
        (CARD, _day(0), 2, 0, 0, 2),
        (CARD, _day(30 * DAY), 1, 0, 0, 0),  # the live create; its re-read changed nothing
    ]
    assert _activity(store) == expected
    # A later pass re-reads the same records at a newer rev, one of them edited meanwhile.
    page[0] = _entry("old1", 0, text="edited while away")
    store.transact(lambda con: apply_commits(con, page_rows(ALICE, CARD, rev_tid(12), page)))
    expected[1] = (CARD, _day(0), 2, 1, 0, 2)
    assert _activity(store) == expected


def test_the_roll_up_compacts_the_log_to_one_row_per_source_collection_and_day(
    store: MirrorStore,
) -> None:
    for n in range(6):  # six transactions on the same day
        apply_events(store, [create(ALICE, f"r{n}", rev=n + 1, t=n)])
    assert _log_rows(store) == 6
    first = _activity(store)
    assert _log_rows(store) == 1
    assert _activity(store) == first == [(CARD, _day(0), 6, 0, 0, 0)]


def test_the_ingest_job_materializes_every_analytics_table(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    with JetstreamServer() as server:
        server.add(create(ALICE, "a1", rev=1, t=0))
        server.add(create(BOB, "b1", rev=1, t=DAY))
        server.add(update(ALICE, "a1", rev=2, t=DAY + 1))
        server.add(create(BOB, "b2", rev=2, t=DAY + 2))
        result = run_job(ingest_mirror(db, server.url), "ingest")
    assert result.success
    [activity] = result.asset_materializations_for_node("daily_activity")
    metadata = metadata_of(activity)
    assert metadata == {
        "dagster/row_count": 2,
        "collections": 1,
        "first_day": str(_day(0)),
        "last_day": str(_day(DAY)),
    }
    with FileStore(db).reading() as con:
        assert con.execute("SELECT * FROM daily_activity ORDER BY day").fetchall() == [
            (CARD, _day(0), 1, 0, 0, 0),
            (CARD, _day(DAY), 2, 1, 0, 0),
        ]
        stats = con.execute(
            "SELECT unique_users, total_records, first_record_time_us, last_record_time_us "
            "FROM collection_stats"
        ).fetchall()
    # a1's time is its update's: the live row carries the time of its newest version.
    assert stats == [(2, 3, at(DAY), at(DAY + 2))]
