"""The SQL behind each endpoint, on a cursor of the attached file (`mirror.<table>`).

Pages are keyset pages: newest first by (time_us, uri) for records, most records first by
(record_count, did) for users; the cursor holds the last row's position in full, so a walk
returns each row exactly once however many rows share a `time_us` or a count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import msgspec

from mirror_api.schemas import BackfillState, Record, Stats, User
from mirror_api.sources import SCHEMA

# The contract's three states; the mirror's own statuses map onto them, and `state` keeps
# the exact one. A failed backfill will be retried; one ended by its repository
# (not_found, takendown, ...) is as complete as it can be.
_CONTRACT_STATUS = {"pending": "in_progress", "in_progress": "in_progress", "failed": "in_progress"}


_COLUMNS = "uri, did, collection, rkey, cid, record, time_us"
_AFTER = "time_us <= $time_us AND (time_us < $time_us OR uri < $uri)"
# Up to this many records, a user's page reads their rows through the `did` index; a
# heavier user's page scans like a collection page (fetching 150,000 rows by row id costs
# more than scanning 10,000,000 for one column).
INDEXED_USER_RECORDS = 5_000


def records_page(
    con: duckdb.DuckDBPyConnection,
    collection: str,
    limit: int,
    after: tuple[int, str] | None,
    did: str | None,
) -> list[Record]:
    """Up to `limit` live records of the collection (of `did`), after the cursor position."""
    params: dict[str, object] = {"collection": collection}
    if after is not None:
        params["time_us"], params["uri"] = after
    user_records = None
    if did is not None:
        params["did"] = did
        user_records = _record_count(con, collection, did)
    if user_records is not None and user_records <= INDEXED_USER_RECORDS:
        rows = _user_page(con, params, limit)
    else:
        rows = _scanned_page(con, params, limit, user_records)
    # `record` is DuckDB's JSON type, fetched as its text: served as stored, never decoded
    # (schemas.py says why). Its UTF-8 bytes, so a kept page costs what it weighs.
    return [
        Record(uri, did_, coll, rkey, cid, msgspec.Raw(record.encode()), time_us)
        for uri, did_, coll, rkey, cid, record, time_us in rows
    ]


def _scanned_page(
    con: duckdb.DuckDBPyConnection,
    params: dict[str, object],
    limit: int,
    user_records: int | None,
) -> list[tuple[Any, ...]]:
    """Two steps, because a top-N that carries every column decompresses each vector holding
    a winner: first the time of the `limit`-th newest record (one narrow column), then the
    records at or after that time, which the scan filters before reading the wide columns:
    about three times faster (bench/README.md)."""
    conditions = ["collection = $collection"] + (["did = $did"] if "did" in params else [])
    floor = _page_floor(con, conditions, params, limit, user_records)
    conditions.append("time_us >= $floor")
    if "time_us" in params:
        conditions.append(_AFTER)
    return con.execute(
        f"SELECT {_COLUMNS} FROM {SCHEMA}.records WHERE {' AND '.join(conditions)} "
        f"ORDER BY time_us DESC, uri DESC LIMIT {int(limit)}",
        {**params, "floor": floor},
    ).fetchall()


def _page_floor(
    con: duckdb.DuckDBPyConnection,
    conditions: list[str],
    params: dict[str, object],
    limit: int,
    user_records: int | None,
) -> int:
    """The time of the page's oldest record: of the `limit` newest before the cursor.

    A top-N over every older record reads every row group, whatever their order. So the
    search looks first in a window of time just before the cursor, wide enough for about
    four pages at the average rate of the collection (from `collection_stats`) or of the
    user (`user_records`, from `user_counts`), and widens it eightfold until it holds a
    page or reaches past the oldest record; in a table kept in time order (analytics/clustering.py)
    each look reads only the row groups of its window.
    """
    narrow = conditions + (["time_us < $time_us"] if "time_us" in params else [])
    values = {key: value for key, value in params.items() if key != "uri"}
    span = _collection_span(con, str(params["collection"]), user_records)
    width = None if span is None else 4 * limit * span.microseconds_per_record
    cursor_time = params.get("time_us")
    while True:
        window = narrow
        if span is not None and width is not None:
            top = cursor_time if isinstance(cursor_time, int) else span.last_us + 1
            if top - width > span.first_us:
                window = [*narrow, f"time_us >= {top - width}"]
            else:
                width = None  # the window holds all there is: look without one
        times = con.execute(
            f"SELECT time_us FROM {SCHEMA}.records WHERE {' AND '.join(window)} "
            f"ORDER BY time_us DESC LIMIT {int(limit)}",
            values,
        ).fetchall()
        if len(times) == limit:
            return int(times[-1][0])
        if width is None:  # fewer than a page older than the cursor: all of them are in it
            return -(2**63)
        width *= 8


@dataclass(frozen=True)
class _Span:
    first_us: int
    last_us: int
    microseconds_per_record: int


def _collection_span(
    con: duckdb.DuckDBPyConnection, collection: str, records: int | None
) -> _Span | None:
    """The collection's first and last record time, and the average spacing of its records
    (or of `records` of them: one user's) between the two, as of the last summary; None
    before the first summary. Records written since may lie outside it, which is why a
    window only narrows the search and the last look has none. (The table is empty until
    the first summary.)"""
    rows = con.execute(
        f"SELECT first_record_time_us, last_record_time_us, total_records "
        f"FROM {SCHEMA}.collection_stats WHERE collection = ?",
        [collection],
    ).fetchall()
    if not rows or rows[0][0] is None:
        return None
    first, last, total = rows[0]
    spaced = total if records is None else records
    return _Span(first, last, max(1, (last - first) // max(1, spaced)))


def _user_page(
    con: duckdb.DuckDBPyConnection, params: dict[str, object], limit: int
) -> list[tuple[Any, ...]]:
    """A user's rows through the `did` index. DuckDB reads an index only for a filter on
    that column alone, so the row ids come first and the `records` view's conditions
    (not deleted, not hidden) are applied to those rows."""
    conditions = [
        f"rowid IN (SELECT rowid FROM {SCHEMA}.record_versions WHERE did = $did)",
        "collection = $collection",
        "NOT deleted",
        "NOT hidden",
    ] + ([_AFTER] if "time_us" in params else [])
    return con.execute(
        f"SELECT {_COLUMNS} FROM {SCHEMA}.record_versions WHERE {' AND '.join(conditions)} "
        f"ORDER BY time_us DESC, uri DESC LIMIT {int(limit)}",
        params,
    ).fetchall()


def _record_count(con: duckdb.DuckDBPyConnection, collection: str, did: str) -> int:
    """The user's records in the collection as of the last summary (0 if unknown)."""
    if not _summaries_built(con):
        return 0
    rows = con.execute(
        f"SELECT record_count FROM {SCHEMA}.user_counts WHERE collection = ? AND did = ?",
        [collection, did],
    ).fetchall()
    return int(rows[0][0]) if rows else 0


def users_page(
    con: duckdb.DuckDBPyConnection, collection: str, limit: int, after: tuple[int, str] | None
) -> list[User]:
    """Up to `limit` users of the collection by record count, after the cursor position."""
    if _summaries_built(con):
        counts = f"SELECT did, record_count FROM {SCHEMA}.user_counts WHERE collection = $c"
    else:
        counts = (
            f"SELECT did, count(*) AS record_count FROM {SCHEMA}.records "
            "WHERE collection = $c GROUP BY did"
        )
    where = ""
    params: dict[str, object] = {"c": collection}
    if after is not None:
        where = "WHERE record_count < $count OR (record_count = $count AND did > $did)"
        params["count"], params["did"] = after
    rows = con.execute(
        f"SELECT did, record_count FROM ({counts}) {where} "
        f"ORDER BY record_count DESC, did ASC LIMIT {int(limit)}",
        params,
    ).fetchall()
    return [User(did, count) for did, count in rows]


def stats(con: duckdb.DuckDBPyConnection, collection: str) -> Stats:
    if _summaries_built(con):
        rows = con.execute(
            f"SELECT unique_users, total_records, last_record_time_us "
            f"FROM {SCHEMA}.collection_stats WHERE collection = ?",
            [collection],
        ).fetchall()
        users, total, last = rows[0] if rows else (0, 0, None)
    else:
        users, total, last = con.execute(
            f"SELECT count(DISTINCT did), count(*), max(time_us) FROM {SCHEMA}.records "
            "WHERE collection = ?",
            [collection],
        ).fetchall()[0]
    return Stats(collection, users, total, last)


def _summaries_built(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether Dagster has built the summaries (analytics/summaries.py); until then, count live."""
    rows = con.execute(
        f"SELECT count(*) FROM {SCHEMA}.meta WHERE key = 'summaries_refreshed_at'"
    ).fetchall()
    return bool(rows[0][0])


def cursor_us(con: duckdb.DuckDBPyConnection) -> int | None:
    rows = con.execute(f"SELECT cursor_us FROM {SCHEMA}.ingest_state").fetchall()
    return int(rows[0][0]) if rows else None


def backfill_state(con: duckdb.DuckDBPyConnection, collection: str, did: str) -> BackfillState:
    rows = con.execute(
        f"SELECT status, last_error FROM {SCHEMA}.backfills WHERE did = ? AND collection = ?",
        [did, collection],
    ).fetchall()
    if not rows:
        return BackfillState(did, collection, "unknown", None)
    state, error = str(rows[0][0]), rows[0][1]
    status = _CONTRACT_STATUS.get(state, "complete")
    return BackfillState(did, collection, status, state, error)


def did_of_handle(con: duckdb.DuckDBPyConnection, handle: str) -> str | None:
    """The DID whose current handle this is, if the mirror knows it."""
    rows = con.execute(
        f"SELECT did FROM {SCHEMA}.accounts WHERE lower(handle) = ? AND status <> 'deleted' "
        "ORDER BY identity_time DESC NULLS LAST LIMIT 1",
        [handle],
    ).fetchall()
    return str(rows[0][0]) if rows else None
