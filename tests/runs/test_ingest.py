"""Whole ingest cycles: a real websockets Jetstream stand-in on 127.0.0.1, and a real store:
the cycles that leave something in it run on the file and on the lake (`store`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import IngestLimits, Settings
from mirror_assets.network.jetstream import JetstreamUnavailableError
from mirror_assets.runs.ingest import IngestReport, run_ingest
from mirror_assets.store.contract import MirrorStore
from tests.conftest import StoreMaker
from tests.support.events_factory import (
    BASE_US,
    CARD,
    PAGE,
    SECOND,
    Event,
    account,
    at,
    create,
    delete,
    did,
    identity,
    rev_tid,
    rows,
    tombstones,
    update,
    uri,
)
from tests.support.jetstream_server import JetstreamServer, Request
from tests.support.ports import free_port
from tests.support.store_helpers import (
    Account,
    Snapshot,
    Version,
    Where,
    settings_on,
    snapshot,
    store_cursor,
    store_of,
)

ALICE, BOB, CAROL = did("alice"), did("bob"), did("carol")
BLENTO = "app.blento.card,app.blento.page"
REWIND = 5.0


@pytest.fixture
def server() -> Iterator[JetstreamServer]:
    with JetstreamServer() as running:
        yield running


@pytest.fixture
def server2() -> Iterator[JetstreamServer]:
    with JetstreamServer() as running:
        yield running


@pytest.fixture
def refused_url() -> str:
    """A loopback port nobody listens on: connecting is refused at once."""
    return f"ws://127.0.0.1:{free_port()}"


def settings(
    where: Where,
    *urls: str,
    collections: str = BLENTO,
    idle_seconds: float = 0.5,
    max_seconds: float = 10.0,
    max_events: int = 1_000_000,
    flush_events: int = 1_000,
    flush_bytes: int = 128 * 1024 * 1024,
    gap_seconds: float = 300.0,
) -> Settings:
    named = Settings(
        collections=CollectionFilter.parse(collections),
        jetstream_urls=urls,
        ingest=IngestLimits(
            rewind_seconds=REWIND,
            idle_seconds=idle_seconds,
            max_seconds=max_seconds,
            max_events=max_events,
            flush_events=flush_events,
            flush_bytes=flush_bytes,
            gap_seconds=gap_seconds,
        ),
    )
    return settings_on(where, named)


def serve(server: JetstreamServer, events: list[Event]) -> None:
    for event in events:
        server.add(event)


def rewound(time_us: int) -> int:
    return time_us - int(REWIND * SECOND)


def in_the_future(seconds: float) -> float:
    """The `t` (seconds after BASE_US) of a moment `seconds` from now."""
    return (time.time_ns() // 1000 - BASE_US) / SECOND + seconds


def counts(report: IngestReport, *keys: str) -> dict[str, object]:
    summary = report.summary()
    return {key: summary.get(key) for key in keys}


# -- commits ---------------------------------------------------------------------------------


def test_create_update_delete(server: JetstreamServer, store: MirrorStore) -> None:
    a1 = create(ALICE, "a", rev=1, t=1, text="a1")
    b1 = create(ALICE, "b", rev=2, t=2)
    a2 = update(ALICE, "a", rev=3, t=3, text="a2")
    b_gone = delete(ALICE, "b", rev=4, t=4)
    p1 = create(BOB, "p", rev=1, t=5, collection=PAGE)
    serve(server, [a1, b1, a2, b_gone, p1])

    report = run_ingest(settings(store, server.url), store=store)

    summary = report.summary()
    for volatile in ("seconds", "apply_seconds", "lag_seconds", "max_lock_wait_seconds"):
        assert isinstance(summary.pop(volatile), float)
    assert summary == {
        "frames": 5,
        "events_commit_create": 3,
        "events_commit_delete": 1,
        "events_commit_update": 1,
        "rows_upserted": 2,
        "rows_tombstoned": 1,
        "rows_stale": 2,  # a1 and b1 lost to newer versions in the same batch
        "rows_purged": 0,
        "rows_hidden_changed": 0,
        "accounts_changed": 0,
        "identities_changed": 0,
        "new_dids": 2,
        "cursor_gaps": 0,
        "cursor_before": None,
        "cursor_after": at(5),
        "cursor_after_iso": "2024-08-30T06:40:05+00:00",
        "endpoint": server.url,
        "connections": 1,
        "connection_failures": 0,
        "stop_reason": "idle",
        "flushes": 1,
        "refused": 0,
    }
    assert server.requests == [Request(None, ["app.blento.card", "app.blento.page"])]
    assert snapshot(store) == Snapshot(
        records=rows(a2, p1),
        tombstones=tombstones(b_gone),
        versions={
            uri(ALICE, "a"): Version(rev_tid(3), deleted=False, hidden=False),
            uri(ALICE, "b"): Version(rev_tid(4), deleted=True, hidden=False),
            uri(BOB, "p", PAGE): Version(rev_tid(1), deleted=False, hidden=False),
        },
        accounts={
            ALICE: Account(None, "active", hidden=False),
            BOB: Account(None, "active", hidden=False),
        },
        backfills={(ALICE, CARD): "pending", (BOB, PAGE): "pending"},
        cursor=at(5),
        endpoint=server.url,
    )


def test_a_second_run_rereads_the_rewind_window_and_changes_nothing(
    server: JetstreamServer, store: MirrorStore
) -> None:
    events = [create(ALICE, f"r{n}", rev=n, t=n) for n in range(10)]
    events.append(delete(ALICE, "r0", rev=20, t=10))
    serve(server, events)
    first = run_ingest(settings(store, server.url), store=store)
    assert first.cursor_after == at(10)
    before = snapshot(store)
    assert before.records == rows(*events[1:10])

    again = run_ingest(settings(store, server.url), store=store)

    assert server.requests[1].cursor == rewound(at(10))
    # t = 5 .. 10 are re-read: five creates and the delete, all stale.
    assert counts(
        again, "frames", "rows_upserted", "rows_tombstoned", "rows_stale", "new_dids"
    ) == {"frames": 6, "rows_upserted": 0, "rows_tombstoned": 0, "rows_stale": 6, "new_dids": 0}
    assert (again.cursor_before, again.cursor_after) == (at(10), at(10))
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("store", "flush_events"),
    [("file", 1), ("file", 1_000), pytest.param("lake", 1, marks=pytest.mark.lake)],
    indirect=["store"],
)
def test_out_of_order_versions_settle_on_the_highest_rev(
    server: JetstreamServer, store: MirrorStore, flush_events: int
) -> None:
    """Stream order is time order; the revs here are not, within and across batches."""
    a_new = update(ALICE, "a", rev=2, t=1, text="a2")
    a_old = create(ALICE, "a", rev=1, t=2, text="a1")
    b_gone = delete(ALICE, "b", rev=5, t=3)
    b_old = create(ALICE, "b", rev=4, t=4)
    c3 = update(BOB, "c", rev=3, t=5, text="c3")
    c1 = create(BOB, "c", rev=1, t=6, text="c1")
    c2 = update(BOB, "c", rev=2, t=7, text="c2")
    serve(server, [a_new, a_old, b_gone, b_old, c3, c1, c2])

    report = run_ingest(settings(store, server.url, flush_events=flush_events), store=store)

    assert report.flushes == (7 if flush_events == 1 else 1)
    state = snapshot(store)
    assert state.records == rows(a_new, c3)
    assert state.tombstones == tombstones(b_gone)
    assert report.summary()["rows_stale"] == 4


@pytest.mark.parametrize("flush_events", [1, 1_000])
def test_an_update_for_a_record_deleted_later_stays_deleted(
    server: JetstreamServer, db: Path, flush_events: int
) -> None:
    serve(
        server,
        [
            create(ALICE, "a", rev=1, t=1, text="v1"),
            update(ALICE, "a", rev=2, t=2, text="v2"),
            delete(ALICE, "a", rev=3, t=3),
            update(ALICE, "a", rev=2, t=4, text="v2"),  # the update again, after the delete
            create(ALICE, "a", rev=1, t=5, text="v1"),  # and the create
        ],
    )
    run_ingest(settings(db, server.url, flush_events=flush_events))
    state = snapshot(db)
    assert state.records == {}
    assert state.tombstones == tombstones(delete(ALICE, "a", rev=3, t=3))


def test_a_delete_of_a_record_never_seen(server: JetstreamServer, db: Path) -> None:
    gone = delete(ALICE, "a", rev=5, t=1)
    serve(server, [gone, create(ALICE, "a", rev=4, t=2)])
    report = run_ingest(settings(db, server.url))
    assert counts(report, "rows_tombstoned", "rows_upserted", "rows_stale") == {
        "rows_tombstoned": 1,
        "rows_upserted": 0,
        "rows_stale": 1,
    }
    state = snapshot(db)
    assert state.records == {}
    assert state.tombstones == tombstones(gone)

    newer = create(ALICE, "a", rev=6, t=3, text="back")
    server.add(newer)
    run_ingest(settings(db, server.url))
    state = snapshot(db)
    assert state.records == rows(newer)
    assert state.tombstones == {}


# -- accounts and identities ------------------------------------------------------------------

STATUSES: list[str | None] = [
    "takendown",
    "suspended",
    "deactivated",
    "deleted",
    "throttled",
    "desynchronized",
    None,
]


def _status_did(status: str | None) -> str:
    return did(status or "inactive")


@pytest.mark.parametrize("flush_events", [1, 1_000])
def test_account_events_of_every_status(
    server: JetstreamServer, db: Path, flush_events: int
) -> None:
    writes = {
        status: create(_status_did(status), "a", rev=1, t=i) for i, status in enumerate(STATUSES)
    }
    serve(server, list(writes.values()))
    for i, status in enumerate(STATUSES):
        server.add(account(_status_did(status), active=False, status=status, t=10 + i))
    restored = create(did("restored"), "a", rev=1, t=8)
    serve(
        server,
        [
            restored,
            account(did("restored"), active=False, status="takendown", t=20),
            account(did("restored"), active=True, t=21),
            # Replays of the deleted DID's writes and a new write: nothing comes back.
            create(did("deleted"), "a", rev=1, t=30),
            create(did("deleted"), "b", rev=2, t=31, collection=PAGE),
            # A DID the mirror never saw.
            account(did("stranger"), active=False, status="takendown", t=40),
        ],
    )

    report = run_ingest(settings(db, server.url, flush_events=flush_events))

    summary = report.summary()
    # In one batch the deleted DID's row is never written; in one batch per event it is purged.
    assert (summary["events_account"], summary["rows_purged"]) == (10, int(flush_events == 1))
    state = snapshot(db)
    assert state.records == rows(
        writes["throttled"], writes["desynchronized"], writes[None], restored
    )
    assert state.accounts == {
        did("takendown"): Account(None, "takendown", hidden=True),
        did("suspended"): Account(None, "suspended", hidden=True),
        did("deactivated"): Account(None, "deactivated", hidden=True),
        did("deleted"): Account(None, "deleted", hidden=True),
        did("throttled"): Account(None, "active", hidden=False),
        did("desynchronized"): Account(None, "active", hidden=False),
        did("inactive"): Account(None, "active", hidden=False),
        did("restored"): Account(None, "active", hidden=False),
    }
    hidden = Version(rev_tid(1), deleted=False, hidden=True)
    shown = Version(rev_tid(1), deleted=False, hidden=False)
    assert state.versions == {
        uri(did("takendown"), "a"): hidden,
        uri(did("suspended"), "a"): hidden,
        uri(did("deactivated"), "a"): hidden,
        uri(did("throttled"), "a"): shown,
        uri(did("desynchronized"), "a"): shown,
        uri(did("inactive"), "a"): shown,
        uri(did("restored"), "a"): shown,
    }
    assert set(state.backfills) == {
        (_status_did(status), CARD) for status in STATUSES if status != "deleted"
    } | {(did("restored"), CARD)}


def test_identity_events_mark_identities_for_a_check_and_believe_no_handle(
    server: JetstreamServer, db: Path
) -> None:
    """A handle counts only once it resolves back to the DID (identities.py): the stream's
    word for it is not enough, so an identity event only marks the DID for a check."""
    serve(
        server,
        [
            create(ALICE, "a", rev=1, t=1),
            create(BOB, "b", rev=1, t=2),
            identity(ALICE, "alice-old.test", t=3),
            identity(BOB, "bob.test", t=4),
            identity(ALICE, "alice.test", t=5),
            identity(CAROL, "carol.test", t=6),  # never seen: not tracked
        ],
    )
    report = run_ingest(settings(db, server.url))
    assert counts(report, "events_identity", "identities_changed") == {
        "events_identity": 4,
        "identities_changed": 2,
    }
    assert _identities(db) == {ALICE: (None, True), BOB: (None, True)}


def test_an_identity_event_keeps_a_verified_handle_it_repeats_and_drops_another(
    server: JetstreamServer, db: Path
) -> None:
    serve(server, [create(ALICE, "a", rev=1, t=1), create(BOB, "b", rev=1, t=2)])
    run_ingest(settings(db, server.url))
    with store_of(db).writing() as tx:  # as a check of both identities would leave them
        tx.con.execute(
            "UPDATE accounts SET handle = lower(split_part(did, ':', 3)) || '.test', "
            "identity_stale = false"
        )
    handle_of = {did_: f"{did_.split(':')[2]}.test" for did_ in (ALICE, BOB)}
    server.add(identity(ALICE, handle_of[ALICE].upper(), t=3))  # the same handle
    server.add(identity(BOB, "someone-else.test", t=4))
    run_ingest(settings(db, server.url))
    assert _identities(db) == {ALICE: (handle_of[ALICE], True), BOB: (None, True)}


def _identities(where: Where) -> dict[str, tuple[str | None, bool]]:
    return {
        did_: (account_.handle, account_.identity_stale)
        for did_, account_ in snapshot(where).accounts.items()
    }


# -- bad frames ------------------------------------------------------------------------------


def test_bad_frames_are_counted_and_skipped_and_good_ones_applied(
    server: JetstreamServer, db: Path
) -> None:
    good = [
        create(ALICE, "a", rev=1, t=1),
        create(ALICE, "b", rev=2, t=2),
        update(ALICE, "a", rev=3, t=3, text="edited"),
        create(BOB, "c", rev=1, t=4),
        identity(BOB, "bob.test", t=5),
    ]
    no_rev = create(CAROL, "x", rev=1, t=2.5)
    del no_rev["commit"]["rev"]
    no_record = create(CAROL, "y", rev=1, t=3.5)
    del no_record["commit"]["record"]
    not_an_object = create(CAROL, "z", rev=1, t=4.5)
    not_an_object["commit"]["record"] = ["a", "list"]
    serve(server, [*good, no_rev, no_record, not_an_object])
    server.add_raw("this is not json", time_us=at(1.5))
    server.add_raw('{"kind": "commit", "did": "did:plc:x"}', time_us=at(2.2))  # no time_us
    server.add_raw(json.dumps({"did": BOB, "time_us": at(6), "kind": "sync"}))  # the last frame

    report = run_ingest(settings(db, server.url))

    assert counts(
        report,
        "frames",
        "refused",
        "refused_malformed",
        "refused_unknown_kind",
        "refused_invalid",
        "refused_record_not_object",
        "events_commit_create",
        "events_commit_update",
        "events_identity",
        "cursor_after",
    ) == {
        "frames": 11,
        "refused": 6,
        "refused_malformed": 2,
        "refused_unknown_kind": 1,
        "refused_invalid": 2,
        "refused_record_not_object": 1,
        "events_commit_create": 3,
        "events_commit_update": 1,
        "events_identity": 1,
        "cursor_after": at(6),  # the unknown kind still moves the cursor
    }
    state = snapshot(db)
    assert state.records == rows(good[2], good[1], good[3])
    assert state.accounts == {
        ALICE: Account(None, "active", hidden=False),
        # Its handle is not believed unchecked: the identity event asks for a check.
        BOB: Account(None, "active", hidden=False, identity_stale=True),
    }
    assert state.cursor == at(6)


# -- connections -----------------------------------------------------------------------------


def _ten_events() -> list[Event]:
    events = [create(did(f"user{n % 3}"), f"r{n}", rev=n, t=n) for n in range(8)]
    events += [update(did("user0"), "r0", rev=20, t=8), delete(did("user1"), "r1", rev=21, t=9)]
    return events


def _expect_all_ten(path: Where) -> None:
    events = _ten_events()
    state = snapshot(path)
    assert state.records == rows(*events[2:9])
    assert state.tombstones == tombstones(events[9])
    assert state.cursor == at(9)


def test_a_dropped_connection_reconnects_and_resumes(server: JetstreamServer, db: Path) -> None:
    serve(server, _ten_events())
    server.drop_after(3)

    report = run_ingest(settings(db, server.url))

    assert counts(report, "connections", "connection_failures", "stop_reason") == {
        "connections": 2,
        "connection_failures": 1,
        "stop_reason": "idle",
    }
    assert [request.cursor for request in server.requests] == [None, rewound(at(2))]
    _expect_all_ten(db)


def test_a_dropped_connection_fails_over_to_the_next_endpoint(
    server: JetstreamServer, server2: JetstreamServer, db: Path
) -> None:
    serve(server, _ten_events())
    serve(server2, _ten_events())
    server.drop_after(4)

    report = run_ingest(settings(db, server.url, server2.url))

    assert counts(report, "connections", "connection_failures", "endpoint") == {
        "connections": 2,
        "connection_failures": 1,
        "endpoint": server2.url,
    }
    assert [request.cursor for request in server.requests] == [None]
    assert [request.cursor for request in server2.requests] == [rewound(at(3))]
    _expect_all_ten(db)
    assert snapshot(db).endpoint == server2.url


def test_a_refused_endpoint_is_skipped(server: JetstreamServer, refused_url: str, db: Path) -> None:
    serve(server, _ten_events())
    report = run_ingest(settings(db, refused_url, server.url))
    assert counts(report, "connections", "connection_failures", "endpoint") == {
        "connections": 1,
        "connection_failures": 1,
        "endpoint": server.url,
    }
    _expect_all_ten(db)


@pytest.mark.parametrize("down", ["refused", "503", "both"])
def test_every_endpoint_down_raises_a_clear_error(
    server: JetstreamServer, refused_url: str, db: Path, down: str
) -> None:
    server.refuse = True
    serve(server, _ten_events())
    urls = {"refused": [refused_url], "503": [server.url], "both": [server.url, refused_url]}[down]

    with pytest.raises(JetstreamUnavailableError) as caught:
        run_ingest(settings(db, *urls))

    message = str(caught.value)
    assert message.startswith("no Jetstream endpoint answered")
    assert f"{2 * len(urls)} failures in a row" in message
    assert "check JETSTREAM_URLS" in message
    assert urls[-1] in message
    if down == "503":
        assert "503" in message
    assert snapshot(db) == Snapshot()


def test_events_read_before_every_endpoint_failed_are_committed(
    server: JetstreamServer, db: Path
) -> None:
    events = _ten_events()
    serve(server, events)
    server.drop_after(3)  # three events, then the connection breaks...
    server.drop_after(0)  # ...and the reconnection breaks at once: two failures in a row

    with pytest.raises(JetstreamUnavailableError, match="2 failures in a row"):
        run_ingest(settings(db, server.url))

    state = snapshot(db)
    assert state.records == rows(*events[:3])
    assert state.cursor == at(2)
    assert state.endpoint == server.url


# -- when a cycle stops ----------------------------------------------------------------------


def test_a_quiet_stream_stops_by_the_idle_rule_and_the_next_cycle_resumes_from_its_start(
    server: JetstreamServer, store: MirrorStore
) -> None:
    before_us = time.time_ns() // 1000
    report = run_ingest(settings(store, server.url), store=store)
    assert counts(report, "frames", "stop_reason", "flushes") == {
        "frames": 0,
        "stop_reason": "idle",
        "flushes": 1,
    }
    # A first cycle that read nothing keeps the time it started as the cursor, so the next
    # cycle reads what happened in between instead of starting at the live edge again.
    assert report.cursor_after is not None
    assert before_us <= report.cursor_after <= time.time_ns() // 1000
    assert snapshot(store) == Snapshot(cursor=report.cursor_after, endpoint=server.url)
    run_ingest(settings(store, server.url), store=store)
    assert server.requests[1].cursor == rewound(report.cursor_after)
    assert snapshot(store).cursor == report.cursor_after  # a quiet cycle with a cursor keeps it


def test_an_event_from_after_the_start_stops_the_run(server: JetstreamServer, db: Path) -> None:
    past = create(ALICE, "a", rev=1, t=1)
    now = create(ALICE, "b", rev=2, t=in_the_future(60))
    later = create(ALICE, "c", rev=3, t=in_the_future(120))  # within the allowed clock skew
    serve(server, [past, now, later])

    report = run_ingest(settings(db, server.url, idle_seconds=30))

    assert counts(report, "frames", "stop_reason") == {"frames": 2, "stop_reason": "caught_up"}
    state = snapshot(db)
    assert state.records == rows(past, now)
    assert state.cursor == now["time_us"]


def test_the_event_budget_stops_the_run_and_the_next_run_goes_on(
    server: JetstreamServer, store: MirrorStore
) -> None:
    events = [create(ALICE, f"r{n}", rev=n, t=n * 10) for n in range(6)]
    serve(server, events)

    report = run_ingest(settings(store, server.url, max_events=3), store=store)

    assert counts(report, "frames", "stop_reason", "cursor_after") == {
        "frames": 3,
        "stop_reason": "event_budget",
        "cursor_after": at(20),
    }
    assert snapshot(store).records == rows(*events[:3])

    run_ingest(settings(store, server.url), store=store)
    assert server.requests[1].cursor == rewound(at(20))
    assert snapshot(store).records == rows(*events)


def test_the_time_budget_stops_a_stream_that_never_idles_out(
    server: JetstreamServer, db: Path
) -> None:
    events = [create(ALICE, "a", rev=1, t=1), create(ALICE, "b", rev=2, t=2)]
    serve(server, events)

    report = run_ingest(settings(db, server.url, idle_seconds=60, max_seconds=1))

    assert counts(report, "frames", "stop_reason") == {"frames": 2, "stop_reason": "time_budget"}
    assert snapshot(db).records == rows(*events)


# -- collections -----------------------------------------------------------------------------


def test_wanted_collections_are_sent_and_enforced_client_side(
    server: JetstreamServer, db: Path
) -> None:
    card = create(ALICE, "card", rev=1, t=1)
    thing = create(ALICE, "thing", rev=2, t=2, collection="com.example.thing")
    deep = create(ALICE, "deep", rev=3, t=3, collection="com.example.deep.nested")
    page = create(ALICE, "page", rev=4, t=4, collection=PAGE)
    post = create(ALICE, "post", rev=5, t=5, collection="app.bsky.feed.post")
    serve(server, [card, thing, page, post])
    # Frames added raw reach the client whatever it asked for, as from a server that ignores
    # wantedCollections: the client must filter them itself.
    server.add_raw(json.dumps(deep), time_us=deep["time_us"])
    server.add_raw(json.dumps(page | {"time_us": at(6)}), time_us=at(6))
    server.add(identity(BOB, "bob.test", t=7))  # identity and account events always come

    report = run_ingest(settings(db, server.url, collections="app.blento.card,com.example.*"))

    assert server.requests == [Request(None, ["app.blento.card", "com.example.*"])]
    assert counts(report, "frames", "skipped_untracked_collection", "events_commit_create") == {
        "frames": 5,
        "skipped_untracked_collection": 1,
        "events_commit_create": 3,
    }
    state = snapshot(db)
    assert state.records == rows(card, thing, deep)
    assert state.backfills == {
        (ALICE, CARD): "pending",
        (ALICE, "com.example.thing"): "pending",
        (ALICE, "com.example.deep.nested"): "pending",
    }
    assert state.cursor == at(7)


# -- the cursor ------------------------------------------------------------------------------


def test_the_stored_cursor_minus_the_rewind_is_where_a_run_starts(
    server: JetstreamServer, store: MirrorStore
) -> None:
    store_cursor(store, at(100))
    too_old = create(ALICE, "old", rev=1, t=50)
    in_window = create(ALICE, "window", rev=2, t=97)
    new = create(ALICE, "new", rev=3, t=101)
    serve(server, [too_old, in_window, new])

    report = run_ingest(settings(store, server.url), store=store)

    assert server.requests == [Request(rewound(at(100)), ["app.blento.card", "app.blento.page"])]
    assert (report.cursor_before, report.cursor_after) == (at(100), at(101))
    state = snapshot(store)
    assert state.records == rows(in_window, new)
    assert state.cursor == at(101)


@pytest.mark.parametrize(
    ("store", "first_t", "gap"),
    [
        ("file", 60, False),
        ("file", 61, True),
        ("file", 5000, True),
        pytest.param("lake", 61, True, marks=pytest.mark.lake),
    ],
    indirect=["store"],
)
def test_a_cursor_gap_is_recorded(
    server: JetstreamServer, store: MirrorStore, first_t: float, gap: bool
) -> None:
    store_cursor(store, at(0))
    first = create(ALICE, "a", rev=1, t=first_t)
    second = create(ALICE, "b", rev=2, t=first_t + 1)
    serve(server, [first, second])

    report = run_ingest(settings(store, server.url, gap_seconds=60), store=store)

    assert report.summary()["cursor_gaps"] == (1 if gap else 0)
    expected = [(server.url, rewound(at(0)), at(first_t), first_t + REWIND)] if gap else []
    state = snapshot(store)
    assert state.gaps == expected
    assert state.records == rows(first, second)


# -- flushing --------------------------------------------------------------------------------


def test_large_records_are_written_before_a_batch_holds_too_many_bytes(
    server: JetstreamServer, store: MirrorStore
) -> None:
    """A stream of the largest records the door lets in must not pile up a batch of
    INGEST_FLUSH_EVENTS of them in memory: INGEST_FLUSH_BYTES writes it sooner."""
    big = [create(ALICE, f"big{n}", rev=n + 1, t=n, text="x" * 300_000) for n in range(6)]
    serve(server, big)

    report = run_ingest(settings(store, server.url, flush_bytes=700_000), store=store)

    # 300 kB each: the third of a batch takes it past the bound, which writes it (without the
    # bound, all six would be one batch).
    assert report.flushes == 2
    assert snapshot(store).records == rows(*big)


def test_small_flushes_reach_the_same_state_as_one(
    server: JetstreamServer, new_store: StoreMaker
) -> None:
    events = [
        create(ALICE, "a", rev=1, t=1),
        create(BOB, "b", rev=1, t=2),
        update(ALICE, "a", rev=2, t=3),
        account(BOB, active=False, status="takendown", t=4),
        create(BOB, "c", rev=2, t=5),
        delete(ALICE, "a", rev=3, t=6),
        identity(ALICE, "alice.test", t=7),
    ]
    serve(server, events)
    server.add_raw("garbage between batches", time_us=at(7))

    in_many, in_one = new_store(), new_store()
    many = run_ingest(settings(in_many, server.url, flush_events=2), store=in_many)
    one = run_ingest(settings(in_one, server.url, flush_events=1_000), store=in_one)

    assert (many.flushes, one.flushes) == (4, 1)
    assert sorted(many.applied.new_dids) == [ALICE, BOB]
    state = snapshot(in_many)
    assert state == snapshot(in_one)
    assert state.records == {}
    assert state.tombstones == tombstones(events[5])
    assert state.versions == {
        uri(ALICE, "a"): Version(rev_tid(3), deleted=True, hidden=False),
        uri(BOB, "b"): Version(rev_tid(1), deleted=False, hidden=True),
        uri(BOB, "c"): Version(rev_tid(2), deleted=False, hidden=True),
    }
    assert state.accounts == {
        ALICE: Account(None, "active", hidden=False, identity_stale=True),
        BOB: Account(None, "takendown", hidden=True),
    }
    assert state.cursor == at(7)
