"""The stream's position: `ingest_state` (the Jetstream cursor, moved in the same
transaction as the data it covers) and `ingest_gaps` (where events were lost).

Every function runs inside the caller's open write transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from mirror_assets.atproto.events import CursorGap

_MOVE = """
MERGE INTO ingest_state
USING (SELECT 1 AS id, $cursor::BIGINT AS cursor_us, $endpoint::VARCHAR AS endpoint) AS new
USING (id)
WHEN MATCHED THEN UPDATE SET
    cursor_us = greatest(ingest_state.cursor_us, new.cursor_us),
    -- The endpoint names the clock the cursor was read on: it changes with the cursor.
    endpoint = CASE WHEN new.cursor_us >= ingest_state.cursor_us
        THEN new.endpoint ELSE ingest_state.endpoint END,
    updated_at = now()
WHEN NOT MATCHED THEN INSERT (id, cursor_us, endpoint, updated_at)
    VALUES (1, new.cursor_us, new.endpoint, now())
"""

_RECORD_GAPS = """
INSERT INTO ingest_gaps
SELECT now(), endpoint, cursor_us, first_event_us, (first_event_us - cursor_us) / 1e6
FROM batch_gaps
"""


def move(con: duckdb.DuckDBPyConnection, cursor_us: int, endpoint: str | None) -> None:
    """Move the cursor forward (never back) to `cursor_us`, read on `endpoint`'s clock."""
    con.execute(_MOVE, {"cursor": cursor_us, "endpoint": endpoint})


def set_cursor(con: duckdb.DuckDBPyConnection, time_us: int | None) -> int | None:
    """Set the cursor (None: no cursor, so the next run starts live); the old one.

    The endpoint is cleared: it names the Jetstream whose clock a cursor was read on, and
    this one was typed in.
    """
    old = con.execute("SELECT cursor_us FROM ingest_state").fetchall()
    con.execute("DELETE FROM ingest_state")
    if time_us is not None:
        con.execute("INSERT INTO ingest_state VALUES (1, ?, NULL, now())", [time_us])
    return int(old[0][0]) if old else None


def record_gaps(con: duckdb.DuckDBPyConnection, gaps: Sequence[CursorGap]) -> None:
    """Keep where events were lost."""
    table = pa.table(
        {
            "endpoint": [gap.endpoint for gap in gaps],
            "cursor_us": pa.array([gap.cursor_us for gap in gaps], pa.int64()),
            "first_event_us": pa.array([gap.first_event_us for gap in gaps], pa.int64()),
        }
    )
    con.register("batch_gaps", table)
    con.execute(_RECORD_GAPS).fetchall()
    con.unregister("batch_gaps")
