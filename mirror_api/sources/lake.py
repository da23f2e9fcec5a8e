"""The mirror's DuckLake, read by the API from snapshots: any number of API processes, on
any number of machines, read it while writers commit, with no lock between them
(docs/scale-out.md).

Each read is one read-only transaction on a cursor of a warm instance that keeps the lake
attached. It asks the lake for its snapshot first, so the version its answer is kept under
is the snapshot the answer was read from.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from mirror_assets.config import LakeLocation
from mirror_assets.store import extensions
from mirror_assets.store.lake import CATALOG, LAKE_NOT_MADE, attach
from mirror_assets.store.schema import SCHEMA_VERSION, current_version, migrate

_SNAPSHOT = f"SELECT id FROM {CATALOG}.current_snapshot()"
NO_SCHEMA = -1  # the version of an empty mirror, before the lake has its tables


class LakeRead:
    """One read: the snapshot it sees, and the cursor that reads that snapshot."""

    def __init__(self, con: duckdb.DuckDBPyConnection, version: int) -> None:
        self.version = version
        self._con = con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self._con


class LakeSource:
    """A DuckLake attached read-only, under the name the queries use (`mirror`)."""

    version_blocks = True  # a query to the catalog: not on the event loop

    def __init__(self, lake: LakeLocation) -> None:
        self.lake = lake
        self._instance: duckdb.DuckDBPyConnection | None = None
        self._empty: duckdb.DuckDBPyConnection | None = None
        self._opening = threading.Lock()
        # Once the lake has the schema it keeps it (a reset drops and makes the tables in
        # one transaction): checking it costs a dozen catalog queries, asked once.
        self._schema_seen = False

    def version(self) -> int:
        """The lake's snapshot id (one catalog query): what a kept answer is checked by."""
        lake = self._database()
        if lake is None or not self._schema_seen:
            with self.reading() as read:
                return read.version
        con = lake.cursor()
        try:
            return int(con.execute(_SNAPSHOT).fetchall()[0][0])
        finally:
            con.close()

    @contextmanager
    def reading(self) -> Iterator[LakeRead]:
        # No writer has made the lake or its tables yet: an empty mirror answers, as for
        # the file before its first run.
        lake = self._database()
        con = (lake or self._empty_mirror()).cursor()
        try:
            version = NO_SCHEMA
            if lake is not None:
                con.execute("BEGIN TRANSACTION")
                version = int(con.execute(_SNAPSHOT).fetchall()[0][0])
                con.execute(f"USE {CATALOG}")
                self._schema_seen = self._schema_seen or current_version(con) >= SCHEMA_VERSION
                if not self._schema_seen:
                    con.close()
                    con, version = self._empty_mirror().cursor(), NO_SCHEMA
            yield LakeRead(con, version)
        finally:
            con.close()

    def _database(self) -> duckdb.DuckDBPyConnection | None:
        """The instance with the lake attached; None while there is no lake yet."""
        with self._opening:
            if self._instance is None:
                instance = duckdb.connect(":memory:", config=extensions.NO_DOWNLOADS)
                try:
                    attach(instance, self.lake, read_only=True)
                except duckdb.InvalidInputException as error:
                    instance.close()
                    if LAKE_NOT_MADE not in str(error):
                        raise
                    return None
                except BaseException:
                    instance.close()
                    raise
                self._instance = instance
            return self._instance

    def _empty_mirror(self) -> duckdb.DuckDBPyConnection:
        with self._opening:
            if self._empty is None:
                self._empty = duckdb.connect(":memory:")
                self._empty.execute(f"ATTACH ':memory:' AS {CATALOG}")
                self._empty.execute(f"USE {CATALOG}")
                migrate(self._empty)
                self._empty.execute("USE memory")
            return self._empty

    def close(self) -> None:
        with self._opening:
            for instance in (self._instance, self._empty):
                if instance is not None:
                    instance.close()
            self._instance = self._empty = None
