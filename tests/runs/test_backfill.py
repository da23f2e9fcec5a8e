"""run_backfill against a real PLC/PDS stand-in on 127.0.0.1 and a real store: the tests of
what a backfill leaves in the store (`store`) run on the DuckDB file and on the lake.

Every test compares the whole stored state of a DID's listing (URI, CID, record JSON, rev,
time_us, deleted and hidden flags of every row) with what the PDS holds, and the `backfills`
row with the pages and records it reports. The PDS side is `tests/support/atproto_server.py`; live
Jetstream events go through the real apply path (`tests/support/store_helpers.apply_events`).

Revs: the stand-in hands out revs from its own clock, a day after the `rev_tid(n)` revs of
`events_factory`, so a live event *newer* than a backfill pass carries `net.rev(did)` read
after the change on the PDS (or `net.new_rev()`), and an *old* replay carries `rev_tid(n)`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from mirror_assets.atproto.events import CursorGap
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, Settings
from mirror_assets.model.backfills import due_dids, queue
from mirror_assets.runs.backfill import BackfillReport, run_backfill
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from tests.support.atproto_server import (
    GET_LATEST_COMMIT,
    LIST_RECORDS,
    PLC,
    AtprotoStandIn,
    endpoint_of,
)
from tests.support.dns_server import running_dns
from tests.support.events_factory import (
    BASE_US,
    CARD,
    PAGE,
    Event,
    account,
    at,
    create,
    delete,
    did,
    identity,
    record_body,
    tid,
    update,
)
from tests.support.store_helpers import ENDPOINT, Where, apply_events, settings_on, store_of

UNTRACKED = "app.bsky.feed.like"
TRACKED = f"{CARD},{PAGE}"
ROOT = Path(__file__).resolve().parents[2]
_B32 = "234567abcdefghijklmnopqrstuvwxyz"


def plc(name: str) -> str:
    """A resolvable did:plc (24 characters of [a-z2-7]) starting with `name`."""
    return did(f"{name:x<24}"[:24])


# -- fixtures and settings ------------------------------------------------------------------


def settings_for(
    where: Where,
    net: AtprotoStandIn,
    *,
    collections: str = TRACKED,
    allow_private_network: bool = True,
    dns_servers: tuple[str, ...] = (),
    **limits: Any,
) -> Settings:
    backfill = {
        "http_backoff_seconds": 0.01,
        "http_timeout_seconds": 10.0,
        "http_attempts": 3,
        "retry_seconds": 600.0,
        **limits,
    }
    settings = Settings(
        plc_url=net.url,
        relay_url=net.url,
        allow_private_network=allow_private_network,
        dns_servers=dns_servers,
        collections=CollectionFilter.parse(collections),
        backfill=BackfillLimits(**backfill),
    )
    return settings_on(where, settings)


def queue_backfills(where: Where, *pairs: tuple[str, str]) -> None:
    with store_of(where).writing() as tx:
        queue(tx.con, list(pairs))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class BackgroundRun:
    """run_backfill in a thread (for tests that act while the PDS holds a page)."""

    def __init__(self, settings: Settings, dids: list[str], store: MirrorStore) -> None:
        self.report: BackfillReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(settings, dids, store), daemon=True)
        self._thread.start()

    def _run(self, settings: Settings, dids: list[str], store: MirrorStore) -> None:
        try:
            self.report = run_backfill(settings, dids, store=store)
        except BaseException as error:
            self.error = error

    def join(self) -> BackfillReport:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the backfill run did not end"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


# -- reading the store and the stand-in ------------------------------------------------------


class Row(NamedTuple):
    """A row of `record_versions` (the live record or its tombstone), minus indexed_at."""

    cid: str | None
    record: dict[str, Any] | None
    rev: str
    time_us: int
    deleted: bool
    hidden: bool


class BackfillRow(NamedTuple):
    status: str
    pds_cursor: str | None
    repo_rev: str | None
    pages: int
    records: int
    attempts: int
    last_error: str | None
    retry_delay: timedelta | None  # next_attempt_at - updated_at


def uri_of(did_: str, collection: str, rkey: str) -> str:
    return f"at://{did_}/{collection}/{rkey}"


def stored(where: Where, did_: str, collection: str | None = None) -> dict[str, Row]:
    """Every row of the DID (or of one of its collections), by URI; one row per URI."""
    query = (
        "SELECT uri, collection, cid, record, rev, time_us, deleted, hidden "
        "FROM record_versions WHERE did = ?"
    )
    result: dict[str, Row] = {}
    with store_of(where).reading() as con:
        rows = con.execute(query, [did_]).fetchall()
    for uri, coll, cid, record, rev, time_us, deleted, hidden in rows:
        if collection is not None and coll != collection:
            continue
        assert uri not in result, f"two rows for {uri}"
        value = None if record is None else json.loads(record)
        result[uri] = Row(cid, value, rev, time_us, deleted, hidden)
    return result


def visible(where: Where, did_: str) -> set[str]:
    """URIs of the DID in the `records` view."""
    with store_of(where).reading() as con:
        rows = con.execute("SELECT uri FROM records WHERE did = ?", [did_]).fetchall()
    return {row[0] for row in rows}


def backfill_row(where: Where, did_: str, collection: str = CARD) -> BackfillRow | None:
    with store_of(where).reading() as con:
        rows = con.execute(
            "SELECT status, pds_cursor, repo_rev, pages, records, attempts, last_error, "
            "next_attempt_at - updated_at FROM backfills WHERE did = ? AND collection = ?",
            [did_, collection],
        ).fetchall()
    assert len(rows) <= 1, f"{len(rows)} backfill rows for {did_} {collection}: {rows}"
    return BackfillRow(*rows[0]) if rows else None


def pages_saved(where: Where, did_: str) -> int:
    row = backfill_row(where, did_)
    return -1 if row is None else row.pages


def status_of(where: Where, did_: str) -> str | None:
    row = backfill_row(where, did_)
    return None if row is None else row.status


def handle_of(where: Where, did_: str) -> str | None:
    with store_of(where).reading() as con:
        rows = con.execute("SELECT handle FROM accounts WHERE did = ?", [did_]).fetchall()
    return rows[0][0] if rows else None


def pds_document(did_: str, endpoint: str, handle: str | None = None) -> dict[str, Any]:
    return {
        "id": did_,
        "alsoKnownAs": [f"at://{handle}"] if handle else [],
        "service": [
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": endpoint}
        ],
    }


def due(where: Where) -> list[str]:
    with store_of(where).reading() as con:
        return due_dids(con)


def tid_us(rkey: str) -> int:
    """The microseconds of a TID rkey (decoded here, independently of record_time.py)."""
    value = 0
    for char in rkey:
        value = value * 32 + _B32.index(char)
    return value >> 10


def pds_rows(
    net: AtprotoStandIn, did_: str, collection: str, rev: str, *, hidden: bool = False
) -> dict[str, Row]:
    """What a complete listing at `rev` must leave: every PDS record, timed by its TID rkey."""
    return {
        uri_of(did_, collection, rkey): Row(cid, value, rev, tid_us(rkey), False, hidden)
        for rkey, (cid, value) in net.records(did_, collection).items()
    }


def list_queries(net: AtprotoStandIn, did_: str, since: int = 0) -> list[dict[str, str]]:
    """The query of every listRecords request for the DID, from request number `since` on."""
    return [
        query
        for path, query in net.requests[since:]
        if endpoint_of(path) == LIST_RECORDS and query.get("repo") == did_
    ]


def newest_first(rkeys: list[str]) -> list[str]:
    return sorted(rkeys, reverse=True)


def with_rev(event: Event, rev: str) -> Event:
    """The event with a TID rev of the stand-in's clock (newer than any pass so far)."""
    event["commit"]["rev"] = rev
    return event


# -- 1. complete listings: page edges, counters, requests, times --------------------------------


def test_listings_of_0_1_100_and_1050_records_are_complete_and_exact(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    sizes = {plc("zero"): 0, plc("one"): 1, plc("hundred"): 100, plc("big"): 1050}
    times: dict[str, int] = {}
    for k, (d, n) in enumerate(sizes.items()):
        net.add_account(d, handle=f"{d[-6:]}.test")
        start = BASE_US + k * 10_000_000
        for i, rkey in enumerate(net.create_records(d, CARD, n, start_us=start) if n else []):
            times[uri_of(d, CARD, rkey)] = start + i
    queue_backfills(store, *((d, CARD) for d in sizes))

    report = run_backfill(settings_for(store, net), list(sizes), store=store)

    pages = {d: (n + 99) // 100 for d, n in sizes.items()}  # non-empty pages: 0, 1, 1, 11
    assert report.tasks == 4 and report.dids == 4
    assert report.completed == 4 and report.paused == 0 and not report.ended
    assert report.pages == sum(pages.values()) + 4  # each listing ends on an empty page
    assert report.records_listed == report.applied.upserted == 1151
    assert sorted(report.done_dids) == sorted(sizes)
    for d, n in sizes.items():
        rows = stored(store, d)
        assert rows == pds_rows(net, d, CARD, net.rev(d)), d
        assert len(rows) == n
        # Record time is the TID's microseconds (createdAt only has milliseconds).
        assert {uri: row.time_us for uri, row in rows.items()} == {
            uri: t for uri, t in times.items() if uri.startswith(f"at://{d}/")
        }
        assert backfill_row(store, d) == BackfillRow(
            "complete", None, net.rev(d), pages[d], n, 0, None, None
        )
        queries = list_queries(net, d)
        assert len(queries) == pages[d] + 1, d
        assert all(q["limit"] == "100" and q["collection"] == CARD for q in queries)
        assert "cursor" not in queries[0]
        # Each next page starts at the last rkey of the one before (newest first).
        rkeys = newest_first([uri.rsplit("/", 1)[1] for uri in rows])
        assert [q.get("cursor") for q in queries[1:]] == rkeys[99::100] + (
            [rkeys[-1]] if n % 100 else []
        )
        assert sum(1 for p, q in net.requests if endpoint_of(p) == PLC and d in p) == 1
        assert (
            sum(1 for p, q in net.requests if endpoint_of(p) == GET_LATEST_COMMIT and q["did"] == d)
            == 1
        )
    assert set(visible(store, plc("big"))) == set(pds_rows(net, plc("big"), CARD, "x"))
    # Their DID documents claim handles that resolve nowhere: none is believed.
    assert {d: handle_of(store, d) for d in sizes} == dict.fromkeys(sizes)


def test_record_time_from_tid_else_created_at_else_first_seen(
    net: AtprotoStandIn, db: Path
) -> None:
    d = plc("times")
    net.add_account(d)
    tid_rkey = tid(BASE_US + 123_457)
    net.put_record(d, CARD, tid_rkey, {"$type": CARD, "createdAt": "2020-01-01T00:00:00.000Z"})
    net.put_record(d, CARD, "self", {"$type": CARD, "createdAt": "2023-05-06T07:08:09.123Z"})
    net.put_record(d, CARD, "nodate", {"$type": CARD, "text": "no createdAt"})
    net.put_record(d, CARD, "future", {"$type": CARD, "createdAt": "2999-01-01T00:00:00Z"})
    queue_backfills(db, (d, CARD))
    before = time.time_ns() // 1000
    run_backfill(settings_for(db, net), [d])
    after = time.time_ns() // 1000

    times = {uri.rsplit("/", 1)[1]: row.time_us for uri, row in stored(db, d).items()}
    assert times[tid_rkey] == BASE_US + 123_457
    assert times["self"] == 1_683_356_889_123_000
    assert before <= times["nodate"] <= after
    assert before <= times["future"] <= after  # a time after the fetch cannot be real


# -- 2. collections -------------------------------------------------------------------------


def test_each_tracked_collection_is_listed_and_an_untracked_one_never(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d = plc("collections")
    net.add_account(d)
    net.create_records(d, CARD, 130)
    net.create_records(d, PAGE, 7, start_us=BASE_US + 5_000_000)
    net.create_records(d, UNTRACKED, 20, start_us=BASE_US + 9_000_000)
    # Queued the way the live stream queues them: one create per tracked collection.
    apply_events(
        store,
        [
            create(d, "live1", rev=1, t=1, collection=CARD),
            create(d, "live2", rev=2, t=2, collection=PAGE),
        ],
    )
    report = run_backfill(settings_for(store, net), [d], store=store)

    rev = net.rev(d)
    assert report.completed == 2
    for collection, pages, n in ((CARD, 2, 130), (PAGE, 1, 7)):
        expected = pds_rows(net, d, collection, rev)
        # The live create the PDS does not have is older than the pass: deleted unseen.
        live_uri = uri_of(d, collection, "live1" if collection == CARD else "live2")
        expected[live_uri] = Row(None, None, rev, at(1 if collection == CARD else 2), True, False)
        assert stored(store, d, collection) == expected
        assert backfill_row(store, d, collection) == BackfillRow(
            "complete", None, rev, pages, n, 0, None, None
        )
        assert len([q for q in list_queries(net, d) if q["collection"] == collection]) == pages + 1
    assert report.removed == 2
    assert not [q for q in list_queries(net, d) if q["collection"] == UNTRACKED]
    assert stored(store, d, UNTRACKED) == {}


def test_a_backfill_of_a_collection_no_longer_tracked_is_not_listed(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    """COLLECTIONS once named app.bsky.feed.like and a backfill of it was queued; the mirror
    no longer tracks it, so a run (after a cursor gap re-queued everything) must not list it:
    the live stream no longer keeps those records current."""
    d = plc("formerly")
    net.add_account(d)
    net.create_records(d, CARD, 3)
    net.create_records(d, UNTRACKED, 5, start_us=BASE_US + 9_000_000)
    queue_backfills(store, (d, CARD), (d, UNTRACKED))
    apply_events(store, [], gaps=[CursorGap(ENDPOINT, at(0), at(600))])

    run_backfill(settings_for(store, net, collections=CARD), [d], store=store)

    assert stored(store, d, CARD) == pds_rows(net, d, CARD, net.rev(d))
    assert not [q for q in list_queries(net, d) if q["collection"] == UNTRACKED]
    assert stored(store, d, UNTRACKED) == {}
    # Nor may the untracked row keep the DID due: the sensor would relaunch it forever.
    assert due(store) == []


# -- 3. resume after SIGKILL ----------------------------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
from mirror_assets.runs.backfill import run_backfill
from mirror_assets.config import BackfillLimits, Settings
from mirror_assets.atproto.nsids import CollectionFilter

args = json.loads(sys.argv[1])
settings = Settings(
    db_path=Path(args["db"]),
    store=args["store"],
    data_path=args["data_path"],
    plc_url=args["url"],
    relay_url=args["url"],
    allow_private_network=True,
    collections=CollectionFilter.parse(args["collections"]),
    backfill=BackfillLimits(http_backoff_seconds=0.01, http_timeout_seconds=60.0),
)
print(json.dumps(run_backfill(settings, args["dids"]).summary()))
"""


def test_a_run_killed_mid_listing_is_continued_from_its_saved_cursor(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d = plc("killed")
    net.add_account(d)
    rkeys = newest_first(net.create_records(d, CARD, 500))
    queue_backfills(store, (d, CARD))
    pass_rev = net.rev(d)
    release = net.hold_list_records(after_pages=3)
    # The child opens the store the settings name, as a Dagster run does.
    named = settings_for(store, net)
    args = {
        "db": str(named.db_path),
        "store": named.store,
        "data_path": named.data_path,
        "url": net.url,
        "collections": TRACKED,
        "dids": [d],
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: len(list_queries(net, d)) == 4, "the held fourth page request")

        def saved_three_pages() -> bool:
            assert child.poll() is None, child.communicate()
            row = backfill_row(store, d)
            return row is not None and row.pages == 3

        wait_for(saved_three_pages, "three pages committed")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        release.set()
    assert child.returncode == -signal.SIGKILL

    saved = backfill_row(store, d)
    assert saved == BackfillRow("in_progress", rkeys[299], pass_rev, 3, 300, 0, None, None)
    assert len(stored(store, d)) == 300

    since = len(net.requests)
    report = run_backfill(settings_for(store, net), [d], store=store)

    queries = list_queries(net, d, since)
    assert [q.get("cursor") for q in queries] == [rkeys[299], rkeys[399], rkeys[499]]
    assert report.pages == 3 and report.completed == 1
    assert stored(store, d) == pds_rows(net, d, CARD, pass_rev)
    assert backfill_row(store, d) == BackfillRow("complete", None, pass_rev, 5, 500, 0, None, None)


# -- 4. live events during a pass win --------------------------------------------------------


def test_live_updates_and_deletes_during_a_pass_are_not_undone(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d = plc("livewins")
    net.add_account(d)
    rkeys = newest_first(net.create_records(d, CARD, 450))
    queue_backfills(store, (d, CARD))
    pass_rev = net.rev(d)
    release = net.hold_list_records(after_pages=2)
    run = BackgroundRun(settings_for(store, net), [d], store=store)
    try:
        wait_for(lambda: len(list_queries(net, d)) == 3, "the held third page request")
        wait_for(lambda: pages_saved(store, d) == 2, "two pages committed")
        # Records of pages already written (rkeys[:200]) and of pages still to come.
        early_update, early_delete = rkeys[10], rkeys[20]
        late_update, late_delete = rkeys[300], rkeys[420]
        new_rkey = tid(BASE_US + 50_000_000)  # newer than all: before the pass's position
        events: list[Event] = []
        for i, rkey in enumerate((early_update, late_update)):
            net.put_record(d, CARD, rkey, record_body(CARD, f"edited {i}"))
            events.append(
                with_rev(update(d, rkey, rev=0, t=100 + i, text=f"edited {i}"), net.rev(d))
            )
        for i, rkey in enumerate((early_delete, late_delete)):
            net.delete_record(d, CARD, rkey)
            events.append(with_rev(delete(d, rkey, rev=0, t=110 + i), net.rev(d)))
        net.put_record(d, CARD, new_rkey, record_body(CARD, "new"))
        events.append(with_rev(create(d, new_rkey, rev=0, t=120, text="new"), net.rev(d)))
        apply_events(store, events)
    finally:
        release.set()
    report = run.join()

    assert report.completed == 1 and report.removed == 0
    expected = pds_rows(net, d, CARD, pass_rev)
    for event in events:
        commit = event["commit"]
        uri = uri_of(d, CARD, commit["rkey"])
        if commit["operation"] == "delete":
            expected[uri] = Row(None, None, commit["rev"], event["time_us"], True, False)
        else:
            expected[uri] = Row(
                commit["cid"], commit["record"], commit["rev"], event["time_us"], False, False
            )
    assert stored(store, d) == expected
    row = backfill_row(store, d)
    assert row is not None and row.status == "complete" and row.pages == 5


# -- 5. resync removes what was deleted while the mirror was away ----------------------------


@pytest.mark.parametrize("how", ["restart", "cursor_gap"])
def test_a_resync_turns_records_deleted_unseen_into_tombstones(
    net: AtprotoStandIn, store: MirrorStore, how: str
) -> None:
    d, gone = plc("resync"), plc("gone")
    net.add_account(d)
    rkeys = newest_first(net.create_records(d, CARD, 130))
    net.put_record(d, CARD, "nodate", {"$type": CARD, "text": "timed when first seen"})
    queue_backfills(store, (d, CARD), (gone, CARD))
    net.tombstone_did(gone)
    settings = settings_for(store, net)
    run_backfill(settings, [d, gone], store=store)
    first = stored(store, d)
    assert first == pds_rows(net, d, CARD, net.rev(d)) | {
        uri_of(d, CARD, "nodate"): first[uri_of(d, CARD, "nodate")]
    }
    assert status_of(store, gone) == "tombstoned"

    removed = [rkeys[0], rkeys[99], rkeys[129]]  # pages 1 and 2
    for rkey in removed:
        net.delete_record(d, CARD, rkey)  # no live events: the mirror was away
    resync_rev = net.rev(d)
    time.sleep(0.002)  # "now" moves on: a re-read must keep the first-seen time
    if how == "restart":
        report = run_backfill(settings, [d], restart=[(d, CARD)], store=store)
    else:
        apply_events(store, [], gaps=[CursorGap(ENDPOINT, at(0), at(600))])
        assert backfill_row(store, d) == BackfillRow("pending", None, None, 0, 0, 0, None, None)
        assert status_of(store, gone) == "tombstoned"
        assert due(store) == [d]
        report = run_backfill(settings, [d], store=store)

    assert report.removed == 3 and report.completed == 1
    expected = {
        uri: row._replace(rev=resync_rev)
        if uri.rsplit("/", 1)[1] not in removed
        else row._replace(cid=None, record=None, rev=resync_rev, deleted=True)
        for uri, row in first.items()
    }
    assert stored(store, d) == expected
    assert backfill_row(store, d) == BackfillRow(
        "complete", None, resync_rev, 2, 128, 0, None, None
    )

    # A late replay of an old create of a removed record does not bring it back.
    replay = create(d, removed[1], rev=7, t=5)
    result = apply_events(store, [replay])
    assert result.stale == 1
    assert stored(store, d) == expected


def test_a_cursor_gap_during_a_pass_leaves_the_listing_for_a_new_pass(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    """Events were lost while the pass was paging: its end no longer proves the DID complete."""
    d = plc("gapmid")
    net.add_account(d)
    rkeys = newest_first(net.create_records(d, CARD, 250))
    queue_backfills(store, (d, CARD))
    release = net.hold_list_records(after_pages=1)
    run = BackgroundRun(settings_for(store, net), [d], store=store)
    try:
        wait_for(lambda: pages_saved(store, d) == 1, "the first page committed")
        net.delete_record(d, CARD, rkeys[0])  # unseen: its live delete is in the gap
        apply_events(store, [], gaps=[CursorGap(ENDPOINT, at(0), at(600))])
    finally:
        release.set()
    report = run.join()

    assert report.completed == 0 and report.removed == 0
    assert backfill_row(store, d) == BackfillRow("pending", None, None, 0, 0, 0, None, None)
    assert due(store) == [d]
    since = len(net.requests)
    report = run_backfill(settings_for(store, net), [d], store=store)
    assert "cursor" not in list_queries(net, d, since)[0]
    assert report.removed == 1
    rev = net.rev(d)
    expected = pds_rows(net, d, CARD, rev)
    expected[uri_of(d, CARD, rkeys[0])] = Row(None, None, rev, tid_us(rkeys[0]), True, False)
    assert stored(store, d) == expected
    assert backfill_row(store, d) == BackfillRow("complete", None, rev, 3, 249, 0, None, None)


# -- 6. repositories that are gone or closed -------------------------------------------------


def test_closed_or_unknown_repositories_end_with_their_status(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    no_repo, takendown, deactivated = plc("norepo"), plc("takendown"), plc("deactivated")
    unknown, tombstoned = plc("unknown"), plc("tombstoned")
    suspended = plc("suspended")
    net.set_did_document(no_repo, pds_document(no_repo, net.url))
    for d, status in (
        (takendown, "takendown"),
        (deactivated, "deactivated"),
        (suspended, "suspended"),
    ):
        net.add_account(d)
        net.create_records(d, CARD, 3)
        net.set_repo_status(d, status)
    net.add_account(tombstoned)
    net.tombstone_did(tombstoned)
    everyone = [no_repo, takendown, deactivated, suspended, unknown, tombstoned]
    queue_backfills(store, *((d, CARD) for d in everyone))
    settings = settings_for(store, net)

    report = run_backfill(settings, everyone, store=store)

    expected = {
        no_repo: ("not_found", "RepoNotFound"),
        takendown: ("takendown", "RepoTakendown"),
        deactivated: ("deactivated", "RepoDeactivated"),
        suspended: ("suspended", "RepoSuspended"),
        unknown: ("not_found", "not registered"),
        tombstoned: ("tombstoned", "410"),
    }
    for d, (status, message) in expected.items():
        row = backfill_row(store, d)
        assert row is not None
        assert (row.status, row.attempts, row.retry_delay, row.pds_cursor) == (
            status,
            0,
            None,
            None,
        )
        assert row.last_error is not None and message in row.last_error, (d, row.last_error)
        assert report.errors[f"{d} {CARD}"] == row.last_error
        assert stored(store, d) == {}
    assert report.ended == {
        "not_found": 2,
        "takendown": 1,
        "deactivated": 1,
        "suspended": 1,
        "tombstoned": 1,
    }
    assert sorted(report.done_dids) == sorted(everyone)
    assert list_queries(net, takendown) == list_queries(net, deactivated) == []
    assert due(store) == []

    since = len(net.requests)
    again = run_backfill(settings, everyone, store=store)
    assert again.tasks == 0 and len(net.requests) == since


def test_an_account_active_again_has_its_closed_backfill_queued_again(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d, other = plc("reactivated"), plc("stillclosed")
    for account_did in (d, other):
        net.add_account(account_did)
        net.create_records(account_did, CARD, 3)
        net.set_repo_status(account_did, "deactivated")
    queue_backfills(store, (d, CARD), (other, CARD))
    settings = settings_for(store, net)
    run_backfill(settings, [d, other], store=store)
    assert (status_of(store, d), status_of(store, other)) == ("deactivated", "deactivated")

    net.set_repo_status(d, None)
    now_t = (time.time_ns() // 1000 - BASE_US) / 1_000_000
    apply_events(store, [account(d, active=False, status="deactivated", t=now_t)])
    assert due(store) == []  # closing again changes nothing
    apply_events(store, [account(d, active=True, t=now_t + 1)])

    assert due(store) == [d]
    run_backfill(settings, [d], store=store)
    assert status_of(store, d) == "complete"
    assert stored(store, d) == pds_rows(net, d, CARD, net.rev(d))
    assert status_of(store, other) == "deactivated"


# -- 7. faults -------------------------------------------------------------------------------


def test_a_rate_limit_is_waited_out_then_the_listing_completes(
    net: AtprotoStandIn, db: Path
) -> None:
    d = plc("ratelimited")
    net.add_account(d)
    net.create_records(d, CARD, 150)
    queue_backfills(db, (d, CARD))
    reset = int(time.time()) + 2
    net.fail(LIST_RECORDS, 429, headers={"ratelimit-reset": str(reset)})

    report = run_backfill(settings_for(db, net), [d])

    assert time.time() >= reset - 0.05  # the retry waited for the reset
    assert report.completed == 1 and not report.ended
    assert stored(db, d) == pds_rows(net, d, CARD, net.rev(d))
    assert len(list_queries(net, d)) == 4  # the refused one, two pages, the empty one
    row = backfill_row(db, d)
    assert row == BackfillRow("complete", None, net.rev(d), 2, 150, 0, None, None)


def test_a_rate_limit_of_hours_fails_the_backfill_instead_of_waiting(
    net: AtprotoStandIn, db: Path
) -> None:
    d = plc("ratelimitlong")
    net.add_account(d)
    net.create_records(d, CARD, 5)
    queue_backfills(db, (d, CARD))
    net.fail(LIST_RECORDS, 429, headers={"ratelimit-reset": str(int(time.time()) + 3 * 3600)})

    started = time.monotonic()
    report = run_backfill(settings_for(db, net), [d])

    assert time.monotonic() - started < 5
    assert report.ended == {"failed": 1}
    row = backfill_row(db, d)
    assert row is not None and row.status == "failed" and row.attempts == 1
    assert row.last_error is not None and "rate limited for" in row.last_error
    assert len(list_queries(net, d)) == 1
    assert stored(db, d) == {}


def test_server_errors_fail_the_backfill_and_it_is_retried_after_a_doubling_delay(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d = plc("servererr")
    net.add_account(d)
    net.create_records(d, CARD, 150)
    queue_backfills(store, (d, CARD))
    # Seconds: enough for the checks below to run before it passes (the lake's reads and
    # transactions take longer than the file's, and its delay runs from the transaction's
    # start).
    retry = 0.6 if isinstance(store, FileStore) else 1.5
    settings = settings_for(store, net, retry_seconds=retry, http_attempts=3)
    pass_rev = net.rev(d)

    net.fail(LIST_RECORDS, 500, times=3)
    report = run_backfill(settings, [d], store=store)
    assert report.ended == {"failed": 1}
    row = backfill_row(store, d)
    assert row is not None
    assert (row.status, row.attempts, row.pages, row.pds_cursor) == ("failed", 1, 0, None)
    assert row.last_error is not None and "server error 500" in row.last_error
    assert "3 attempts" in row.last_error
    assert row.retry_delay == timedelta(seconds=retry)
    assert len(list_queries(net, d)) == 3
    assert due(store) == []
    since = len(net.requests)
    assert run_backfill(settings, [d], store=store).tasks == 0  # not before its time
    assert len(net.requests) == since

    time.sleep(retry + 0.05)
    assert due(store) == [d]
    net.fail(LIST_RECORDS, 500, times=3)  # fails again: the delay doubles
    report = run_backfill(settings, [d], store=store)
    row = backfill_row(store, d)
    assert row is not None
    assert (row.status, row.attempts) == ("failed", 2)
    assert row.retry_delay == timedelta(seconds=2 * retry)
    assert due(store) == []

    time.sleep(2 * retry + 0.05)
    assert due(store) == [d]
    since = len(net.requests)
    report = run_backfill(settings, [d], store=store)
    assert report.completed == 1
    assert net.count(PLC) == 1  # the PDS was remembered between runs
    assert stored(store, d) == pds_rows(net, d, CARD, pass_rev)
    assert backfill_row(store, d) == BackfillRow("complete", None, pass_rev, 2, 150, 0, None, None)


def test_a_failure_mid_listing_keeps_the_saved_cursor_for_the_retry(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d = plc("midfail")
    net.add_account(d)
    rkeys = newest_first(net.create_records(d, CARD, 250))
    queue_backfills(store, (d, CARD))
    retry = 0.2
    settings = settings_for(store, net, retry_seconds=retry)
    pass_rev = net.rev(d)
    release = net.hold_list_records(after_pages=1)
    run = BackgroundRun(settings, [d], store=store)
    try:
        wait_for(lambda: len(list_queries(net, d)) == 2, "the held second page request")
        net.fail(LIST_RECORDS, 503, times=3)
    finally:
        release.set()
    report = run.join()
    assert report.ended == {"failed": 1}
    row = backfill_row(store, d)
    assert row is not None
    assert (row.status, row.pds_cursor, row.repo_rev, row.pages, row.records, row.attempts) == (
        "failed",
        rkeys[99],
        pass_rev,
        1,
        100,
        1,
    )
    time.sleep(retry + 0.05)
    since = len(net.requests)
    run_backfill(settings, [d], store=store)
    assert list_queries(net, d, since)[0]["cursor"] == rkeys[99]
    assert stored(store, d) == pds_rows(net, d, CARD, pass_rev)
    assert backfill_row(store, d) == BackfillRow("complete", None, pass_rev, 3, 250, 0, None, None)


def test_malformed_answers_every_time_fail_the_backfill(net: AtprotoStandIn, db: Path) -> None:
    d = plc("malformed")
    net.add_account(d)
    net.create_records(d, CARD, 5)
    queue_backfills(db, (d, CARD))
    net.malformed(LIST_RECORDS, times=3)

    report = run_backfill(settings_for(db, net, http_attempts=3), [d])

    assert report.ended == {"failed": 1}
    row = backfill_row(db, d)
    assert row is not None and row.status == "failed" and row.attempts == 1
    assert row.last_error is not None and "unreadable" in row.last_error
    assert len(list_queries(net, d)) == 3
    assert stored(db, d) == {}


def test_a_pds_that_repeats_its_cursor_fails_the_backfill_after_two_requests(
    net: AtprotoStandIn, db: Path
) -> None:
    d = plc("repeat")
    net.add_account(d)
    net.create_records(d, CARD, 150)
    net.repeat_cursor(d, CARD)
    queue_backfills(db, (d, CARD))

    report = run_backfill(settings_for(db, net), [d])

    assert report.ended == {"failed": 1}
    row = backfill_row(db, d)
    assert row is not None and row.status == "failed"
    assert row.last_error is not None and "same cursor" in row.last_error
    assert len(list_queries(net, d)) == 2
    # The first page was real: it is kept, at the pass's rev.
    first_page = dict(sorted(pds_rows(net, d, CARD, net.rev(d)).items(), reverse=True)[:100])
    assert stored(db, d) == first_page


def test_records_of_another_repo_are_refused_and_counted(net: AtprotoStandIn, db: Path) -> None:
    d, other = plc("foreign"), plc("victim")
    net.add_account(d)
    net.add_account(other)
    net.create_records(d, CARD, 149)
    not_object = tid(BASE_US - 1)  # the oldest: on the last page
    net.put_record(d, CARD, not_object, ["not", "an", "object"])  # type: ignore[arg-type]
    net.foreign_records(d, CARD, other)
    queue_backfills(db, (d, CARD))

    report = run_backfill(settings_for(db, net), [d])

    # Pages of 99 listed records and one foreign: 99 + 51, then the empty page.
    assert report.refused.counts == {"other_repo_or_collection": 2, "record_not_object": 1}
    assert report.records_listed == 152
    expected = pds_rows(net, d, CARD, net.rev(d))
    del expected[uri_of(d, CARD, not_object)]
    assert stored(db, d) == expected
    assert stored(db, other) == {}
    assert backfill_row(db, d) == BackfillRow("complete", None, net.rev(d), 2, 149, 0, None, None)


def test_oversized_pages_are_kept_and_counted(net: AtprotoStandIn, db: Path) -> None:
    d = plc("oversize")
    net.add_account(d)
    net.create_records(d, CARD, 250)
    net.oversize_pages(d, CARD)
    queue_backfills(db, (d, CARD))

    report = run_backfill(settings_for(db, net), [d])

    assert report.oversized_pages == 2  # 105, 105, then 40
    assert stored(db, d) == pds_rows(net, d, CARD, net.rev(d))
    assert backfill_row(db, d) == BackfillRow("complete", None, net.rev(d), 3, 250, 0, None, None)


def test_a_did_document_pointing_at_a_private_address_is_refused(
    net: AtprotoStandIn, db: Path
) -> None:
    d = plc("private")
    with AtprotoStandIn() as pds:  # another origin than PLC_URL's, on 127.0.0.1 too
        net.add_account(d, pds_url=pds.url)
        pds.add_account(d)
        pds.create_records(d, CARD, 3)
        queue_backfills(db, (d, CARD))

        report = run_backfill(settings_for(db, net, allow_private_network=False), [d])

        assert pds.requests == []
    assert report.ended == {"failed": 1}
    row = backfill_row(db, d)
    assert row is not None and row.status == "failed"
    assert row.last_error is not None and "MIRROR_ALLOW_PRIVATE_NETWORK" in row.last_error
    assert net.count(PLC) == 1  # PLC_URL is configured, so trusted
    assert stored(db, d) == {}


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://[::1",  # urlsplit raises ValueError
        "http://127.0.0.1:99999",  # a port out of range: the connect raises OverflowError
        "http://127.0.0.1:1x",  # httpx.InvalidURL
    ],
)
def test_a_broken_did_document_fails_its_own_did_only(
    net: AtprotoStandIn, db: Path, endpoint: str
) -> None:
    """DID documents are untrusted input: a bad one must not take the other DIDs of the
    run down with it (and leave them claimed, to be relaunched into the same crash)."""
    bad, good = plc("broken"), plc("fine")
    net.set_did_document(bad, pds_document(bad, endpoint))
    net.add_account(good)
    net.create_records(good, CARD, 120)
    queue_backfills(db, (bad, CARD), (good, CARD))

    report = run_backfill(settings_for(db, net), [bad, good])

    assert report.ended == {"failed": 1}
    assert stored(db, good) == pds_rows(net, good, CARD, net.rev(good))
    assert status_of(db, good) == "complete"
    row = backfill_row(db, bad)
    assert row is not None and row.status == "failed" and row.last_error
    assert stored(db, bad) == {}


def test_a_did_web_is_resolved_through_its_host(net: AtprotoStandIn, db: Path) -> None:
    """The DID's own host serves its document (the protocol allows a port in a did:web only
    on `localhost`, for development); PLC is not asked."""
    with AtprotoStandIn() as web, running_dns() as dns:
        port = web.url.rsplit(":", 1)[1]
        d = f"did:web:localhost%3A{port}"
        web.add_account(d)
        web.create_records(d, CARD, 120)
        web.set_web_document(pds_document(d, web.url, handle="web.test"))
        dns.set("_atproto.web.test", "TXT", f"did={d}")
        queue_backfills(db, (d, CARD))

        report = run_backfill(settings_for(db, net, allow_private_network=False), [d])

        # A did:web host is not the operator's: the guard refuses it before any request.
        assert report.ended == {"failed": 1}
        row = backfill_row(db, d)
        assert row is not None and row.last_error
        assert "MIRROR_ALLOW_PRIVATE_NETWORK" in row.last_error
        assert web.requests == []

        settings = settings_for(db, net, retry_seconds=0.01, dns_servers=(dns.server,))
        report = run_backfill(settings, [d], restart=[(d, CARD)])
        assert report.completed == 1
        assert net.count(PLC) == 0 and web.count("web") == 1
        assert stored(db, d) == pds_rows(web, d, CARD, web.rev(d))
        assert handle_of(db, d) == "web.test"  # its DNS TXT record names the DID


def test_an_account_that_moved_is_listed_from_its_new_pds(net: AtprotoStandIn, db: Path) -> None:
    """The PDS is cached for a day; an account that moved meanwhile answers
    RepoDeactivated at the old PDS. The mirror must not end the backfill on the stale
    cache's word (the stream even announced the move with an identity event)."""
    d = plc("mover")
    net.add_account(d, handle="mover.test")
    net.create_records(d, CARD, 3)
    queue_backfills(db, (d, CARD))
    settings = settings_for(db, net)
    run_backfill(settings, [d])
    assert status_of(db, d) == "complete"

    with AtprotoStandIn() as new_pds:
        new_pds.add_account(d, handle="mover.test")
        new_pds.create_records(d, CARD, 3)
        new_pds.create_records(d, CARD, 2, start_us=BASE_US + 10 * 1_000_000)
        net.set_did_document(d, pds_document(d, new_pds.url, handle="mover.test"))
        net.set_repo_status(d, "deactivated")  # what the old PDS says after a migration
        now_t = (time.time_ns() // 1000 - BASE_US) / 1_000_000 + 1
        apply_events(db, [identity(d, "mover.test", t=now_t)])

        report = run_backfill(settings, [d], restart=[(d, CARD)])

        assert report.ended == {}
        assert status_of(db, d) == "complete"
        assert stored(db, d) == pds_rows(new_pds, d, CARD, new_pds.rev(d))
        assert len(list_queries(new_pds, d)) == 2


# -- 8. the time budget ------------------------------------------------------------------------


def test_a_run_out_of_time_leaves_the_listing_to_resume(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d = plc("slow")
    net.add_account(d)
    rkeys = newest_first(net.create_records(d, CARD, 150))
    queue_backfills(store, (d, CARD))
    pass_rev = net.rev(d)
    net.delay(LIST_RECORDS, 1.0)  # the first page arrives after the budget is spent

    report = run_backfill(settings_for(store, net, run_seconds=0.8), [d], store=store)

    assert report.paused == 1 and report.completed == 0 and not report.ended
    assert report.done_dids == []
    assert backfill_row(store, d) == BackfillRow(
        "in_progress", rkeys[99], pass_rev, 1, 100, 0, None, None
    )
    assert due(store) == [d]
    assert len(list_queries(net, d)) == 1

    since = len(net.requests)
    report = run_backfill(settings_for(store, net), [d], store=store)
    assert [q.get("cursor") for q in list_queries(net, d, since)] == [rkeys[99], rkeys[149]]
    assert report.completed == 1
    assert stored(store, d) == pds_rows(net, d, CARD, pass_rev)
    assert backfill_row(store, d) == BackfillRow("complete", None, pass_rev, 2, 150, 0, None, None)


# -- 9. account lifecycle ----------------------------------------------------------------------


def test_a_deleted_account_gets_nothing_written(net: AtprotoStandIn, db: Path) -> None:
    d = plc("deleted")
    net.add_account(d)
    net.create_records(d, CARD, 5)
    apply_events(
        db,
        [create(d, "first", rev=1, t=1), account(d, active=False, status="deleted", t=2)],
    )
    settings = settings_for(db, net)

    report = run_backfill(settings, [d], restart=[(d, CARD)])

    assert report.tasks == 0
    assert net.requests == []
    assert stored(db, d) == {}
    assert backfill_row(db, d) is None
    assert due(db) == []


def test_an_account_deleted_during_its_backfill_keeps_nothing(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    d = plc("deletedmid")
    net.add_account(d)
    net.create_records(d, CARD, 350)
    apply_events(store, [create(d, "first", rev=1, t=1)])
    release = net.hold_list_records(after_pages=1)
    run = BackgroundRun(settings_for(store, net), [d], store=store)
    try:
        wait_for(lambda: len(list_queries(net, d)) == 2, "the held second page request")
        apply_events(store, [account(d, active=False, status="deleted", t=2)])
    finally:
        release.set()
    run.join()

    assert stored(store, d) == {}
    assert backfill_row(store, d) is None
    assert due(store) == []


def test_a_hidden_account_is_backfilled_hidden(net: AtprotoStandIn, store: MirrorStore) -> None:
    d = plc("hidden")
    net.add_account(d)
    net.create_records(d, CARD, 120)
    apply_events(
        store,
        [create(d, "first", rev=1, t=1), account(d, active=False, status="takendown", t=2)],
    )

    run_backfill(settings_for(store, net), [d], store=store)

    rev = net.rev(d)
    expected = pds_rows(net, d, CARD, rev, hidden=True)
    expected[uri_of(d, CARD, "first")] = Row(None, None, rev, at(1), True, True)
    assert stored(store, d) == expected
    assert visible(store, d) == set()
    apply_events(store, [account(d, active=True, t=3)])
    assert visible(store, d) == set(pds_rows(net, d, CARD, rev))


# -- 10. politeness --------------------------------------------------------------------------


def test_many_dids_share_the_runs_share_of_the_per_host_limit(
    net: AtprotoStandIn, db: Path
) -> None:
    """BACKFILL_PER_HOST holds across the BACKFILL_RUNS at once: one run takes its share."""
    dids = [plc(f"many{chr(ord('a') + i)}") for i in range(20)]
    for i, d in enumerate(dids):
        net.add_account(d)
        net.create_records(d, CARD, 3 + i)
    queue_backfills(db, *((d, CARD) for d in dids))
    net.delay(LIST_RECORDS, 0.02, times=40)

    report = run_backfill(settings_for(db, net, per_host=4, runs=2), dids)

    assert net.max_in_flight == 2
    assert report.completed == 20 and sorted(report.done_dids) == sorted(dids)
    for d in dids:
        assert stored(db, d) == pds_rows(net, d, CARD, net.rev(d))
        row = backfill_row(db, d)
        assert row is not None and row.status == "complete"


# -- 11. nothing to do ------------------------------------------------------------------------


def test_a_second_run_over_complete_dids_does_nothing(net: AtprotoStandIn, db: Path) -> None:
    dids = [plc("donea"), plc("doneb")]
    for d in dids:
        net.add_account(d)
        net.create_records(d, CARD, 4)
    queue_backfills(db, *((d, CARD) for d in dids))
    settings = settings_for(db, net)
    run_backfill(settings, dids)
    state = {d: (stored(db, d), backfill_row(db, d)) for d in dids}
    since = len(net.requests)

    report = run_backfill(settings, dids)

    assert report.tasks == 0 and report.pages == 0 and report.transactions == 0
    assert report.done_dids == []  # it worked on none of them
    assert len(net.requests) == since
    assert {d: (stored(db, d), backfill_row(db, d)) for d in dids} == state
    assert due(db) == []


# -- times and the identity cache -------------------------------------------------------------


def test_a_live_update_after_a_pass_takes_its_own_time_even_with_the_same_content(
    net: AtprotoStandIn, store: MirrorStore
) -> None:
    """A pass that read an edit before its event arrived wrote the record at its TID time;
    the event, with the same CID and a newer rev, brings the edit's own time."""
    d = plc("edited")
    net.add_account(d)
    [rkey] = net.create_records(d, CARD, 1)
    queue_backfills(store, (d, CARD))
    net.put_record(d, CARD, rkey, record_body(CARD, "edited"))  # its event is late
    run_backfill(settings_for(store, net), [d], store=store)
    uri = uri_of(d, CARD, rkey)
    assert stored(store, d)[uri].time_us == tid_us(rkey)

    late = with_rev(update(d, rkey, rev=0, t=500, text="edited"), net.new_rev())
    assert late["commit"]["cid"] == stored(store, d)[uri].cid
    apply_events(store, [late])

    assert stored(store, d)[uri].time_us == at(500)


def test_the_resolved_pds_is_reused_until_an_identity_event(net: AtprotoStandIn, db: Path) -> None:
    d = plc("cached")
    net.add_account(d, handle="cached.test")
    net.create_records(d, CARD, 2)
    queue_backfills(db, (d, CARD))
    settings = settings_for(db, net)
    run_backfill(settings, [d])
    run_backfill(settings, [d], restart=[(d, CARD)])
    assert net.count(PLC) == 1  # the second run used the cached PDS

    now_t = (time.time_ns() // 1000 - BASE_US) / 1_000_000
    apply_events(db, [identity(d, "renamed.test", t=now_t)])
    run_backfill(settings, [d], restart=[(d, CARD)])

    assert net.count(PLC) == 2
    # The document still claims cached.test, which resolves nowhere: neither handle counts.
    assert handle_of(db, d) is None
    assert status_of(db, d) == "complete"
