"""The mirror in a DuckLake: its catalog in Postgres, its data as Parquet files in a folder
or an S3 bucket, many writers and readers on many machines (docs/scale-out.md).

No file lock here: DuckLake's transactions keep writers apart. Each reads the snapshot it
began on and commits a new one; two that changed the same table in ways that clash (both
deleted from it, or one deleted while the other inserted) cannot both commit, and the
second fails with a conflict. Two that only inserted do both commit, even rows of the same
key: the mirror's writes add an account, a backfill or a record only if it is not there
yet, so every write transaction also updates the one row of `lake_writes`, and any two
that overlap conflict. So writers take turns (store/turns.py: an advisory lock in the
catalog, granted in the order asked, on every machine), and a conflict is left only to a
writer outside the mirror: `LakeStore.transact` then runs the later one again from the
start, on the snapshot the first committed, after a short random wait that doubles each
time, a bounded number of times. Writers work in parallel outside their transactions (the
network, decoding, building batches) and commit one after another (docs/scale-out.md).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from mirror_assets.config import LakeLocation, S3Access
from mirror_assets.store import extensions
from mirror_assets.store.contract import MirrorStore, Transaction, transaction
from mirror_assets.store.lock import LockWait
from mirror_assets.store.schema import LAKE_WRITES, SCHEMA_VERSION, current_version
from mirror_assets.store.turns import WriterTurns

R = TypeVar("R")

CATALOG = "mirror"  # the name the lake is attached under, by the mirror and by analysts
# DuckLake's words when a read-only ATTACH finds no lake in the catalog (nothing made it yet).
LAKE_NOT_MADE = "creating a new DuckLake is explicitly disabled"
CONFLICT_RETRIES = 12
FIRST_RETRY_SECONDS = 0.02
LONGEST_RETRY_SECONDS = 2.0


class ConflictError(RuntimeError):
    """A transaction kept conflicting with other writers and was given up."""


def is_conflict(error: duckdb.Error) -> bool:
    """A commit refused because another transaction changed the same table first."""
    return isinstance(error, duckdb.TransactionException) and "conflict" in str(error).lower()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def attach(con: duckdb.DuckDBPyConnection, lake: LakeLocation, read_only: bool = False) -> None:
    """Load what the lake needs into `con`'s database and attach the lake as `mirror`."""
    on_s3 = lake.data_path.startswith("s3://")
    needed = ["ducklake"]
    if lake.catalog.startswith("postgres:"):
        needed.append("postgres_scanner")
    if on_s3:
        needed.append("httpfs")
    extensions.load(con, *needed)
    if on_s3:
        _add_s3_secret(con, S3Access.from_env())
    elif not read_only:
        Path(lake.data_path).mkdir(parents=True, exist_ok=True)
    options = [f"DATA_PATH {_literal(lake.data_path)}"] + (["READ_ONLY"] if read_only else [])
    con.execute(
        f"ATTACH {_literal('ducklake:' + lake.catalog)} AS {CATALOG} ({', '.join(options)})"
    )


def _add_s3_secret(con: duckdb.DuckDBPyConnection, s3: S3Access) -> None:
    fields = {
        "KEY_ID": s3.key_id,
        "SECRET": s3.secret,
        "REGION": s3.region,
        "URL_STYLE": s3.url_style,
    } | ({"ENDPOINT": s3.endpoint} if s3.endpoint else {})
    settings = ", ".join(f"{key} {_literal(value)}" for key, value in fields.items())
    con.execute(f"CREATE OR REPLACE SECRET mirror_s3 (TYPE s3, {settings}, USE_SSL {s3.use_ssl!s})")


class LakeStore(MirrorStore):
    """The mirror's DuckLake, attached once per process; each transaction on its own
    cursor, so threads of one process work at once."""

    reader_window = 0.0

    def __init__(self, lake: LakeLocation) -> None:
        self.lake = lake
        self._database: duckdb.DuckDBPyConnection | None = None
        self._opening = threading.Lock()
        self._turns = WriterTurns(lake.catalog)

    @property
    def name(self) -> str:
        return f"the lake at {self.lake.data_path}"

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._opening:
            if self._database is None:
                database = duckdb.connect(":memory:", config=extensions.NO_DOWNLOADS)
                try:
                    attach(database, self.lake)
                except BaseException:
                    database.close()
                    raise
                self._database = database
            cursor = self._database.cursor()
        cursor.execute(f"USE {CATALOG}")
        return cursor

    def writing(self) -> AbstractContextManager[Transaction]:
        return self._transaction(counts=True)

    @contextmanager
    def _transaction(self, counts: bool) -> Iterator[Transaction]:
        con = self._cursor()
        try:
            with self._turns.turn() as waited, transaction(con, LockWait(waited)) as tx:
                if counts:
                    con.execute(f"UPDATE {LAKE_WRITES} SET commits = commits + 1")
                yield tx
        finally:
            con.close()

    def transact(self, write: Callable[[duckdb.DuckDBPyConnection], R]) -> tuple[R, float]:
        return self._retried(write, counts=True)

    def housekeep(self, step: Callable[[duckdb.DuckDBPyConnection], R]) -> tuple[R, float]:
        """`transact` for one housekeeping call (store/maintenance.py). DuckLake runs
        compaction only in a transaction that changes nothing else, so it does not count
        itself in `lake_writes`; it adds no rows, so it has no key to keep unique. It takes
        its turn like any writer: a long compaction would otherwise lose every race."""
        return self._retried(step, counts=False)

    def _retried(
        self, write: Callable[[duckdb.DuckDBPyConnection], R], counts: bool
    ) -> tuple[R, float]:
        waited, attempt = 0.0, 0
        while True:
            try:
                with self._transaction(counts) as tx:
                    return write(tx.con), waited + tx.lock_wait.seconds
            except duckdb.Error as error:
                if not is_conflict(error):
                    raise
                if attempt == CONFLICT_RETRIES:
                    raise ConflictError(
                        f"{self.name}: a transaction conflicted with other writers "
                        f"{attempt + 1} times in {waited:.1f} s and was given up; nothing of it "
                        "was written. Fewer writers at once (BACKFILL_RUNS) "
                        "make this rarer"
                    ) from error
            pause = random.uniform(0.5, 1.0) * min(
                FIRST_RETRY_SECONDS * 2**attempt, LONGEST_RETRY_SECONDS
            )
            time.sleep(pause)
            waited += pause
            attempt += 1

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._cursor()
        try:
            if current_version(con) < SCHEMA_VERSION:
                self.init()
            yield con
        finally:
            con.close()

    def close(self) -> None:
        self._turns.close()
        with self._opening:
            if self._database is not None:
                self._database.close()
                self._database = None
