"""The DuckDB file behind the lock: short write transactions and read-only views of it.

A writer takes the cross-process write lock, opens the file, runs one transaction and
closes it again, so Dagster runs and the API take turns (docs/ingest.md, the file lock).
Network work never happens inside `FileStore.writing()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from mirror_assets.store.contract import MirrorStore, Transaction, transaction
from mirror_assets.store.lock import READER_WINDOW_SECONDS, read_lock, write_lock
from mirror_assets.store.schema import SCHEMA_VERSION, current_version

R = TypeVar("R")


_NO_SPACE = "No space left on device"  # the operating system's words, in DuckDB's errors


class DiskFullError(Exception):
    """A write transaction failed because the file's disk is full; nothing was written."""


class FileStore(MirrorStore):
    """The mirror's DuckDB file, opened only for as long as one transaction takes."""

    reader_window = READER_WINDOW_SECONDS

    def __init__(self, path: Path, lock_timeout: float = 120.0) -> None:
        self.path = path
        self.lock_timeout = lock_timeout

    @property
    def name(self) -> str:
        return str(self.path)

    @contextmanager
    def writing(self) -> Iterator[Transaction]:
        """One write transaction under the write lock; commits on success, rolls back on error.

        A disk that is full fails the transaction, which leaves the file as it was:
        DiskFullError says so.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with write_lock(self.path, self.lock_timeout) as wait:
                if not self.path.exists():
                    self._create()
                con = self._connect(read_only=False)
                try:
                    with transaction(con, wait) as tx:
                        yield tx
                finally:
                    con.close()
        except duckdb.Error as error:
            if _NO_SPACE not in str(error):
                raise
            raise DiskFullError(
                f"{self.path}: its disk is full ({error}). The transaction was rolled back: "
                "nothing was lost, and once there is space the next run goes on from the last "
                "commit"
            ) from error

    def transact(self, write: Callable[[duckdb.DuckDBPyConnection], R]) -> tuple[R, float]:
        """Run `write(con)` in one write transaction; what it returned, and the seconds it
        waited for the lock."""
        with self.writing() as tx:
            return write(tx.con), tx.lock_wait.seconds

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection under the read lock (the schema is created if missing)."""
        if self.path.exists():
            with self._read_only() as con:
                if current_version(con) >= SCHEMA_VERSION:
                    yield con
                    return
        # No file, a file without the schema (a writer was killed inside the file's first
        # transaction), or an older schema: create or migrate it, then read.
        self.init()
        with self._read_only() as con:
            yield con

    def _create(self) -> None:
        """A new, empty DuckDB file, made beside its place and moved in whole: a process killed
        while DuckDB writes a new file's headers leaves no file that cannot be opened."""
        new = self.path.with_name(self.path.name + ".new")
        new.unlink(missing_ok=True)
        duckdb.connect(str(new)).close()
        new.replace(self.path)

    @contextmanager
    def _read_only(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with read_lock(self.path, self.lock_timeout):
            con = self._connect(read_only=True)
            try:
                yield con
            finally:
                con.close()

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file; wait out a process that holds it without taking our lock.

        Every process of the mirror goes through the lock, but an analyst's DuckDB shell
        does not: its open file makes ours fail with "Could not set lock". Waiting for it
        (up to the lock timeout) turns a short outside read into a delay instead of an error.
        """
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
