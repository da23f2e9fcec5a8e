"""The `export` job against real DuckDB files and a real Dagster instance: Parquet snapshots
equal to the `records` view, folders that follow COLLECTIONS, files replaced atomically, and
an export that reads under the read lock only."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as Signal
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from mirror_assets.defs.resources import MirrorResource
from mirror_assets.model.apply import apply_batch
from mirror_assets.store.file import FileStore
from tests.support.dagster_helpers import metadata_of, run_job
from tests.support.events_factory import (
    CARD,
    PAGE,
    Event,
    account,
    create,
    delete,
    did,
    event_uri,
    numbered_did,
)
from tests.support.proc_locks import flock_holders
from tests.support.store_helpers import apply_events, batch_of

CAROL = did("carol")  # takendown
NOTE = "com.example.note"  # in the file, not tracked at first
USERS = [numbered_did(n) for n in range(5)]
COLUMNS = ("uri", "did", "rkey", "cid", "record", "rev", "time_us", "indexed_at")
SPAWN = mp.get_context("spawn")
WAIT = 30.0  # how long a helper process or thread waits for what must happen

Row = tuple[Any, ...]


def _mirror(db: Path, exports: Path, collections: str = f"{CARD},{PAGE}") -> MirrorResource:
    return MirrorResource(
        db_path=str(db),
        collections=collections,
        jetstream_urls="ws://127.0.0.1:9",
        export_dir=str(exports),
    )


def _export(mirror: MirrorResource) -> dict[str, Any]:
    """Run the `export` job; the materialization's metadata as plain values."""
    result = run_job(mirror, "export")
    assert result.success
    [materialization] = result.asset_materializations_for_node("parquet_exports")
    assert materialization.asset_key == dg.AssetKey("parquet_exports")
    return metadata_of(materialization)


def _folders(exports: Path) -> set[str]:
    return {path.name for path in exports.iterdir()}


def _file(exports: Path, collection: str) -> Path:
    return exports / f"collection={collection}" / "records.parquet"


def _normal(rows: list[Row]) -> list[Row]:
    """Rows with `record` parsed, so JSON text compares by content."""
    return [(*row[:4], json.loads(row[4]), *row[5:]) for row in rows]


def _view(db: Path, collection: str) -> list[Row]:
    """The `records` view's rows of a collection, newest first."""
    with FileStore(db).reading() as con:
        rows = con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM records WHERE collection = ? "
            "ORDER BY time_us DESC, uri",
            [collection],
        ).fetchall()
    return _normal(rows)


def _pyarrow(path: Path) -> list[Row]:
    table = pq.read_table(path)
    assert table.column_names == list(COLUMNS)
    return _normal([tuple(row[c] for c in COLUMNS) for row in table.to_pylist()])


def _duckdb(exports: Path) -> dict[str, list[Row]]:
    """Every snapshot read at once, as analysts read them: rows by the Hive `collection`."""
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"SELECT collection, {', '.join(COLUMNS)} FROM read_parquet(?, "
            "hive_partitioning = true) ORDER BY collection, time_us DESC, uri",
            [f"{exports}/*/*.parquet"],
        ).fetchall()
    finally:
        con.close()
    by_collection: dict[str, list[Row]] = {}
    for collection, *row in rows:
        by_collection.setdefault(collection, []).append(tuple(row))
    return {collection: _normal(rows) for collection, rows in by_collection.items()}


def _mixed_file(db: Path) -> dict[str, Event]:
    """1,000 cards of five users (times shared by three at once), three pages, a deleted
    card, a takendown account's cards and page, and a note nobody tracks. Returns the
    create events of the records that must be exported, by URI."""
    cards = [
        create(USERS[i % 5], f"card{i:04d}", rev=i + 1, t=i // 3, text=f"card {i}")
        for i in range(1_000)
    ]
    pages = [
        create(USERS[i], f"page{i}", rev=2_000 + i, t=500 + i, collection=PAGE) for i in range(3)
    ]
    hidden = [create(CAROL, f"c{i}", rev=i + 1, t=600 + i) for i in range(7)]
    hidden.append(create(CAROL, "cp", rev=10, t=610, collection=PAGE))
    apply_events(
        db, [*cards, *pages, *hidden, create(USERS[0], "n0", rev=3_000, t=700, collection=NOTE)]
    )
    apply_events(
        db,
        [
            delete(USERS[2], "card0007", rev=4_000, t=800),
            account(CAROL, active=False, status="takendown", t=801),
        ],
    )
    gone = {event_uri(cards[7])}
    return {event_uri(e): e for e in [*cards, *pages] if event_uri(e) not in gone}


def test_the_export_job_writes_the_records_view_of_each_tracked_collection(
    tmp_path: Path,
) -> None:
    db, exports = tmp_path / "mirror.duckdb", tmp_path / "exports"
    expected = _mixed_file(db)
    metadata = _export(_mirror(db, exports))

    assert _folders(exports) == {f"collection={CARD}", f"collection={PAGE}"}  # no NOTE
    for collection in (CARD, PAGE):
        assert sorted(p.name for p in _file(exports, collection).parent.iterdir()) == [
            "records.parquet"
        ]
    view = {collection: _view(db, collection) for collection in (CARD, PAGE)}
    assert (len(view[CARD]), len(view[PAGE])) == (999, 3)
    from_pyarrow = {collection: _pyarrow(_file(exports, collection)) for collection in view}
    assert from_pyarrow == view
    assert _duckdb(exports) == view

    # What the view holds is what the events made: no deleted record, nothing of Carol's.
    exported = {row[0]: row for rows in from_pyarrow.values() for row in rows}
    assert sorted(exported) == sorted(expected)
    for uri_, event in expected.items():
        commit = event["commit"]
        assert exported[uri_][1:7] == (
            event["did"],
            commit["rkey"],
            commit["cid"],
            commit["record"],
            commit["rev"],
            event["time_us"],
        )
    # Newest first; records of the same moment in URI order.
    for rows in from_pyarrow.values():
        keys = [(-row[6], row[0]) for row in rows]
        assert keys == sorted(keys)
    assert len({row[6] for row in from_pyarrow[CARD]}) < len(from_pyarrow[CARD])  # ties seen

    collections = metadata.pop("collections")
    assert {name: value["rows"] for name, value in collections.items()} == {CARD: 999, PAGE: 3}
    for name, value in collections.items():
        assert value["bytes"] == _file(exports, name).stat().st_size
        assert value["seconds"] >= 0
    assert metadata == {
        "dagster/row_count": 1_002,
        "folder": str(exports.absolute()),
        "removed": "none",
    }


def test_folders_follow_the_tracked_collections_between_runs(tmp_path: Path) -> None:
    db, exports = tmp_path / "mirror.duckdb", tmp_path / "exports"
    _mixed_file(db)
    exports.mkdir()
    (exports / "notes").mkdir()  # not a snapshot folder: left alone
    (exports / "README.txt").write_text("snapshots of the mirror\n")
    card_rows = _view(db, CARD)

    first = _export(_mirror(db, exports))
    assert first["removed"] == "none"
    assert _folders(exports) == {
        f"collection={CARD}",
        f"collection={PAGE}",
        "notes",
        "README.txt",
    }

    # PAGE is no longer tracked: its folder goes, CARD's stays.
    second = _export(_mirror(db, exports, CARD))
    assert second["removed"] == PAGE
    assert second["dagster/row_count"] == 999
    assert _folders(exports) == {f"collection={CARD}", "notes", "README.txt"}
    assert _pyarrow(_file(exports, CARD)) == card_rows

    # A wildcard adds NOTE, which has a record: it gets a folder.
    third = _export(_mirror(db, exports, f"{CARD},com.example.*"))
    assert third["removed"] == "none"
    assert third["collections"][NOTE]["rows"] == 1
    assert _folders(exports) == {
        f"collection={CARD}",
        f"collection={NOTE}",
        "notes",
        "README.txt",
    }
    assert [row[0] for row in _pyarrow(_file(exports, NOTE))] == [f"at://{USERS[0]}/{NOTE}/n0"]

    # A tracked collection without live records has no snapshot, PAGE is added back, and
    # two folders gone at once are named in order.
    apply_events(db, [delete(USERS[0], "n0", rev=5_000, t=900, collection=NOTE)])
    (exports / f"collection={PAGE}").mkdir()  # a stale folder left by someone
    (exports / f"collection={PAGE}" / "records.parquet").write_bytes(b"stale")
    fourth = _export(_mirror(db, exports, f"{CARD},com.example.*"))
    assert fourth["removed"] == f"{PAGE}, {NOTE}"
    assert _folders(exports) == {f"collection={CARD}", "notes", "README.txt"}
    assert (exports / "README.txt").read_text() == "snapshots of the mirror\n"


def test_a_reader_of_the_old_file_keeps_a_complete_snapshot(tmp_path: Path) -> None:
    db, exports = tmp_path / "mirror.duckdb", tmp_path / "exports"
    _mixed_file(db)
    mirror = _mirror(db, exports)
    _export(mirror)
    path = _file(exports, CARD)
    old_rows = _pyarrow(path)
    with path.open("rb") as held:
        reader = pq.ParquetFile(held)  # the footer is read now, the rows below
        old_inode = os.fstat(held.fileno()).st_ino
        apply_events(
            db,
            [
                *(create(USERS[1], f"new{i}", rev=6_000 + i, t=1_000 + i) for i in range(50)),
                delete(USERS[3], "card0003", rev=7_000, t=1_100),
            ],
        )
        metadata = _export(mirror)
        assert metadata["collections"][CARD]["rows"] == 999 + 50 - 1
        # The open file is the old snapshot, whole: a new file took its name.
        held_rows = reader.read().to_pylist()
        assert _normal([tuple(row[c] for c in COLUMNS) for row in held_rows]) == old_rows
    assert path.stat().st_ino != old_inode
    assert _pyarrow(path) == _view(db, CARD)
    assert len(_view(db, CARD)) == 1_048
    assert sorted(p.name for p in path.parent.iterdir()) == ["records.parquet"]  # no .partial


# -- locks: the export reads under the read lock ---------------------------------------------


def _hold_write_lock(db: str, holding: Signal, release: Signal) -> None:
    """Apply a record in a write transaction, and keep it open until told to commit."""
    with FileStore(Path(db), lock_timeout=WAIT).writing() as tx:
        apply_batch(tx.con, batch_of([create(USERS[4], "late", rev=9_000, t=2_000)]))
        holding.set()
        release.wait(WAIT)


def _hold_read_lock(db: str, holding: Signal, release: Signal) -> None:
    with FileStore(Path(db), lock_timeout=WAIT).reading() as con:
        con.execute("SELECT count(*) FROM records").fetchall()
        holding.set()
        release.wait(WAIT)


def _open_in_this_process(path: Path) -> bool:
    """Whether this process has a descriptor open on `path` (/proc, Linux)."""
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if fd.readlink() == path:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


@pytest.fixture
def holder() -> Iterator[list[BaseProcess]]:
    """Processes a test starts; any still running at the end is killed."""
    started: list[BaseProcess] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)


def _start(
    started: list[BaseProcess], target: Callable[[str, Signal, Signal], None], db: Path
) -> tuple[BaseProcess, Signal, Signal]:
    holding, release = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=target, args=(str(db), holding, release), daemon=True)
    process.start()
    started.append(process)
    assert holding.wait(WAIT), "the holder never took the lock"
    return process, holding, release


def test_the_export_waits_for_a_writer_and_reads_what_it_committed(
    tmp_path: Path, holder: list[BaseProcess]
) -> None:
    db, exports = tmp_path / "mirror.duckdb", tmp_path / "exports"
    _mixed_file(db)
    rw = db.with_name(db.name + ".rw")
    writer, _, release = _start(holder, _hold_write_lock, db)
    seen: list[tuple[bool, dict[int, str], bool]] = []

    def release_once_the_export_waits() -> None:
        # The export has opened the lock file: it is inside `read_lock`, which it cannot
        # pass while the writer holds the lock.
        deadline = time.monotonic() + WAIT
        while not (waiting := _open_in_this_process(rw)) and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append((waiting, flock_holders(rw), _file(exports, CARD).exists()))
        release.set()

    watcher = threading.Thread(target=release_once_the_export_waits)
    watcher.start()
    metadata = _export(_mirror(db, exports))
    watcher.join(WAIT)
    writer.join(WAIT)
    assert writer.exitcode == 0
    # While the export waited, the writer held the lock and no snapshot had been written.
    assert seen == [(True, {writer.pid: "WRITE"}, False)]
    # The export read after the writer's commit.
    assert metadata["collections"][CARD]["rows"] == 1_000
    rows = _pyarrow(_file(exports, CARD))
    assert rows[0][0] == f"at://{USERS[4]}/{CARD}/late"
    assert rows == _view(db, CARD)


def test_the_export_reads_beside_another_reader(tmp_path: Path, holder: list[BaseProcess]) -> None:
    db, exports = tmp_path / "mirror.duckdb", tmp_path / "exports"
    _mixed_file(db)
    reader, _, release = _start(holder, _hold_read_lock, db)
    rw = db.with_name(db.name + ".rw")
    assert flock_holders(rw) == {reader.pid: "READ"}
    # A writer's lock would wait for the reader, which waits for us: this only returns if
    # the export shares the file.
    metadata = _export(_mirror(db, exports))
    assert flock_holders(rw) == {reader.pid: "READ"}
    release.set()
    reader.join(WAIT)
    assert reader.exitcode == 0
    assert metadata["dagster/row_count"] == 1_002


@pytest.mark.parametrize(
    "name",
    [
        "com.example.\x00note",
        "com.example.note/../../../escaped",
        "com.example..note",
        "com.example.note\u202e",
        "com.example." + "n" * 400,
    ],
)
def test_a_collection_name_that_is_not_an_nsid_never_becomes_a_folder(
    tmp_path: Path, name: str
) -> None:
    """A file written before collections were checked at the door may hold such names under
    a tracked wildcard: the export leaves them out and never writes outside EXPORT_DIR."""
    db, exports = tmp_path / "data" / "mirror.duckdb", tmp_path / "data" / "exports"
    _mixed_file(db)
    with FileStore(db).writing() as tx:
        tx.con.execute(
            "INSERT INTO record_versions (uri, uri_hash, did, collection, rkey, cid, record, "
            "rev, time_us, deleted, hidden, indexed_at) SELECT uri || 'x', uri_hash + 1, did, "
            "?, rkey, cid, record, rev, time_us, false, false, now() FROM record_versions "
            "WHERE collection = ? LIMIT 1",
            [name, NOTE],
        )

    metadata = _export(_mirror(db, exports, f"{CARD},com.example.*"))

    assert set(metadata["collections"]) == {CARD, NOTE}
    assert _folders(exports) == {f"collection={CARD}", f"collection={NOTE}"}
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == sorted(
        [db.name, f"{db.name}.gate", f"{db.name}.rw", "exports"]
    )
