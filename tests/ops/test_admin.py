"""`mirror purge`, `reset-cursor` and `reset-backfills`, and the confirmation and lock every
command goes through: real processes on a real mirror, checked afterwards. Representative
cases run on a lake too (`on_both_stores`, `lake_too`); the file lock's are the file's own."""

from __future__ import annotations

import multiprocessing as mp
import os
import pty
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest

from mirror_assets.atproto.cursor_time import cursor_iso
from mirror_assets.model.apply import apply_batch
from mirror_assets.model.backfills import due_dids
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lock import read_lock
from mirror_assets.store.schema import LAKE_WRITES
from tests.support.cli_helpers import (
    ALICE,
    BACKFILL_STATES,
    BOB,
    CAROL,
    MIRROR,
    OTHER,
    across_stores,
    db_of,
    dump,
    lake_too,
    mirror,
    mirror_env,
    on_both_stores,
    table_rows,
)
from tests.support.events_factory import CARD, PAGE, at, create, did
from tests.support.proc_locks import flock_holders
from tests.support.store_helpers import batch_of

SPAWN = mp.get_context("spawn")


def listed(output: str) -> dict[str, int]:
    """The indented `name  count` lines of a command's output."""
    pairs = (line.split() for line in output.splitlines() if line.startswith("  "))
    return {name: int(count) for name, count in pairs}


# --- purge ---------------------------------------------------------------------------------

# Where the known content has rows of app.blento.card (see fill_mirror).
CARD_ROWS = {
    "record_versions": 4,  # a1, a2, the tombstone of a3, b1
    "backfills": 2,
    "discovery_state": 1,
    "user_counts": 2,
    "collection_stats": 1,
    "operator_notes": 2,  # a table the test adds: purge finds tables by their column
}


def _tables_with_collection(store: MirrorStore) -> set[str]:
    """The mirror's base tables with a `collection` column (not the lake's catalog's)."""
    rows = table_rows(
        store,
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'collection' "
        "AND table_catalog = current_database() AND table_name IN (SELECT table_name "
        "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_catalog = current_database())",
    )
    return {row[0] for row in rows}


def _count(store: MirrorStore, table: str, collection: str) -> int:
    [(count,)] = table_rows(
        store, f'SELECT count(*) FROM "{table}" WHERE collection = ?', [collection]
    )
    return int(count)


def _everything_but(store: MirrorStore, collection: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table and view, except those of the collection (and a lake's
    count of its write transactions)."""
    with store.reading() as con:
        names = [row[0] for row in con.execute("SHOW TABLES").fetchall() if row[0] != LAKE_WRITES]
        described = {n: con.execute(f'DESCRIBE "{n}"').fetchall() for n in names}
        return {
            name: sorted(
                con.execute(
                    f'SELECT * FROM "{name}" WHERE collection IS DISTINCT FROM ?'
                    if any(column[0] == "collection" for column in described[name])
                    else f'SELECT * FROM "{name}" WHERE ? IS NOT NULL',
                    [collection],
                ).fetchall(),
                key=repr,
            )
            for name in names
        }


@across_stores(
    ("tracked", "note"),
    [
        lake_too(
            "app.blento.card,app.blento.page",
            "app.blento.card is still tracked (COLLECTIONS=app.blento.card,app.blento.page): "
            "the next ingest, discovery and backfills fill it again",
        ),
        (
            "app.blento.*",
            "app.blento.card is still tracked (COLLECTIONS=app.blento.*): the next ingest fills "
            "it again, and backfills of the DIDs it shows (a prefix.* collection is not "
            "discovered)",
        ),
        (
            "app.blento.page",
            "app.blento.card is not tracked (COLLECTIONS=app.blento.page): nothing brings it back",
        ),
    ],
)
def test_purge_removes_the_collection_from_every_table_that_has_one(
    project: Path, project_store: MirrorStore, tracked: str, note: str
) -> None:
    store = project_store
    with store.writing() as tx:
        tx.con.execute("CREATE TABLE operator_notes (collection VARCHAR, note VARCHAR)")
        tx.con.execute(
            "INSERT INTO operator_notes VALUES (?, 'a'), (?, 'b'), (?, 'c')", [CARD, CARD, PAGE]
        )
    tables = _tables_with_collection(store)
    before = {table: _count(store, table, CARD) for table in tables}
    assert {table: before[table] for table in CARD_ROWS} == CARD_ROWS
    untouched = _everything_but(store, CARD)

    result = mirror(project, "purge", CARD, "--yes", COLLECTIONS=tracked)
    assert result.returncode == 0, result.stderr
    assert f"{CARD}: {sum(before.values())} rows removed from {store.name}" in result.stdout
    assert listed(result.stdout) == before
    assert note in result.stdout
    assert {table: _count(store, table, CARD) for table in tables} == dict.fromkeys(tables, 0)
    assert _everything_but(store, CARD) == untouched


@pytest.mark.parametrize(
    "collection", ["app.blento.*", "app.blento", "app.blento.card,app.blento.page", "a b.c.d"]
)
def test_purge_refuses_what_is_not_one_nsid(
    project: Path, project_store: MirrorStore, collection: str
) -> None:
    before = dump(project_store)
    result = mirror(project, "purge", collection, "--yes")
    assert result.returncode == 2
    assert f"mirror purge: {collection!r} is not a collection NSID" in result.stderr
    assert dump(project_store) == before


# --- reset-cursor --------------------------------------------------------------------------


def _cursor(time_us: int) -> str:
    return f"{time_us} ({cursor_iso(time_us)})"


@on_both_stores
def test_reset_cursor_deletes_it_so_the_next_ingest_starts_live(
    project: Path, project_store: MirrorStore
) -> None:
    result = mirror(project, "reset-cursor", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"cursor: {_cursor(at(9))} -> none" in result.stdout
    assert (
        "the next ingest starts at the live edge of the stream; events after "
        f"{cursor_iso(at(9))} are not read" in result.stdout
    )
    assert table_rows(project_store, "SELECT * FROM ingest_state") == []
    assert "cursor: none yet (the next ingest starts live)" in mirror(project, "status").stdout


@across_stores(
    ["to"],
    [
        str(at(2)),
        lake_too("2024-08-30T06:40:02Z"),
        "2024-08-30T08:40:02+02:00",
        "2024-08-30 06:40:02",
    ],
)
def test_reset_cursor_to_a_time_rewinds_and_warns_about_jetstream_s_day(
    project: Path, project_store: MirrorStore, to: str
) -> None:
    result = mirror(project, "reset-cursor", "--to", to, "--yes")
    assert result.returncode == 0, result.stderr
    assert f"cursor: {_cursor(at(9))} -> {_cursor(at(2))}" in result.stdout
    assert f"the next ingest reads the stream from {cursor_iso(at(2))}" in result.stdout
    assert "warning: that is " in result.stdout
    assert "Jetstream keeps about a day of events" in result.stdout
    assert "records as a cursor gap" in result.stdout
    assert "moved forward" not in result.stdout
    assert table_rows(project_store, "SELECT cursor_us, endpoint FROM ingest_state") == [
        (at(2), None)
    ]
    status = mirror(project, "status").stdout
    assert f"cursor: {at(2)} ({cursor_iso(at(2))}, " in status
    assert "set by `mirror reset-cursor`" in status


def test_reset_cursor_forward_to_an_hour_ago_warns_of_the_skipped_events(
    project: Path, project_store: MirrorStore
) -> None:
    hour_ago = int((time.time() - 3600) * 1_000_000)
    result = mirror(project, "reset-cursor", "--to", str(hour_ago), "--yes")
    assert result.returncode == 0, result.stderr
    assert f"cursor: {_cursor(at(9))} -> {_cursor(hour_ago)}" in result.stdout
    assert f"warning: the cursor moved forward; events after {cursor_iso(at(9))}" in result.stdout
    assert "that is 1.0 h ago. Jetstream keeps about a day of events" in result.stdout
    assert "warning: that is" not in result.stdout  # within Jetstream's day
    assert table_rows(project_store, "SELECT cursor_us FROM ingest_state") == [(hour_ago,)]


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("1725000000", "1725000000 is before 2023: a time_us counts microseconds"),
        pytest.param(str(int((time.time() + 3600) * 1e6)), "is in the future", id="in-an-hour"),
        ("2999-01-01", "2999-01-01 is in the future"),
        ("yesterday", "'yesterday' is neither a time_us"),
    ],
)
def test_reset_cursor_refuses_a_time_it_cannot_use(
    project: Path, project_store: MirrorStore, to: str, message: str
) -> None:
    result = mirror(project, "reset-cursor", "--to", to, "--yes")
    assert result.returncode == 2
    assert message in result.stderr
    assert table_rows(project_store, "SELECT cursor_us FROM ingest_state") == [(at(9),)]


# --- reset-backfills -----------------------------------------------------------------------

EVERY = {(state["did"], state["collection"]) for state in BACKFILL_STATES}
STATUS_OF = {(state["did"], state["collection"]): state["status"] for state in BACKFILL_STATES}
RESTARTED = {
    "status": "pending",
    "pds_cursor": None,
    "repo_rev": None,
    "pages": 0,
    "records": 0,
    "attempts": 0,
    "last_error": None,
    "next_attempt_at": None,
}


def _backfills(store: MirrorStore) -> dict[tuple[str, str], dict[str, Any]]:
    with store.reading() as con:
        cursor = con.execute("SELECT * FROM backfills")
        rows = cursor.fetchall()
        names = [column[0] for column in cursor.description or []]
    return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in rows}


def _due(store: MirrorStore) -> set[str]:
    with store.reading() as con:
        return set(due_dids(con))


@across_stores(
    ("args", "selected"),
    [
        lake_too([], EVERY),
        (["--status", "failed"], {(ALICE, CARD)}),
        (["--status", "failed", "--status", "complete"], {(ALICE, CARD), (BOB, CARD)}),
        (["--collection", CARD], {(ALICE, CARD), (BOB, CARD)}),
        (["--did", BOB], {(BOB, CARD), (BOB, PAGE)}),
        lake_too(["--did", BOB, "--status", "in_progress"], {(BOB, PAGE)}),
        (["--collection", OTHER, "--did", CAROL], {(CAROL, OTHER)}),
    ],
)
def test_reset_backfills_restarts_the_selected_ones_from_the_first_page(
    project: Path, project_store: MirrorStore, args: list[str], selected: set[tuple[str, str]]
) -> None:
    store = project_store
    before = _backfills(store)
    assert _due(store) == {BOB, CAROL}  # alice's failure is retried in two hours

    result = mirror(project, "reset-backfills", *args, "--yes")
    assert result.returncode == 0, result.stderr
    assert listed(result.stdout) == Counter(STATUS_OF[key] for key in selected)
    assert f"{len(selected)} backfills set back to pending" in result.stdout
    after = _backfills(store)
    assert after.keys() == before.keys()
    for key, row in after.items():
        if key in selected:
            assert row["updated_at"] > before[key]["updated_at"]
            assert row == {**before[key], **RESTARTED, "updated_at": row["updated_at"]}
        else:
            assert row == before[key]
    # What the backfill sensor launches next.
    assert _due(store) == {BOB, CAROL} | {did_ for did_, _ in selected}


@on_both_stores
def test_reset_backfills_that_match_nothing_changes_nothing(
    project: Path, project_store: MirrorStore
) -> None:
    before = dump(project_store)
    nobody = did("nobody")
    result = mirror(project, "reset-backfills", "--did", nobody, "--status", "failed", "--yes")
    assert result.returncode == 0, result.stderr
    assert (
        f"no backfills match (backfills with status failed, did {nobody}): nothing changed"
        in result.stdout
    )
    assert dump(project_store) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--did", "bob"], "'bob' is not a DID"),
        (["--collection", "app.blento.*"], "'app.blento.*' is not a collection NSID"),
    ],
)
def test_reset_backfills_refuses_a_bad_filter(
    project: Path, project_store: MirrorStore, args: list[str], message: str
) -> None:
    before = dump(project_store)
    result = mirror(project, "reset-backfills", *args, "--yes")
    assert result.returncode == 2
    assert message in result.stderr
    assert dump(project_store) == before


# --- confirmation --------------------------------------------------------------------------


@across_stores(
    ["args"],
    [
        ["purge", CARD],
        ["reset-cursor"],
        ["reset-cursor", "--to", str(at(2))],
        ["reset-backfills", "--status", "failed"],
        lake_too(["reset"]),
    ],
)
def test_without_yes_and_without_a_terminal_nothing_changes(
    project: Path, project_store: MirrorStore, args: list[str]
) -> None:
    before = dump(project_store)
    result = mirror(project, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"mirror {args[0]}: this ")
    assert result.stderr.strip().endswith("confirm with --yes")
    assert dump(project_store) == before


def at_terminal(project: Path, reply: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `mirror` with a terminal on stdin, and type the reply into it."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [MIRROR, *args],
            cwd=project,
            env=mirror_env(project),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(controller, f"{reply}\n".encode())
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@across_stores(("reply", "purged"), [lake_too("y", True), ("n", False), ("", False)])
def test_purge_asks_at_a_terminal(
    project: Path, project_store: MirrorStore, reply: str, purged: bool
) -> None:
    result = at_terminal(project, reply, "purge", CARD)
    question = (
        f"Delete every record, tombstone, backfill and summary of {CARD} in "
        f"{project_store.name}? [y/N]"
    )
    assert result.stdout.startswith(question)
    assert result.returncode == (0 if purged else 1), result.stderr
    assert ("nothing changed" in result.stdout) is not purged
    assert _count(project_store, "record_versions", CARD) == (0 if purged else 4)


# --- the file lock -------------------------------------------------------------------------


def _hold_the_writer(db: str, holding: Event, release: Event) -> None:
    """Hold a write transaction until released, then add a card record and commit."""
    with FileStore(Path(db)).writing() as tx:
        holding.set()
        release.wait(60)
        apply_batch(tx.con, batch_of([create(ALICE, "late", rev=9, t=20)]))


def _hold_a_reader(db: str, holding: Event, release: Event) -> None:
    with read_lock(Path(db)):
        holding.set()
        release.wait(60)


@contextmanager
def holding(target: Callable[[str, Event, Event], None], db: Path) -> Iterator[Event]:
    """Run a lock holder in another process; yield its release event; join it."""
    held, release = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=target, args=(str(db), held, release), daemon=True)
    process.start()
    try:
        assert held.wait(30), "the holder did not take the lock"
        yield release
    finally:
        release.set()
        process.join(30)
        if process.is_alive():
            process.kill()
    assert process.exitcode == 0


WAITING_COMMANDS = {
    "sql": [
        "sql",
        f"SELECT count(*) AS n FROM records WHERE collection = '{CARD}'",
        "--format",
        "csv",
    ],
    "purge": ["purge", CARD, "--yes"],
}


@pytest.mark.parametrize("command", WAITING_COMMANDS)
def test_a_command_waits_for_the_writer_and_then_sees_its_commit(
    project: Path, command: str
) -> None:
    db = db_of(project)
    with holding(_hold_the_writer, db) as release:
        process = subprocess.Popen(
            [MIRROR, *WAITING_COMMANDS[command]],
            cwd=project,
            env=mirror_env(project),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert process.poll() is None, "the command did not wait for the writer"
        assert process.pid not in flock_holders(db.with_name(db.name + ".rw"))
        release.set()
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    # Three card records before the writer's commit, four after: the command ran after it.
    if command == "sql":
        assert stdout == "n\n4\n"
    else:
        assert listed(stdout)["record_versions"] == 5  # and the tombstone


def test_sql_reads_alongside_another_reader(project: Path) -> None:
    db = db_of(project)
    with holding(_hold_a_reader, db):
        result = mirror(project, "sql", "SELECT count(*) AS n FROM records", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "n\n6\n"
