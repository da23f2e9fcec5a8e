"""The lake's housekeeping: DuckLake's own maintenance calls, each in a transaction of the
store (retried like any other on a conflict with a writer), and what the lake holds after
it (docs/scale-out.md, maintenance).

Writers commit small transactions all day (a minute's ingest, a page of a backfill). Rows
of small inserts stay in the catalog (inlined) until flushed to Parquet; every commit that
writes files adds small ones, and every commit adds a snapshot. Left alone, a day of minute
ingests is thousands of files and snapshots, and every read pays for listing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import duckdb

from mirror_assets.store.lake import CATALOG


@dataclass(frozen=True)
class LakeFootprint:
    """What the lake holds: its data and delete files, their bytes, and its snapshots."""

    data_files: int
    data_bytes: int
    delete_files: int
    small_files: int  # data files under the small-file size
    snapshots: int
    oldest_snapshot_hours: float


def footprint(con: duckdb.DuckDBPyConnection, small_file_bytes: int) -> LakeFootprint:
    """Count the lake's files (through its catalog, not by listing the data path)."""
    files, size, deletes = con.execute(
        "SELECT coalesce(sum(file_count), 0), coalesce(sum(file_size_bytes), 0),"
        f" coalesce(sum(delete_file_count), 0) FROM ducklake_table_info('{CATALOG}')"
    ).fetchall()[0]
    tables = [row[0] for row in con.execute(f"FROM ducklake_table_info('{CATALOG}')").fetchall()]
    small = sum(
        con.execute(
            f"SELECT count(*) FROM ducklake_list_files('{CATALOG}', ?)"
            " WHERE data_file_size_bytes < ?",
            [table, small_file_bytes],
        ).fetchall()[0][0]
        for table in tables
    )
    snapshots, oldest = con.execute(
        "SELECT count(*), coalesce(epoch(now() - min(snapshot_time)) / 3600, 0)"
        f" FROM ducklake_snapshots('{CATALOG}')"
    ).fetchall()[0]
    return LakeFootprint(
        int(files), int(size), int(deletes), int(small), int(snapshots), float(oldest)
    )


def flush_inlined(con: duckdb.DuckDBPyConnection) -> int:
    """Write the rows small inserts left in the catalog to Parquet; how many tables had any."""
    return len(con.execute(f"CALL ducklake_flush_inlined_data('{CATALOG}')").fetchall())


# A data file is rewritten without its deleted rows (replaced record versions, tombstoned
# records' old versions) once this share of them is deleted: below it, rewriting costs more
# than reading past the deletes.
REWRITE_DELETED_SHARE = 0.05


def compact(con: duckdb.DuckDBPyConnection) -> int:
    """Rewrite files with many deleted rows, then merge adjacent small files into larger
    ones; how many files were written."""
    rewritten = con.execute(
        f"CALL ducklake_rewrite_data_files('{CATALOG}', delete_threshold => ?)",
        [REWRITE_DELETED_SHARE],
    ).fetchall()
    merged = con.execute(f"CALL ducklake_merge_adjacent_files('{CATALOG}')").fetchall()
    return len(rewritten) + len(merged)


def expire_snapshots(con: duckdb.DuckDBPyConnection, keep: timedelta) -> int:
    """Forget snapshots older than `keep` (time travel reaches no further); how many."""
    return len(
        con.execute(
            f"CALL ducklake_expire_snapshots('{CATALOG}', older_than => now() - ?::INTERVAL)",
            [keep],
        ).fetchall()
    )


# A file no snapshot references is a writer's until it commits: only those older than any
# transaction lasts are a killed writer's leftovers.
ORPHAN_AGE = timedelta(hours=1)


def delete_unreferenced(con: duckdb.DuckDBPyConnection) -> int:
    """Delete the files no snapshot references any more: those of expired snapshots, and
    those a killed writer left behind; how many."""
    old = con.execute(f"CALL ducklake_cleanup_old_files('{CATALOG}', cleanup_all => true)")
    removed = len(old.fetchall())
    orphans = con.execute(
        f"CALL ducklake_delete_orphaned_files('{CATALOG}', older_than => now() - ?::INTERVAL)",
        [ORPHAN_AGE],
    )
    return removed + len(orphans.fetchall())
