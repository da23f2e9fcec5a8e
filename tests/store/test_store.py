"""apply_batch on each store: rev-ordered writes, tombstones, account lifecycle, cursor."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pytest

from mirror_assets.atproto.events import CursorGap
from mirror_assets.model.apply import apply_batch
from mirror_assets.model.batch import BatchBuilder
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.schema import MIGRATIONS, SCHEMA_VERSION, SchemaTooNewError
from tests.conftest import StoreMaker
from tests.support.events_factory import (
    CARD,
    PAGE,
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
from tests.support.store_helpers import (
    ENDPOINT,
    Account,
    Snapshot,
    Version,
    apply_events,
    batch_of,
    snapshot,
)

ALICE, BOB, CAROL = did("alice"), did("bob"), did("carol")


def apply_in_orders(
    new_store: StoreMaker,
    events: Sequence[Event],
    *,
    seed: Sequence[Event] = (),
    trials: int = 6,
) -> Snapshot:
    """Apply `events` in several orders and batch splits, each on a new store after `seed`.

    The first trial keeps the given order in one batch, the second reverses it one event per
    batch, the rest shuffle and split into two to four batches at random. Every trial must end
    in the same state, which is returned for the caller's exact assertions.
    """
    rng = random.Random(20240830)
    result: Snapshot | None = None
    first = new_store()
    if not isinstance(first, FileStore):
        # The lake runs the same SQL: three orders (as given, reversed one by one, a shuffle)
        # check its transactions; the file's six check the rules.
        trials = min(trials, 3)
    for trial in range(trials):
        order = list(events)
        if trial == 1:
            order.reverse()
        elif trial > 1:
            rng.shuffle(order)
        if trial == 0:
            chunks = [order]
        elif trial == 1:
            chunks = [[event] for event in order]
        else:
            cuts = sorted(rng.sample(range(1, len(order)), min(rng.randint(1, 3), len(order) - 1)))
            chunks = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
        path = first if trial == 0 else new_store()
        if seed:
            apply_events(path, seed)
        for chunk in chunks:
            apply_events(path, chunk)
        state = snapshot(path)
        state.cursor = state.endpoint = None  # the cursor depends on what came last
        if result is None:
            result = state
        else:
            assert state == result, f"trial {trial}: {[c for c in chunks]}"
    assert result is not None
    return result


# -- schema ----------------------------------------------------------------------------------


def test_schema_is_created_on_first_use_with_its_version(db: Path) -> None:
    assert not db.exists()
    assert snapshot(db) == Snapshot()  # reading a missing file creates it, empty
    con = duckdb.connect(str(db), read_only=True)
    try:
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        names = {
            row[0]
            for row in con.execute(
                "SELECT table_name FROM duckdb_tables() UNION ALL "
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        }
    finally:
        con.close()
    assert version == [(str(SCHEMA_VERSION),)]
    assert {
        "records",
        "tombstones",
        "record_versions",
        "accounts",
        "backfills",
        "ingest_state",
        "ingest_gaps",
        "discovery_state",
        "meta",
    } <= names


def test_a_version_1_file_is_migrated_and_keeps_its_data(db: Path) -> None:
    con = duckdb.connect(str(db))
    con.execute(MIGRATIONS[0])
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute(
        "INSERT INTO backfills (did, collection, status, updated_at) "
        "VALUES ('did:plc:a', 'app.blento.card', 'pending', now())"
    )
    con.close()
    apply_events(db, [create(ALICE, "a", rev=1, t=1)])
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert con.execute(
            "SELECT did, status, next_attempt_at, completed_at FROM backfills ORDER BY did"
        ).fetchall() == [
            ("did:plc:a", "pending", None, None),
            (ALICE, "pending", None, None),
        ]
        assert con.execute("SELECT pds_resolved_at FROM accounts").fetchall() == [(None,)]
        assert con.execute("SELECT count(*) FROM discovery_state").fetchall() == [(0,)]
    finally:
        con.close()


def test_schema_is_created_by_the_first_write(db: Path) -> None:
    apply_events(db, [create(ALICE, "a", rev=1, t=1)])
    FileStore(db).init()  # a second migration finds nothing to do
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT key, value FROM meta").fetchall() == [
            ("schema_version", str(SCHEMA_VERSION))
        ]
    finally:
        con.close()


def test_a_file_from_a_newer_schema_is_refused(db: Path) -> None:
    FileStore(db).init()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    with pytest.raises(SchemaTooNewError, match=rf"schema version {SCHEMA_VERSION + 1}"):
        apply_events(db, [create(ALICE, "a", rev=1, t=1)])
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM record_versions").fetchall() == [(0,)]
        assert con.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION + 1),)]
    finally:
        con.close()


# -- create, update, delete ------------------------------------------------------------------


def test_create_writes_the_record_registers_the_did_and_moves_the_cursor(
    store: MirrorStore,
) -> None:
    card = create(ALICE, "3kcard", rev=1, t=1, text="first card")
    result = apply_events(store, [card])
    assert (result.upserted, result.tombstoned, result.stale) == (1, 0, 0)
    assert result.new_dids == [ALICE]
    assert result.cursor_us == at(1)
    assert snapshot(store) == Snapshot(
        records=rows(card),
        versions={uri(ALICE, "3kcard"): Version(rev_tid(1), deleted=False, hidden=False)},
        accounts={ALICE: Account(None, "active", hidden=False)},
        backfills={(ALICE, CARD): "pending"},
        cursor=at(1),
        endpoint=ENDPOINT,
    )


def test_update_replaces_the_record(
    store: MirrorStore,
) -> None:
    card = create(ALICE, "k", rev=1, t=1, text="v1")
    edit = update(ALICE, "k", rev=2, t=2, text="v2")
    apply_events(store, [card])
    result = apply_events(store, [edit])
    assert (result.upserted, result.tombstoned, result.stale, result.new_dids) == (1, 0, 0, [])
    state = snapshot(store)
    assert state.records == rows(edit)
    assert state.tombstones == {}


def test_delete_turns_the_record_into_a_tombstone(
    store: MirrorStore,
) -> None:
    card = create(ALICE, "k", rev=1, t=1)
    gone = delete(ALICE, "k", rev=2, t=2)
    apply_events(store, [card])
    result = apply_events(store, [gone])
    assert (result.upserted, result.tombstoned, result.stale) == (0, 1, 0)
    state = snapshot(store)
    assert state.records == {}
    assert state.tombstones == tombstones(gone)
    assert state.versions == {uri(ALICE, "k"): Version(rev_tid(2), deleted=True, hidden=False)}
    assert state.backfills == {(ALICE, CARD): "pending"}  # the DID stays known


def test_create_update_delete_in_one_batch(
    store: MirrorStore,
) -> None:
    events = [
        create(ALICE, "a", rev=1, t=1, text="a1"),
        update(ALICE, "a", rev=2, t=2, text="a2"),
        create(ALICE, "b", rev=3, t=3, text="b1"),
        delete(ALICE, "b", rev=4, t=4),
        create(BOB, "c", rev=1, t=5, text="c1", collection=PAGE),
    ]
    result = apply_events(store, events)
    assert (result.upserted, result.tombstoned, result.stale) == (2, 1, 2)
    assert sorted(result.new_dids) == [ALICE, BOB]
    state = snapshot(store)
    assert state.records == rows(events[1], events[4])
    assert state.tombstones == tombstones(events[3])
    assert state.cursor == at(5)


def test_replayed_events_change_nothing_and_count_as_stale(
    store: MirrorStore,
) -> None:
    events = [
        create(ALICE, "a", rev=1, t=1),
        update(ALICE, "a", rev=2, t=2),
        create(ALICE, "b", rev=3, t=3),
        delete(ALICE, "b", rev=4, t=4),
        create(BOB, "c", rev=1, t=5),
        identity(BOB, "bob.test", t=6),
    ]
    apply_events(store, events)
    before = snapshot(store)
    for replay in (events, events[2:], events[:1]):
        result = apply_events(store, replay)
        commits = sum(1 for event in replay if event["kind"] == "commit")
        assert (result.upserted, result.tombstoned, result.stale) == (0, 0, commits)
        assert result.new_dids == []
        assert result.hidden_changed == result.purged == result.accounts_changed == 0
        assert snapshot(store) == before


def test_same_event_twice_in_one_batch_is_one_write(
    store: MirrorStore,
) -> None:
    card = create(ALICE, "a", rev=1, t=1)
    result = apply_events(store, [card, card, card])
    assert (result.upserted, result.stale) == (1, 2)
    assert snapshot(store).records == rows(card)


# -- order: versions, not arrival, decide ----------------------------------------------------


def test_higher_rev_wins_whatever_the_order(new_store: StoreMaker) -> None:
    a1 = create(ALICE, "a", rev=1, t=1, text="a1")
    a2 = update(ALICE, "a", rev=2, t=2, text="a2")
    a3 = update(ALICE, "a", rev=3, t=3, text="a3")
    b1 = create(ALICE, "b", rev=4, t=4, text="b1")
    b2 = delete(ALICE, "b", rev=5, t=5)
    c1 = create(BOB, "c", rev=1, t=6, text="c1", collection=PAGE)
    c2 = update(BOB, "c", rev=7, t=7, text="c2", collection=PAGE)
    # A replay of an old version with a later time (another Jetstream instance, a rewind).
    a1_again = create(ALICE, "a", rev=1, t=9, text="a1")
    state = apply_in_orders(new_store, [a1, a2, a3, b1, b2, c1, c2, a1_again])
    assert state.records == rows(a3, c2)
    assert state.tombstones == tombstones(b2)
    assert state.accounts == {
        ALICE: Account(None, "active", hidden=False),
        BOB: Account(None, "active", hidden=False),
    }
    assert state.backfills == {(ALICE, CARD): "pending", (BOB, PAGE): "pending"}


def test_a_delete_beats_a_write_of_the_same_rev(new_store: StoreMaker) -> None:
    write = create(ALICE, "a", rev=5, t=1)
    gone = delete(ALICE, "a", rev=5, t=2)
    state = apply_in_orders(new_store, [write, gone], trials=4)
    assert state.records == {}
    assert state.tombstones == tombstones(gone)


def test_two_writes_of_the_same_rev_settle_on_one(new_store: StoreMaker) -> None:
    first = create(ALICE, "a", rev=5, t=1, text="one")
    second = update(ALICE, "a", rev=5, t=2, text="two")
    state = apply_in_orders(new_store, [first, second], trials=4)
    winner = max(first, second, key=lambda e: e["commit"]["cid"])
    assert state.records == rows(winner)


def test_an_update_for_a_record_deleted_later_stays_deleted(new_store: StoreMaker) -> None:
    card = create(ALICE, "a", rev=1, t=1, text="v1")
    edit = update(ALICE, "a", rev=2, t=2, text="v2")
    gone = delete(ALICE, "a", rev=3, t=3)
    late_edit = update(ALICE, "a", rev=2, t=8, text="v2")  # the update, arriving after
    late_create = create(ALICE, "a", rev=1, t=9, text="v1")  # an old create, replayed
    state = apply_in_orders(new_store, [card, edit, gone, late_edit, late_create])
    assert state.records == {}
    assert state.tombstones == tombstones(gone)


def test_replayed_create_after_a_delete_in_a_later_batch_does_not_resurrect(
    store: MirrorStore,
) -> None:
    card = create(ALICE, "a", rev=1, t=1)
    apply_events(store, [card, update(ALICE, "a", rev=2, t=2), delete(ALICE, "a", rev=3, t=3)])
    result = apply_events(store, [card])
    assert (result.upserted, result.stale) == (0, 1)
    assert snapshot(store).records == {}


def test_delete_of_a_record_never_seen_leaves_a_tombstone(
    store: MirrorStore,
) -> None:
    gone = delete(ALICE, "a", rev=5, t=5)
    result = apply_events(store, [gone])
    assert (result.upserted, result.tombstoned, result.new_dids) == (0, 1, [])
    state = snapshot(store)
    assert state.records == {}
    assert state.tombstones == tombstones(gone)
    assert state.accounts == {}  # a delete alone does not make a DID worth backfilling
    assert state.backfills == {}

    older = create(ALICE, "a", rev=4, t=6)
    result = apply_events(store, [older])
    assert (result.upserted, result.stale, result.new_dids) == (0, 1, [ALICE])
    state = snapshot(store)
    assert state.records == {}
    assert state.tombstones == tombstones(gone)

    newer = create(ALICE, "a", rev=6, t=7, text="re-created")
    result = apply_events(store, [newer])
    assert (result.upserted, result.stale) == (1, 0)
    state = snapshot(store)
    assert state.records == rows(newer)
    assert state.tombstones == {}


def test_delete_never_seen_then_creates_in_any_order(new_store: StoreMaker) -> None:
    gone = delete(ALICE, "a", rev=5, t=5)
    older = create(ALICE, "a", rev=4, t=6)
    other = create(ALICE, "b", rev=3, t=7)
    state = apply_in_orders(new_store, [gone, older, other])
    assert state.records == rows(other)
    assert state.tombstones == tombstones(gone)


# -- accounts --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["takendown", "suspended", "deactivated"])
def test_hiding_statuses_keep_rows_but_hide_them_until_active(
    store: MirrorStore, status: str
) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    b = create(BOB, "b", rev=1, t=2)
    gone = delete(ALICE, "x", rev=2, t=3)
    apply_events(store, [a, b, gone])

    result = apply_events(store, [account(ALICE, active=False, status=status, t=10)])
    assert (result.accounts_changed, result.hidden_changed, result.purged) == (1, 2, 0)
    state = snapshot(store)
    assert state.records == rows(b)
    assert state.tombstones == tombstones(gone)
    assert state.versions[uri(ALICE, "a")] == Version(rev_tid(1), deleted=False, hidden=True)
    assert state.accounts[ALICE] == Account(None, status, hidden=True)
    assert state.backfills == {(ALICE, CARD): "pending", (BOB, CARD): "pending"}

    # Writes while hidden land, hidden too.
    later = create(ALICE, "c", rev=3, t=11)
    apply_events(store, [later])
    state = snapshot(store)
    assert state.records == rows(b)
    assert state.versions[uri(ALICE, "c")] == Version(rev_tid(3), deleted=False, hidden=True)

    result = apply_events(store, [account(ALICE, active=True, t=12)])
    assert (result.accounts_changed, result.hidden_changed) == (1, 3)
    state = snapshot(store)
    assert state.records == rows(a, b, later)
    assert state.accounts[ALICE] == Account(None, "active", hidden=False)
    assert not any(version.hidden for version in state.versions.values())


@pytest.mark.parametrize("status", ["takendown", "suspended", "deactivated"])
def test_hidden_in_the_same_batch_as_the_writes(store: MirrorStore, status: str) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    apply_events(store, [a, account(ALICE, active=False, status=status, t=2)])
    state = snapshot(store)
    assert state.records == {}
    assert state.versions == {uri(ALICE, "a"): Version(rev_tid(1), deleted=False, hidden=True)}
    assert state.accounts[ALICE] == Account(None, status, hidden=True)


@pytest.mark.parametrize(
    ("active", "status"),
    [(False, "throttled"), (False, "desynchronized"), (False, None), (True, "throttled")],
)
def test_statuses_that_change_nothing(store: MirrorStore, active: bool, status: str | None) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    b = create(BOB, "b", rev=1, t=2)
    apply_events(store, [a, b, account(BOB, active=False, status="takendown", t=3)])
    before = snapshot(store)
    assert before.records == rows(a)

    result = apply_events(
        store,
        [
            account(ALICE, active=active, status=status, t=10),
            account(BOB, active=False, status=status, t=10),
        ],
    )
    assert (result.accounts_changed, result.hidden_changed, result.purged) == (0, 0, 0)
    after = snapshot(store)
    after.cursor = before.cursor
    assert after == before
    assert after.accounts == {
        ALICE: Account(None, "active", hidden=False),
        BOB: Account(None, "takendown", hidden=True),
    }


def test_deleted_purges_the_did_for_good(
    store: MirrorStore,
) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    p = create(ALICE, "p", rev=2, t=2, collection=PAGE)
    x = delete(ALICE, "x", rev=3, t=3)
    b = create(BOB, "b", rev=1, t=4)
    apply_events(store, [a, p, x, b])
    assert snapshot(store).backfills == {
        (ALICE, CARD): "pending",
        (ALICE, PAGE): "pending",
        (BOB, CARD): "pending",
    }

    # The deletion, with replays of the DID's writes before and after it in the same batch.
    result = apply_events(
        store,
        [
            create(ALICE, "early", rev=4, t=5),
            account(ALICE, active=False, status="deleted", t=6),
            create(ALICE, "late", rev=5, t=7, collection=PAGE),
            a,
        ],
    )
    assert result.purged == 3
    assert result.accounts_changed == 1
    assert (result.upserted, result.tombstoned) == (0, 0)
    state = snapshot(store)
    assert state.records == rows(b)
    assert state.tombstones == {}
    assert set(state.versions) == {uri(BOB, "b")}
    assert state.accounts == {
        ALICE: Account(None, "deleted", hidden=True),
        BOB: Account(None, "active", hidden=False),
    }
    assert state.backfills == {(BOB, CARD): "pending"}

    # Later batches: replays of old writes, newer writes, a reactivation, a new handle.
    for replay in (
        [a, p],
        [create(ALICE, "new", rev=9, t=20), update(ALICE, "a", rev=10, t=21)],
        [account(ALICE, active=True, t=22), create(ALICE, "after", rev=11, t=23)],
        [identity(ALICE, "alice.test", t=24)],
    ):
        result = apply_events(store, replay)
        assert (result.upserted, result.tombstoned, result.new_dids) == (0, 0, [])
        later = snapshot(store)
        assert later.records == rows(b)
        assert set(later.versions) == {uri(BOB, "b")}
        assert later.accounts == state.accounts
        assert later.backfills == {(BOB, CARD): "pending"}


def test_deleted_in_the_same_batch_as_the_first_writes(
    store: MirrorStore,
) -> None:
    apply_events(
        store,
        [
            create(ALICE, "a", rev=1, t=1),
            account(ALICE, active=False, status="deleted", t=2),
            create(ALICE, "b", rev=2, t=3),
        ],
    )
    state = snapshot(store)
    assert state.records == {}
    assert state.versions == {}
    assert state.backfills == {}
    assert state.accounts == {ALICE: Account(None, "deleted", hidden=True)}


def test_an_older_account_event_replayed_after_a_newer_one_does_not_win(
    store: MirrorStore,
) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    takedown = account(ALICE, active=False, status="takendown", t=5)
    restore = account(ALICE, active=True, t=6)
    apply_events(store, [a])

    apply_events(store, [restore])
    result = apply_events(store, [takedown])
    assert (result.accounts_changed, result.hidden_changed) == (0, 0)
    assert snapshot(store).records == rows(a)

    apply_events(store, [account(ALICE, active=False, status="suspended", t=7)])
    result = apply_events(store, [restore])
    assert result.accounts_changed == 0
    state = snapshot(store)
    assert state.records == {}
    assert state.accounts[ALICE] == Account(None, "suspended", hidden=True)


def test_an_older_deleted_event_replayed_after_a_newer_one_is_stale_too(
    store: MirrorStore,
) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    apply_events(store, [a, account(ALICE, active=True, t=9)])
    apply_events(store, [account(ALICE, active=False, status="deleted", t=5)])
    state = snapshot(store)
    # The newer `active` event wins: the older deletion is stale, nothing is purged.
    assert state.records == rows(a)
    assert state.accounts[ALICE] == Account(None, "active", hidden=False)


def test_account_events_in_any_order_settle_on_the_newest(new_store: StoreMaker) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    b = create(BOB, "b", rev=1, t=1)
    events = [
        account(ALICE, active=False, status="takendown", t=5),
        account(ALICE, active=True, t=6),
        account(ALICE, active=False, status="deactivated", t=7),
        account(ALICE, active=False, status="throttled", t=8),
        account(BOB, active=False, status="suspended", t=5),
        account(BOB, active=True, t=9),
        update(ALICE, "a", rev=2, t=10, text="while deactivated"),
    ]
    state = apply_in_orders(new_store, events, seed=[a, b])
    assert state.records == rows(b)
    assert state.versions[uri(ALICE, "a")] == Version(rev_tid(2), deleted=False, hidden=True)
    assert state.accounts == {
        ALICE: Account(None, "deactivated", hidden=True),
        BOB: Account(None, "active", hidden=False),
    }


def test_account_events_for_unknown_dids_are_ignored(
    store: MirrorStore,
) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    apply_events(store, [a])
    result = apply_events(
        store,
        [
            account(CAROL, active=False, status="takendown", t=2),
            account(did("dave"), active=False, status="deleted", t=3),
            account(did("erin"), active=True, t=4),
        ],
    )
    assert (result.accounts_changed, result.hidden_changed, result.purged) == (0, 0, 0)
    state = snapshot(store)
    assert state.accounts == {ALICE: Account(None, "active", hidden=False)}
    assert state.records == rows(a)
    assert state.cursor == at(4)


# -- identities ------------------------------------------------------------------------------


def _as_checked(store: MirrorStore, handles: dict[str, str]) -> None:
    """Leave accounts as a check of their identities would: these handles verified."""
    with store.writing() as tx:
        tx.con.execute("UPDATE accounts SET identity_stale = false")
        for did_, handle in handles.items():
            tx.con.execute("UPDATE accounts SET handle = ? WHERE did = ?", [handle, did_])


def test_identity_events_mark_known_dids_for_a_check_by_the_newest_event(
    store: MirrorStore,
) -> None:
    apply_events(store, [create(ALICE, "a", rev=1, t=1), create(BOB, "b", rev=1, t=1)])
    _as_checked(store, {ALICE: "alice-new.test", BOB: "bob.test"})
    result = apply_events(
        store,
        [
            identity(ALICE, "alice-new.test", t=5),  # repeats the verified handle: kept
            identity(ALICE, "alice-old.test", t=3),  # older, arriving later in the batch
            identity(BOB, "bob-other.test", t=4),  # another handle: not believed meanwhile
            identity(CAROL, "carol.test", t=4),  # never seen: ignored
        ],
    )
    assert result.identities_changed == 2
    assert snapshot(store).accounts == {
        ALICE: Account("alice-new.test", "active", hidden=False, identity_stale=True),
        BOB: Account(None, "active", hidden=False, identity_stale=True),
    }

    _as_checked(store, {})
    result = apply_events(store, [identity(ALICE, "alice-older.test", t=4)])  # older than t=5
    assert result.identities_changed == 0
    assert snapshot(store).accounts[ALICE] == Account("alice-new.test", "active", hidden=False)

    apply_events(store, [identity(ALICE, None, t=6)])
    assert snapshot(store).accounts[ALICE] == Account(None, "active", False, identity_stale=True)


def test_identity_in_the_same_batch_as_the_first_write(
    store: MirrorStore,
) -> None:
    apply_events(store, [create(ALICE, "a", rev=1, t=1), identity(ALICE, "alice.test", t=2)])
    assert snapshot(store).accounts == {
        ALICE: Account(None, "active", hidden=False, identity_stale=True)
    }


# -- registration and backfills --------------------------------------------------------------


def test_new_dids_get_one_pending_backfill_per_collection(
    store: MirrorStore,
) -> None:
    result = apply_events(
        store,
        [
            create(ALICE, "a", rev=1, t=1),
            create(ALICE, "b", rev=2, t=2),
            create(ALICE, "p", rev=3, t=3, collection=PAGE),
            create(BOB, "b", rev=1, t=4, collection=PAGE),
            delete(CAROL, "c", rev=1, t=5),
        ],
    )
    assert sorted(result.new_dids) == [ALICE, BOB]
    state = snapshot(store)
    assert state.backfills == {
        (ALICE, CARD): "pending",
        (ALICE, PAGE): "pending",
        (BOB, PAGE): "pending",
    }
    assert set(state.accounts) == {ALICE, BOB}

    # A known DID writing to a new collection gets a backfill for it; an existing one is kept.
    with store.writing() as tx:
        tx.con.execute(
            "UPDATE backfills SET status = 'done' WHERE did = ? AND collection = ?", [BOB, PAGE]
        )
    result = apply_events(
        store, [create(BOB, "b2", rev=2, t=6, collection=PAGE), create(BOB, "c", rev=3, t=7)]
    )
    assert result.new_dids == []
    assert snapshot(store).backfills == {
        (ALICE, CARD): "pending",
        (ALICE, PAGE): "pending",
        (BOB, PAGE): "done",
        (BOB, CARD): "pending",
    }


# -- cursor and transactions -----------------------------------------------------------------


def test_the_cursor_never_moves_backwards(
    store: MirrorStore,
) -> None:
    apply_events(store, [create(ALICE, "a", rev=1, t=10)], endpoint="ws://one")
    assert store.cursor_us() == at(10)
    result = apply_events(store, [create(ALICE, "b", rev=2, t=4)], endpoint="ws://two")
    assert result.upserted == 1  # the data lands, the cursor stays
    state = snapshot(store)
    assert state.cursor == at(10)
    assert set(state.records) == {uri(ALICE, "a"), uri(ALICE, "b")}
    apply_events(store, [create(ALICE, "c", rev=3, t=12)], endpoint="ws://two")
    assert (snapshot(store).cursor, snapshot(store).endpoint) == (at(12), "ws://two")


def test_the_cursor_moves_without_events(
    store: MirrorStore,
) -> None:
    builder = BatchBuilder()
    builder.advance(at(3), ENDPOINT)
    builder.advance(at(2), ENDPOINT)
    with store.writing() as tx:
        result = apply_batch(tx.con, builder.build())
    assert result.cursor_us == at(3)
    assert snapshot(store) == Snapshot(cursor=at(3), endpoint=ENDPOINT)


def test_a_failed_transaction_leaves_nothing_behind(
    store: MirrorStore,
) -> None:
    store = store
    with pytest.raises(RuntimeError, match="after apply"), store.writing() as tx:
        apply_batch(tx.con, batch_of([create(ALICE, "a", rev=1, t=1)]))
        raise RuntimeError("after apply")
    assert store.cursor_us() is None
    assert snapshot(store) == Snapshot()

    first = create(ALICE, "a", rev=1, t=1)
    apply_events(store, [first])
    before = snapshot(store)
    with pytest.raises(RuntimeError, match="after apply"), store.writing() as tx:
        apply_batch(
            tx.con,
            batch_of(
                [
                    update(ALICE, "a", rev=2, t=2),
                    create(BOB, "b", rev=1, t=3),
                    identity(ALICE, "alice.test", t=4),
                    account(ALICE, active=False, status="deleted", t=5),
                ],
                gaps=[CursorGap(ENDPOINT, at(0), at(5))],
            ),
        )
        raise RuntimeError("after apply")
    assert snapshot(store) == before
    assert before.cursor == at(1)
    assert before.records == rows(first)


def test_gaps_are_recorded_with_the_batch(
    store: MirrorStore,
) -> None:
    gap = CursorGap("ws://gappy", at(0), at(900))
    result = apply_events(store, [create(ALICE, "a", rev=1, t=900)], gaps=[gap])
    assert result.gaps == 1
    assert snapshot(store).gaps == [("ws://gappy", at(0), at(900), 900.0)]


def test_neutral_account_events_never_mask_a_deciding_one(
    store: MirrorStore,
) -> None:
    a = create(ALICE, "a", rev=1, t=1)
    b = create(BOB, "b", rev=1, t=1)
    apply_events(store, [a, b])
    # In one batch: the newest event of ALICE is `throttled`, which decides nothing.
    apply_events(
        store,
        [
            account(ALICE, active=False, status="deactivated", t=5),
            account(ALICE, active=False, status="throttled", t=6),
        ],
    )
    # Across batches: BOB's neutral event is newer than the deciding one that arrives after.
    apply_events(store, [account(BOB, active=False, status="desynchronized", t=6)])
    apply_events(store, [account(BOB, active=False, status="suspended", t=5)])
    state = snapshot(store)
    assert state.records == {}
    assert state.accounts == {
        ALICE: Account(None, "deactivated", hidden=True),
        BOB: Account(None, "suspended", hidden=True),
    }
