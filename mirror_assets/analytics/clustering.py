"""Keeping `record_versions` in (collection, time) order, so a page reads a few row groups.

DuckDB keeps the smallest and largest `time_us` of every row group (about 122,880 rows) and
skips a row group that cannot hold an answer: a page of records newest first, after a
cursor, reads only the row groups whose times reach into it. Live records arrive in time
order, so their row groups each cover minutes. A backfill's records span a user's whole
history, and every row group they land in covers years: each page must read all of those.
Pages after a cursor are an order of magnitude faster once the table is back in order
(docs/data-model.md has the measurements).

Reclustering puts the rows back in order a slice at a time. A slice is one collection's
rows within a time range, about `rows_per_slice` of them; a slice whose rows already lie in
time order (as appended live) is left alone, any other is deleted and inserted again,
sorted, in one write transaction of its own, so writers and readers take turns with it.
Moving a row changes nothing about it but its place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise

import duckdb

from mirror_assets.store.file import FileStore

ROWS_PER_SLICE = 200_000
_LOWEST, _HIGHEST = -(2**63), 2**63 - 1

_SLICE = "collection = $collection AND time_us >= $start AND time_us < $stop"

# In order when, taken by time, every row lies after the one before it in the table.
_OUT_OF_ORDER = f"""
SELECT count(*) FILTER (WHERE row_id < previous) FROM (
    SELECT rowid AS row_id, lag(rowid) OVER (ORDER BY time_us, rowid) AS previous
    FROM record_versions WHERE {_SLICE}
)
"""

_TAKE_OUT = (
    f"CREATE TEMP TABLE moving AS SELECT * FROM record_versions WHERE {_SLICE} ORDER BY time_us",
    f"DELETE FROM record_versions WHERE {_SLICE}",
)
_PUT_BACK = ("INSERT INTO record_versions SELECT * FROM moving", "DROP TABLE moving")


@dataclass(frozen=True)
class Slice:
    collection: str
    start_us: int  # inclusive
    stop_us: int  # exclusive

    def params(self) -> dict[str, object]:
        return {"collection": self.collection, "start": self.start_us, "stop": self.stop_us}


@dataclass
class ClusterReport:
    slices: int = 0
    slices_moved: int = 0
    rows_moved: int = 0
    seconds: float = 0.0
    longest_transaction_seconds: float = 0.0


def plan_slices(con: duckdb.DuckDBPyConnection, rows_per_slice: int) -> list[Slice]:
    """Each collection cut at time quantiles into slices of about `rows_per_slice` rows."""
    slices: list[Slice] = []
    counts = con.execute(
        "SELECT collection, count(*) FROM record_versions GROUP BY collection ORDER BY 1"
    ).fetchall()
    for collection, rows in counts:
        parts = max(1, -(-rows // rows_per_slice))
        cuts: list[int] = []
        if parts > 1:
            quantiles = [i / parts for i in range(1, parts)]
            [(found,)] = con.execute(
                "SELECT quantile_disc(time_us, $q) FROM record_versions "
                "WHERE collection = $collection",
                {"q": quantiles, "collection": collection},
            ).fetchall()
            cuts = sorted(set(found))
        bounds = [_LOWEST, *cuts, _HIGHEST]
        slices += [Slice(collection, a, b) for a, b in pairwise(bounds)]
    return slices


def recluster(store: FileStore, rows_per_slice: int = ROWS_PER_SLICE) -> ClusterReport:
    """Put every slice that is out of time order back in order, a transaction per slice."""
    started = time.perf_counter()
    report = ClusterReport()
    with store.reading() as con:
        slices = plan_slices(con, rows_per_slice)
    report.slices = len(slices)
    for part in slices:
        moved, seconds = _recluster_slice(store, part)
        report.longest_transaction_seconds = max(report.longest_transaction_seconds, seconds)
        if moved:
            report.slices_moved += 1
            report.rows_moved += moved
    report.seconds = time.perf_counter() - started
    return report


def _recluster_slice(store: FileStore, part: Slice) -> tuple[int, float]:
    """Rows moved (0 when the slice was in order) and how long the transaction took."""
    started = time.perf_counter()
    with store.writing() as tx:
        [(out_of_order,)] = tx.con.execute(_OUT_OF_ORDER, part.params()).fetchall()
        moved = 0
        if out_of_order:
            for statement in _TAKE_OUT:
                tx.con.execute(statement, part.params())
            [(moved,)] = tx.con.execute("SELECT count(*) FROM moving").fetchall()
            for statement in _PUT_BACK:
                tx.con.execute(statement)
    return moved, time.perf_counter() - started
