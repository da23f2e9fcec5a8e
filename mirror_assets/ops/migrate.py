"""`mirror migrate-to-lake`: copy a mirror file into a DuckLake, resumably (docs/scale-out.md).

Every table is copied in chunks in the file's row order, each chunk one lake transaction
that also records where the copy got to (`meta`: `migration_next_row:<table>`, the file's
next row id). A copy that is stopped (Ctrl-C, a killed process, a full disk) goes on from
its last chunk when run again: a chunk is in the lake whole or not at all, and never twice.
The source must not change meanwhile: the copy notes the file's cursor when it begins and
refuses to go on if that moved (writers were still running: rows already copied would be
stale). The cursor (`ingest_state`) is copied last, so an ingest pointed at a half-copied
lake starts live rather than from a cursor whose data is not all there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import duckdb
import pyarrow as pa

from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.lock import read_lock
from mirror_assets.store.schema import SCHEMA_VERSION, TABLES, current_version, set_meta

CHUNK_ROWS = 100_000
# The cursor goes last: it says the data up to it is there. `meta` is the lake's own.
LAST = "ingest_state"
COPIED = [table for table in TABLES if table not in (LAST, "meta")] + [LAST]
_SOURCE_CURSOR = "migration_source_cursor"
_ROW = "mirror_row_id"  # the file's row id, read beside each row


class MigrationError(RuntimeError):
    """The file cannot be copied as it is, or the lake already holds other data."""


@dataclass
class Migration:
    """What one run of the copy did: rows copied now, per table, and the tables it went on
    with from where an earlier run stopped."""

    copied: dict[str, int] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)


def migrate_to_lake(
    source: Path,
    lake: MirrorStore,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[str, int], None] = lambda table, rows: None,
) -> Migration:
    """Copy every table of the mirror file at `source` into `lake`, going on with a copy
    that was stopped; `progress(table, rows copied by this run)` after each chunk."""
    _begin(lake, _source_cursor(source))
    done = Migration()
    for table in COPIED:
        next_row = _next_row(lake, table)
        if next_row:
            done.resumed.append(table)
        done.copied[table] = 0
        while (chunk := _read_chunk(source, table, next_row, chunk_rows)).num_rows:
            lake.transact(partial(_append, table=table, chunk=chunk, start=next_row))
            next_row = int(chunk.column(_ROW)[-1].as_py()) + 1
            done.copied[table] += chunk.num_rows
            progress(table, done.copied[table])
    return done


@contextmanager
def _reading(source: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The file, read-only under its read lock, for one read."""
    with read_lock(source):
        con = duckdb.connect(str(source), read_only=True)
        try:
            yield con
        finally:
            con.close()


def _source_cursor(source: Path) -> str:
    if not source.exists():
        raise MigrationError(f"no mirror file at {source}: nothing to copy")
    with _reading(source) as con:
        version = current_version(con)
        if version != SCHEMA_VERSION:
            raise MigrationError(
                f"{source} has schema version {version}, a lake is made at {SCHEMA_VERSION}: "
                "run `mirror init` on the file first (with MIRROR_STORE unset)"
            )
        rows = con.execute("SELECT cursor_us FROM ingest_state").fetchall()
    return str(rows[0][0]) if rows else "none"


def _meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
    return str(rows[0][0]) if rows else None


def _begin(lake: MirrorStore, cursor: str) -> None:
    """Note the source's cursor in a new copy; refuse a lake that holds other data."""

    def begin(con: duckdb.DuckDBPyConnection) -> None:
        noted = _meta(con, _SOURCE_CURSOR)
        if noted is not None and noted != cursor:
            raise MigrationError(
                f"the file's cursor moved since this copy began ({noted} -> {cursor}): stop "
                "every writer of the file (`mirror run`), then copy into a new lake"
            )
        if noted is None:
            held = con.execute("SELECT count(*) FROM record_versions").fetchall()[0][0]
            if held:
                raise MigrationError(
                    f"the lake already holds {held} record versions of its own: copy into a "
                    "new lake (a new catalog database and data path)"
                )
            set_meta(con, _SOURCE_CURSOR, cursor)

    lake.transact(begin)


def _next_row(lake: MirrorStore, table: str) -> int:
    with lake.reading() as con:
        return int(_meta(con, f"migration_next_row:{table}") or 0)


def _read_chunk(source: Path, table: str, start: int, rows: int) -> pa.Table:
    """Up to `rows` rows of the table from row id `start` on, in row id order."""
    with _reading(source) as con:
        return con.sql(
            f"SELECT *, rowid AS {_ROW} FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT ?",
            params=[start, rows],
        ).to_arrow_table()


def _append(con: duckdb.DuckDBPyConnection, table: str, chunk: pa.Table, start: int) -> None:
    """One chunk and where the copy got to, in the caller's transaction. A chunk already
    there (its transaction committed, then the copy stopped before it knew) is skipped."""
    key = f"migration_next_row:{table}"
    if int(_meta(con, key) or 0) != start:
        return
    columns = ", ".join(f'"{name}"' for name in chunk.column_names if name != _ROW)
    con.register("chunk", chunk)
    con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM chunk")
    con.unregister("chunk")
    set_meta(con, key, str(int(chunk.column(_ROW)[-1].as_py()) + 1))
