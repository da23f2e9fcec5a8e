"""Daily activity per collection: creates, updates and deletes per UTC day.

Every apply transaction appends what it changed to `activity_log` (model/records.py), in the same
transaction as the change, so a crash neither loses nor double-counts a day's numbers. The
log gains a few rows per transaction; `roll_up_activity` folds it into one row per
(source, collection, day) and rebuilds `daily_activity` from it, so the log stays as small
as the table it feeds.

Live changes count on the day Jetstream saw them. A backfill's changes count on the day of
the record's own time (its TID, else `createdAt`): a user's history fills in the days it
happened, and `backfilled_creates` tells them apart. Deletes a backfill only finds by a
record's absence from a complete listing (a resync) have no time and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

_ROLL_UP = """
CREATE TEMP TABLE rolled AS
    SELECT source, collection, day, sum(creates) AS creates, sum(updates) AS updates,
        sum(deletes) AS deletes
    FROM activity_log GROUP BY ALL;
DELETE FROM activity_log;
INSERT INTO activity_log SELECT * FROM rolled;
DELETE FROM daily_activity;
INSERT INTO daily_activity
    SELECT collection, day, sum(creates), sum(updates), sum(deletes),
        coalesce(sum(creates) FILTER (WHERE source = 'backfill'), 0)
    FROM rolled GROUP BY collection, day ORDER BY collection, day;
DROP TABLE rolled;
"""


@dataclass(frozen=True)
class ActivityCounts:
    days: int  # rows of daily_activity
    collections: int
    first_day: str | None
    last_day: str | None


def roll_up_activity(con: duckdb.DuckDBPyConnection) -> ActivityCounts:
    """Compact the log and rebuild `daily_activity`, in the caller's transaction."""
    con.execute(_ROLL_UP)
    days, collections, first, last = con.execute(
        "SELECT count(*), count(DISTINCT collection), min(day)::VARCHAR, max(day)::VARCHAR "
        "FROM daily_activity"
    ).fetchall()[0]
    return ActivityCounts(days, collections, first, last)
