"""What the operator's commands check and write beyond the model's rules: `mirror purge`
and the times `mirror reset-cursor` takes.

A function that writes runs in the caller's write transaction (`FileStore.writing()`), so an
operation either happens whole or not at all, and reports what it changed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import duckdb

from mirror_assets.atproto.cursor_time import cursor_iso
from mirror_assets.atproto.events import NETWORK_EPOCH_US
from mirror_assets.atproto.syntax import is_nsid

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
    if time_us < NETWORK_EPOCH_US:  # seconds or milliseconds typed for microseconds
        raise ValueError(f"{text} is before 2023: a time_us counts microseconds since the epoch")
    if time_us > now_us:
        raise ValueError(f"{text} is in the future: the stream has no events there yet")
    return time_us


def cursor_text(time_us: int | None) -> str:
    return "none" if time_us is None else f"{time_us} ({cursor_iso(time_us)})"


def cursor_notes(old: int | None, new: int | None, now: float) -> list[str]:
    if new is None:
        skipped = "" if old is None else f"; events after {cursor_iso(old)} are not read"
        return [f"the next ingest starts at the live edge of the stream{skipped}"]
    notes = [f"the next ingest reads the stream from {cursor_iso(new)}"]
    if old is not None and new > old:
        notes.append(
            f"warning: the cursor moved forward; events after {cursor_iso(old)} "
            "and before it are not read"
        )
    age = now - new / 1e6
    keeps = "warning: " if age > JETSTREAM_KEEPS_SECONDS else ""
    notes.append(
        f"{keeps}that is {age / 3600:.1f} h ago. Jetstream keeps about a day of events: from "
        "an older cursor it starts later, which the ingest records as a cursor gap (and every "
        "backfill starts again)"
    )
    return notes
