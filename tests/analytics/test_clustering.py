"""Reclustering moves rows into time order and changes nothing else: not a value, not under
writers between its transactions, not when it is killed midway."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg

from mirror_assets.analytics.clustering import recluster
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.store.file import FileStore
from tests.support.dagster_helpers import metadata_of, run_job
from tests.support.events_factory import CARD, PAGE, create, delete, did, update
from tests.support.store_helpers import apply_events

Rows = list[tuple[object, ...]]


def _rows(db: Path) -> Rows:
    """Every stored value of every version, in URI order."""
    with FileStore(db).reading() as con:
        return con.execute("SELECT * FROM record_versions ORDER BY uri").fetchall()


def _in_time_order(db: Path) -> bool:
    """Whether, per collection, the table holds the rows in time order."""
    with FileStore(db).reading() as con:
        [(disorder,)] = con.execute(
            "SELECT count(*) FILTER (WHERE row_id < previous) FROM ("
            "  SELECT rowid AS row_id, lag(rowid) OVER ("
            "      PARTITION BY collection ORDER BY time_us, rowid) AS previous"
            "  FROM record_versions)"
        ).fetchall()
    return int(disorder) == 0


def _mixed_file(db: Path, users: int = 4, records: int = 60) -> None:
    """Live records in time order, then backfill-like batches far back in time."""
    apply_events(
        db,
        [
            create(did(f"u{u}"), f"live{i}", rev=1000 + i, t=10_000 + i * users + u)
            for i in range(records)
            for u in range(users)
        ],
    )
    for u in range(users):
        apply_events(
            db,
            [
                create(did(f"u{u}"), f"old{i}", rev=i + 1, t=-i * 3600 - u, collection=c)
                for i in range(records)
                for c in (CARD, PAGE)
            ],
        )
    apply_events(db, [delete(did("u0"), "old3", rev=5000, t=20_000)])


def test_recluster_puts_rows_in_time_order_and_changes_no_value(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    _mixed_file(db)
    before = _rows(db)
    assert not _in_time_order(db)
    report = recluster(FileStore(db), rows_per_slice=100)
    assert _rows(db) == before
    assert _in_time_order(db)
    assert report.slices_moved > 0
    assert report.rows_moved == len(before)  # every slice held backfilled rows
    again = recluster(FileStore(db), rows_per_slice=100)
    assert (again.slices, again.slices_moved, again.rows_moved) == (report.slices, 0, 0)


def test_writers_between_its_transactions_lose_nothing(tmp_path: Path) -> None:
    """Ingest runs between two slices; the file ends as one that was never reclustered."""
    db, twin = tmp_path / "mirror.duckdb", tmp_path / "twin.duckdb"
    for path in (db, twin):
        _mixed_file(path)
    batches = [
        [
            update(did(f"u{n % 4}"), f"old{n}", rev=6000 + n, t=30_000 + n),
            create(did("late"), f"r{n}", rev=n + 1, t=-50_000 - n),
        ]
        for n in range(40)
    ]

    def write_during() -> None:
        for batch in batches:
            apply_events(db, batch)

    writer = threading.Thread(target=write_during)
    writer.start()
    recluster(FileStore(db), rows_per_slice=20)
    writer.join()
    for batch in batches:
        apply_events(twin, batch)
    assert _strip_times(_rows(db)) == _strip_times(_rows(twin))


def _strip_times(rows: Rows) -> Rows:
    """Without `indexed_at`, the wall-clock time each copy was written at."""
    return [row[:-1] for row in rows]


def test_a_killed_recluster_loses_nothing_and_the_next_one_finishes(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    _mixed_file(db, users=6, records=80)
    before = _rows(db)
    script = (
        "import sys; from pathlib import Path; "
        "from mirror_assets.analytics.clustering import recluster; "
        "from mirror_assets.store.file import FileStore; recluster(FileStore(Path(sys.argv[1])), 5)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(db)])
    wal = db.with_name(db.name + ".wal")
    deadline = time.monotonic() + 60
    while not wal.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # kill it once it is writing
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "it finished before it could be killed"
    assert _rows(db) == before
    recluster(FileStore(db), rows_per_slice=100)
    assert _rows(db) == before
    assert _in_time_order(db)


def test_the_recluster_job_reports_on_records(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    _mixed_file(db)
    mirror = MirrorResource(db_path=str(db), collections=f"{CARD},{PAGE}", jetstream_urls="")
    result = run_job(mirror, "recluster")
    assert result.success
    [observation] = [
        event.event_specific_data.asset_observation  # type: ignore[union-attr]
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert observation.asset_key == dg.AssetKey("records")
    metadata = metadata_of(observation)
    assert metadata["recluster_slices"] == 2  # one per collection at the default slice size
    assert metadata["recluster_slices_moved"] == 2
    assert metadata["recluster_rows_moved"] == len(_rows(db))
    assert _in_time_order(db)
