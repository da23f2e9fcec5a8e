"""Per-collection summaries of the `records` view: users by record count, and totals with the
first and last record time.

`/users` and `/stats` would otherwise count every record of a collection per request (a
`GROUP BY` over 10,000,000 records takes seconds on two cores). Dagster rebuilds both
tables after each ingest (the `collection_summaries` assets of the ingest job), so they
trail the records by at most a run. `user_counts` is written in the order `/users` reads it,
so its pages are cheap scans. `meta.summaries_refreshed_at` says they exist; until the
first rebuild, the API counts live.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from mirror_assets.store.schema import set_meta

_REBUILD = """
DELETE FROM user_counts;
INSERT INTO user_counts
    SELECT collection, did, count(*) AS record_count FROM records
    GROUP BY collection, did
    ORDER BY collection, record_count DESC, did;
DELETE FROM collection_stats;
INSERT INTO collection_stats
    (collection, unique_users, total_records, first_record_time_us, last_record_time_us)
    SELECT u.collection, u.users, u.total, t.first, t.last
    FROM (SELECT collection, count(*) AS users, sum(record_count) AS total
          FROM user_counts GROUP BY collection) u
    JOIN (SELECT collection, min(time_us) AS first, max(time_us) AS last
          FROM records GROUP BY collection) t USING (collection);
"""


@dataclass(frozen=True)
class SummaryCounts:
    collections: int
    user_rows: int


def rebuild_summaries(con: duckdb.DuckDBPyConnection) -> SummaryCounts:
    """Rebuild both summaries from the `records` view, in the caller's transaction."""
    con.execute(_REBUILD)
    set_meta(con, "summaries_refreshed_at", datetime.now(UTC).isoformat())
    collections, users = con.execute(
        "SELECT (SELECT count(*) FROM collection_stats), (SELECT count(*) FROM user_counts)"
    ).fetchall()[0]
    return SummaryCounts(collections, users)
