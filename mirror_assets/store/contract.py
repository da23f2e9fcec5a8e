"""What every store offers the rest of the mirror: short write transactions, reads, and the
few operations built on them. The file (`store/file.py`) and the lake (`store/lake.py`)
differ in how they keep writers apart, not in what they offer (docs/scale-out.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import duckdb

from mirror_assets.store.lock import LockWait
from mirror_assets.store.schema import drop_all, migrate

R = TypeVar("R")


@dataclass
class Transaction:
    """An open write transaction and how long it waited for the lock."""

    con: duckdb.DuckDBPyConnection
    lock_wait: LockWait


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection, lock_wait: LockWait) -> Iterator[Transaction]:
    """One transaction on `con`: the schema made or migrated first, COMMIT at the end,
    ROLLBACK on any error (then nothing of it is written)."""
    con.execute("BEGIN TRANSACTION")
    try:
        migrate(con)
        yield Transaction(con, lock_wait)
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


class MirrorStore(Protocol):
    """A store of the mirror's tables. Network work never happens inside `writing()`.

    The stores subclass it for the operations built on the three primitives.
    """

    # How long a writer with one transaction after another leaves the store alone in
    # between, so that readers get in (the file's readers poll its lock; the lake's read
    # snapshots and need no pause).
    reader_window: float

    @property
    def name(self) -> str:
        """The store as messages name it: its file, or its lake's data path."""

    def writing(self) -> AbstractContextManager[Transaction]:
        """One write transaction; commits on success, rolls back on error."""

    def transact(self, write: Callable[[duckdb.DuckDBPyConnection], R]) -> tuple[R, float]:
        """Run `write(con)` in one write transaction; what it returned, and the seconds it
        waited for other writers. `write` may run more than once (the lake runs it again
        after a conflict), so it must depend on nothing but its connection and arguments."""

    def reading(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection that reads the last committed state (the schema made if missing)."""

    def init(self) -> None:
        """Create or migrate the schema."""
        self.transact(lambda con: None)

    def reset(self) -> None:
        """Drop every table and view, then create the schema afresh."""

        def recreate(con: duckdb.DuckDBPyConnection) -> None:
            drop_all(con)
            migrate(con)

        self.transact(recreate)

    def cursor_us(self) -> int | None:
        """The Jetstream cursor of the last committed batch, if any."""
        with self.reading() as con:
            rows = con.execute("SELECT cursor_us FROM ingest_state").fetchall()
        return int(rows[0][0]) if rows else None
