"""The operator's write operations on the store (`mirror purge`, `reset-cursor`, `reset-backfills`).

Each function runs in the caller's write transaction (`Store.writing()`), so an operation
either happens whole or not at all, and reports what it changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from mirror_assets.atproto.syntax import is_nsid
from mirror_assets.model.apply import RESTART_PASS
from mirror_assets.model.backfills import DONE

BACKFILL_STATUSES = ("pending", "in_progress", "failed", *DONE)
# The network carried no events before 2023: an earlier time is almost certainly seconds or
# milliseconds typed where microseconds were meant.
EARLIEST_CURSOR_US = 1_672_531_200_000_000  # 2023-01-01T00:00:00Z
JETSTREAM_KEEPS_SECONDS = 86_400.0  # about a day of events (docs/ingest.md, cursor gaps)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_nsid(collection: str) -> str:
    """The collection if it is one exact NSID (no wildcard, no list), else ValueError."""
    if not is_nsid(collection):
        raise ValueError(f"{collection!r} is not a collection NSID (e.g. app.blento.card)")
    return collection


# --- purge ---------------------------------------------------------------------------------

# Every base table of the mirror with a `collection` column holds rows about collections:
# found at run time, so a table added by a later migration is purged without a change here.
_TABLES_WITH_COLLECTION = """
SELECT t.table_name
FROM duckdb_tables() t
JOIN duckdb_columns() c USING (database_name, schema_name, table_name)
WHERE t.database_name = current_database() AND t.schema_name = 'main' AND NOT t.temporary
  AND c.column_name = 'collection'
ORDER BY t.table_name
"""


def purge_collection(con: duckdb.DuckDBPyConnection, collection: str) -> dict[str, int]:
    """Delete every row of the collection from every table; rows removed per table."""
    tables = [row[0] for row in con.execute(_TABLES_WITH_COLLECTION).fetchall()]
    removed = {}
    for table in tables:
        [(count,)] = con.execute(
            f'DELETE FROM "{table}" WHERE collection = ?', [collection]
        ).fetchall()
        removed[table] = int(count)
    return removed


# --- the ingest cursor ---------------------------------------------------------------------


def parse_cursor_time(text: str, now: float | None = None) -> int:
    """A Jetstream cursor from `time_us` digits or an ISO 8601 date or time (UTC if no zone)."""
    if text.strip().isdigit():
        time_us = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a time_us (microseconds since the epoch) nor an ISO 8601 "
                "time such as 2024-08-30T06:40:00Z"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        time_us = (moment - _EPOCH) // timedelta(microseconds=1)
    now_us = int((time.time() if now is None else now) * 1_000_000)
    if time_us < EARLIEST_CURSOR_US:
        raise ValueError(f"{text} is before 2023: a time_us counts microseconds since the epoch")
    if time_us > now_us:
        raise ValueError(f"{text} is in the future: the stream has no events there yet")
    return time_us


def set_cursor(con: duckdb.DuckDBPyConnection, time_us: int | None) -> int | None:
    """Set the Jetstream cursor (None: no cursor, so the next run starts live); the old one.

    The endpoint is cleared: it names the Jetstream whose clock a cursor was read on, and
    this one was typed in.
    """
    old = con.execute("SELECT cursor_us FROM ingest_state").fetchall()
    con.execute("DELETE FROM ingest_state")
    if time_us is not None:
        con.execute("INSERT INTO ingest_state VALUES (1, ?, NULL, now())", [time_us])
    return int(old[0][0]) if old else None


# --- backfills -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillSelection:
    """Which backfills to reset; an empty field selects all."""

    statuses: Sequence[str] = ()
    collection: str | None = None
    did: str | None = None

    def where(self) -> tuple[str, dict[str, object]]:
        """A WHERE clause over `backfills` and its parameters."""
        return (
            "(len($statuses) = 0 OR list_contains($statuses, status))"
            " AND coalesce(collection = $collection, true) AND coalesce(did = $did, true)",
            {"statuses": list(self.statuses), "collection": self.collection, "did": self.did},
        )


def reset_backfills(con: duckdb.DuckDBPyConnection, selection: BackfillSelection) -> dict[str, int]:
    """Make the selected backfills pending passes from the top; how many per previous status.

    The repo rev is cleared with the page cursor, as a cursor gap does: the rev belongs to
    the pass whose pages it stamps, and the new pass reads the repo's current rev before
    its first page. A run still paging an old pass loses its claim (its rows are no longer
    `in_progress`), so it cannot save its cursor over the new pass (docs/backfill.md).
    """
    where, params = selection.where()
    rows = con.execute(
        f"SELECT status, count(*) FROM backfills WHERE {where} GROUP BY status ORDER BY status",
        params,
    ).fetchall()
    con.execute(
        f"UPDATE backfills SET {RESTART_PASS} WHERE {where}",
        params,
    ).fetchall()
    return {status: int(count) for status, count in rows}
