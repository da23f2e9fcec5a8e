"""The DuckDB file behind the lock: short write transactions and read-only views of it.

A writer takes the cross-process write lock, opens the file, runs one transaction and
closes it again, so Dagster runs and the API take turns (DESIGN section 5). Network work
never happens inside `Store.writing()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from mirror_assets.lock import LockWait, read_lock, write_lock
from mirror_assets.schema import drop_all, migrate


@dataclass
class Transaction:
    """An open write transaction and how long it waited for the lock."""

    con: duckdb.DuckDBPyConnection
    lock_wait: LockWait


class Store:
    """The mirror's DuckDB file, opened only for as long as one transaction takes."""

    def __init__(self, path: Path, lock_timeout: float = 120.0) -> None:
        self.path = path
        self.lock_timeout = lock_timeout

    @contextmanager
    def writing(self) -> Iterator[Transaction]:
        """One write transaction under the write lock; commits on success, rolls back on error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with write_lock(self.path, self.lock_timeout) as wait:
            con = duckdb.connect(str(self.path))
            try:
                con.execute("BEGIN TRANSACTION")
                migrate(con)
                try:
                    yield Transaction(con, wait)
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection under the read lock (the schema is created if missing)."""
        if not self.path.exists():
            self.init()
        with read_lock(self.path, self.lock_timeout):
            con = duckdb.connect(str(self.path), read_only=True)
            try:
                yield con
            finally:
                con.close()

    def init(self) -> None:
        """Create or migrate the schema."""
        with self.writing():
            pass

    def reset(self) -> None:
        """Drop every table and view, then create the schema afresh."""
        with self.writing() as tx:
            drop_all(tx.con)
            migrate(tx.con)

    def cursor_us(self) -> int | None:
        """The Jetstream cursor of the last committed batch, if any."""
        with self.reading() as con:
            rows = con.execute("SELECT cursor_us FROM ingest_state").fetchall()
        return int(rows[0][0]) if rows else None
