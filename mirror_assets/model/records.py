"""The `record_versions` table: one row per URI, the newest version the mirror knows (a live
record or a tombstone), and the `activity_log` its changes feed.

"Newer" is a total order, the same within a batch and against the store: the higher rev,
then a delete over a create at the same rev, then the higher CID. So replays, duplicates
and out-of-order arrival converge (docs/data-model.md). Every function runs inside the
caller's open write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import duckdb

# Commits, in four set-based steps. No index: a primary-key (ART) upsert costs more per row
# at scale than finding the stored versions through `uri_hash`, an 8-byte MD5 prefix that
# DuckDB scans quickly (docs/data-model.md has the measurements).
_STAGE_INCOMING = """
CREATE TEMP TABLE incoming AS
SELECT c.*, md5_number_lower(c.uri) AS uri_hash, coalesce(a.hidden, false) AS hidden
FROM (
    SELECT * FROM batch_commits
    QUALIFY row_number() OVER (
        PARTITION BY uri ORDER BY rev DESC, deleted DESC, coalesce(cid, '') DESC, seq DESC) = 1
) c
LEFT JOIN accounts a ON a.did = c.did
WHERE a.status IS DISTINCT FROM 'deleted'
"""

# The stored versions of those URIs: candidate row ids by hash, then the rows themselves.
_FIND_STORED = """
CREATE TEMP TABLE stored AS
SELECT rowid AS row_id, uri, rev, deleted, cid, time_us FROM record_versions
WHERE rowid IN (
    SELECT rowid FROM record_versions WHERE uri_hash IN (SELECT uri_hash FROM incoming))
"""

# What lands: URIs not stored yet, and versions newer than the stored ones (row or tombstone).
# A backfill page re-reading an unchanged record (same CID) at the repo's newer rev keeps the
# stored time (`$keep_time`): the record has not changed since then. A live event's time is
# always its own.
_PICK_WINNERS = """
CREATE TEMP TABLE winners AS
SELECT i.* REPLACE (
        CASE WHEN $keep_time AND s.cid = i.cid AND NOT s.deleted THEN s.time_us
             ELSE i.time_us END AS time_us),
    s.row_id AS replaces
FROM incoming i LEFT JOIN stored s ON s.uri = i.uri
WHERE s.uri IS NULL
   OR i.rev > s.rev
   OR (i.rev = s.rev
       AND (i.deleted::INT, coalesce(i.cid, '')) > (s.deleted::INT, coalesce(s.cid, '')))
"""

# What the commits change, per collection and UTC day of their time, for `daily_activity`.
# Every version newer than the stored one counts against the state before it (the previous
# such version of the batch, else the stored row): a create makes a live record where none
# was (or a tombstone was), an update gives a live record a new CID, a delete tombstones a
# live record or one never seen. Replays and re-reads of unchanged records count nothing,
# and an edit in the same batch as its create still counts as an update.
_LOG_ACTIVITY = """
INSERT INTO activity_log
WITH newer AS (
    SELECT c.collection, c.time_us, c.deleted, c.cid,
        lag(c.uri) OVER chain IS NOT NULL AS has_previous,
        lag(c.deleted) OVER chain AS previous_deleted,
        lag(c.cid) OVER chain AS previous_cid,
        s.uri IS NOT NULL AS was_stored, s.deleted AS stored_deleted, s.cid AS stored_cid
    FROM batch_commits c
    JOIN incoming USING (uri)  -- leaves out accounts deleted for good
    LEFT JOIN stored s ON s.uri = c.uri
    WHERE s.uri IS NULL OR c.rev > s.rev
       OR (c.rev = s.rev
           AND (c.deleted::INT, coalesce(c.cid, '')) > (s.deleted::INT, coalesce(s.cid, '')))
    WINDOW chain AS (
        PARTITION BY c.uri ORDER BY c.rev, c.deleted::INT, coalesce(c.cid, ''), c.seq)
), changes AS (
    SELECT collection, time_us, deleted, cid,
        CASE WHEN has_previous THEN NOT previous_deleted
             ELSE was_stored AND NOT stored_deleted END AS was_live,
        CASE WHEN has_previous THEN previous_deleted
             ELSE was_stored AND stored_deleted END AS was_tombstone,
        CASE WHEN has_previous THEN previous_cid ELSE stored_cid END AS was_cid
    FROM newer
)
SELECT $source, collection, make_timestamp(time_us)::DATE AS day,
    count(*) FILTER (WHERE NOT deleted AND NOT was_live) AS creates,
    count(*) FILTER (WHERE NOT deleted AND was_live AND cid IS DISTINCT FROM was_cid) AS updates,
    count(*) FILTER (WHERE deleted AND NOT was_tombstone) AS deletes
FROM changes
GROUP BY ALL
HAVING creates + updates + deletes > 0
"""

_REPLACE_ROWS = """
DELETE FROM record_versions
WHERE rowid IN (SELECT replaces FROM winners WHERE replaces IS NOT NULL)
"""

_INSERT_WINNERS = """
INSERT INTO record_versions
    (uri, uri_hash, did, collection, rkey, cid, record, rev, time_us, deleted, hidden, indexed_at)
SELECT uri, uri_hash, did, collection, rkey, cid, record::JSON, rev, time_us, deleted, hidden, now()
FROM winners
"""

_COUNT_WINNERS = "SELECT count(*), count(*) FILTER (WHERE deleted) FROM winners"

_PURGE_CHANGED = """
DELETE FROM record_versions
WHERE did IN (SELECT did FROM account_changes WHERE status = 'deleted')
"""

_SYNC_HIDDEN = """
UPDATE record_versions SET hidden = (c.status <> 'active')
FROM account_changes c
WHERE record_versions.did = c.did AND c.status <> c.old_status
  AND record_versions.hidden <> (c.status <> 'active')
"""


@dataclass(frozen=True)
class Written:
    """What a set of commits did to the table."""

    upserted: int  # live rows written (new records and newer versions)
    tombstoned: int  # deletes written (a live row turned tombstone, or a new tombstone)
    stale: int  # commits not written: older or unchanged versions, deleted accounts


def _count(rows: list[tuple[int, ...]]) -> int:
    """The row count a DuckDB statement reports."""
    return rows[0][0] if rows else 0


def write_versions(
    con: duckdb.DuckDBPyConnection, commits: int, source: Literal["live", "backfill"]
) -> Written:
    """Write the registered `batch_commits` of `commits` rows (in `model.batch.COMMIT_SCHEMA`)
    where they are newer than what is stored, and log what changed."""
    con.execute(_STAGE_INCOMING).fetchall()
    con.execute(_FIND_STORED).fetchall()
    con.execute(_PICK_WINNERS, {"keep_time": source == "backfill"}).fetchall()
    con.execute(_LOG_ACTIVITY, {"source": source}).fetchall()
    con.execute(_REPLACE_ROWS).fetchall()
    con.execute(_INSERT_WINNERS).fetchall()
    written, tombstoned = con.execute(_COUNT_WINNERS).fetchall()[0]
    con.execute("DROP TABLE incoming; DROP TABLE stored; DROP TABLE winners")
    return Written(written - tombstoned, tombstoned, commits - written)


def purge_changed(con: duckdb.DuckDBPyConnection) -> int:
    """Delete every row of the DIDs of `account_changes` deleted for good; how many."""
    return _count(con.execute(_PURGE_CHANGED).fetchall())


def sync_hidden(con: duckdb.DuckDBPyConnection) -> int:
    """Hide the rows of the DIDs of `account_changes` no longer active, show those of DIDs
    active again; how many rows changed."""
    return _count(con.execute(_SYNC_HIDDEN).fetchall())
