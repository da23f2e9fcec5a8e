"""Apply one EventBatch to the store in one transaction, set-based, in a fixed order.

1. DIDs that appear with a live record for the first time get an `accounts` row and a
   pending backfill per collection.
2. Account events move each known DID to its newest lifecycle state (DESIGN section 4,
   invariant 4); `deleted` purges the DID's rows for good, hiding statuses flag them, and
   an account active again gets the backfills its closed repository ended queued again.
3. Identity events mark the DID's identity for a new check (its handle, PDS): a handle
   counts only once it resolves back to the DID (identities.py), so an announced handle
   that differs from the verified one is not kept meanwhile.
4. Commits, reduced to the winning version per URI, replace the stored version (row or
   tombstone) only if they are newer. "Newer" is a total order, the same in the batch and
   against the store: the higher rev, then a delete over a create at the same rev, then
   the higher CID. So replays, duplicates and out-of-order arrival converge.
5. Gaps are recorded, and mark every backfill for a new pass (events were lost); the
   cursor moves, in the same transaction as the data it covers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import pyarrow as pa

from mirror_assets.model.batch import EventBatch


def _latest_per_did(table: str) -> str:
    """The newest event per DID of an account or identity batch (a table or a parenthesised
    query), by the event's own time."""
    return f"""
    SELECT *, coalesce(try_cast(event_time AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ) AS event_at
    FROM {table}
    QUALIFY row_number() OVER (
        PARTITION BY did ORDER BY event_at DESC, event_seq DESC, seq DESC) = 1
    """


_REGISTER_DIDS = """
INSERT INTO accounts (did, status, hidden, first_seen_us, first_seen_at, updated_at)
SELECT did, 'active', false, min(time_us), now(), now()
FROM batch_commits
WHERE NOT deleted AND did NOT IN (SELECT did FROM accounts)
GROUP BY did
RETURNING did
"""


def _since_first_seen(table: str) -> str:
    """Events of a batch for DIDs the mirror holds, from the DID's first live commit on.

    Whether an identity or account event counts must not depend on where flushes or
    restarts cut the stream: "is the DID known yet?" does, "is the event at or after the
    DID's first live commit?" does not. (A new account's handle announced before its first
    record is thus left to identity resolution.)
    """
    return f"""(
    SELECT b.* FROM {table} b JOIN accounts a ON a.did = b.did
    WHERE b.time_us >= a.first_seen_us)"""


_QUEUE_BACKFILLS = """
INSERT INTO backfills (did, collection, status, updated_at)
SELECT DISTINCT c.did, c.collection, 'pending', now()
FROM batch_commits c JOIN accounts a ON a.did = c.did AND a.status <> 'deleted'
WHERE NOT c.deleted
ON CONFLICT DO NOTHING
"""

# Newest deciding account event per known, not deleted DID, turned into the state it leads to.
# `throttled`, `desynchronized` and inactive-without-status change nothing, so they take no
# part at all: as the newest event of a batch they would mask an older deciding one, and as
# the stored account time they would make a late-arriving older deciding event look stale.
_DECIDING_ACCOUNTS = f"""(
    SELECT * FROM {_since_first_seen("batch_accounts")}
    WHERE active OR status IN ('takendown', 'suspended', 'deactivated', 'deleted'))"""

_ACCOUNT_CHANGES = f"""
CREATE TEMP TABLE account_changes AS
WITH latest AS ({_latest_per_did(_DECIDING_ACCOUNTS)})
SELECT l.did, l.event_at, l.event_seq, a.status AS old_status,
    CASE WHEN l.active THEN 'active' ELSE l.status END AS status
FROM latest l JOIN accounts a ON a.did = l.did
WHERE a.status <> 'deleted'
  AND (a.account_time IS NULL OR l.event_at > a.account_time
       OR (l.event_at = a.account_time AND l.event_seq >= a.account_seq))
"""

_UPDATE_ACCOUNTS = """
UPDATE accounts SET status = c.status, hidden = c.status <> 'active',
    account_time = c.event_at, account_seq = c.event_seq, updated_at = now()
FROM account_changes c WHERE accounts.did = c.did
"""

_PURGE_DELETED = """
DELETE FROM record_versions
WHERE did IN (SELECT did FROM account_changes WHERE status = 'deleted')
"""

_DROP_DELETED_BACKFILLS = """
DELETE FROM backfills WHERE did IN (SELECT did FROM account_changes WHERE status = 'deleted')
"""

# A repository that was closed when its backfill ran has history to fetch once it is open.
_REOPEN_BACKFILLS = """
UPDATE backfills SET status = 'pending', pds_cursor = NULL, repo_rev = NULL, attempts = 0,
    next_attempt_at = NULL, last_error = NULL, updated_at = now()
WHERE did IN (SELECT did FROM account_changes WHERE status = 'active' AND old_status <> 'active')
  AND status IN ('takendown', 'suspended', 'deactivated')
"""

_SYNC_HIDDEN = """
UPDATE record_versions SET hidden = (c.status <> 'active')
FROM account_changes c
WHERE record_versions.did = c.did AND c.status <> c.old_status
  AND record_versions.hidden <> (c.status <> 'active')
"""

_MARK_IDENTITIES = f"""
WITH latest AS ({_latest_per_did(_since_first_seen("batch_identities"))})
UPDATE accounts SET
    handle = CASE WHEN lower(l.handle) = accounts.handle THEN accounts.handle END,
    identity_stale = true, identity_time = l.event_at, identity_seq = l.event_seq,
    pds_resolved_at = NULL,  -- an identity event may announce a move to another PDS
    updated_at = now()
FROM latest l
WHERE accounts.did = l.did AND accounts.status <> 'deleted'
  AND (accounts.identity_time IS NULL OR l.event_at > accounts.identity_time
       OR (l.event_at = accounts.identity_time AND l.event_seq >= accounts.identity_seq))
"""

# Commits, in four set-based steps. No index: a primary-key (ART) upsert costs several
# times more per row at 10,000,000 random URIs than finding the stored versions through
# `uri_hash`, an 8-byte MD5 prefix that DuckDB scans in milliseconds (docs/data-model.md).
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

_RECORD_GAPS = """
INSERT INTO ingest_gaps
SELECT now(), endpoint, cursor_us, first_event_us, (first_event_us - cursor_us) / 1e6
FROM batch_gaps
"""

# Events were lost, so any DID may have changed unseen: every backfill starts a new pass,
# whose completion also removes what its listing no longer has. A DID gone for good stays so.
# A backfill made a new pass from the top: pending, no page cursor and no rev (the new pass
# reads the repo's rev before its first page), counters and retries from zero.
RESTART_PASS = """status = 'pending', pds_cursor = NULL, repo_rev = NULL, pages = 0,
    records = 0, attempts = 0, next_attempt_at = NULL, last_error = NULL, updated_at = now()"""

_RESYNC_ALL = f"UPDATE backfills SET {RESTART_PASS} WHERE status <> 'tombstoned'"

_MOVE_CURSOR = """
INSERT INTO ingest_state VALUES (1, $cursor, $endpoint, now())
ON CONFLICT (id) DO UPDATE SET
    cursor_us = greatest(ingest_state.cursor_us, excluded.cursor_us),
    -- The endpoint names the clock the cursor was read on: it changes with the cursor.
    endpoint = CASE WHEN excluded.cursor_us >= ingest_state.cursor_us
        THEN excluded.endpoint ELSE ingest_state.endpoint END,
    updated_at = excluded.updated_at
"""


@dataclass
class ApplyResult:
    """What one transaction changed."""

    upserted: int = 0  # live rows written (new records and newer versions)
    tombstoned: int = 0  # deletes written (a live row turned tombstone, or a new tombstone)
    stale: int = 0  # commits not written: older or unchanged versions, deleted accounts
    purged: int = 0  # rows removed because their account was deleted
    hidden_changed: int = 0  # rows hidden or shown again by account status changes
    accounts_changed: int = 0
    identities_changed: int = 0  # identity events that marked a DID for a new check
    new_dids: list[str] = field(default_factory=list)
    gaps: int = 0
    cursor_us: int | None = None
    lock_wait_seconds: float = 0.0
    seconds: float = 0.0

    def add(self, other: ApplyResult) -> None:
        """Fold another transaction's result into this running total."""
        for name in ("upserted", "tombstoned", "stale", "purged", "hidden_changed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.accounts_changed += other.accounts_changed
        self.identities_changed += other.identities_changed
        self.new_dids.extend(other.new_dids)
        self.gaps += other.gaps
        if other.cursor_us is not None:
            self.cursor_us = max(self.cursor_us or 0, other.cursor_us)
        self.lock_wait_seconds = max(self.lock_wait_seconds, other.lock_wait_seconds)
        self.seconds += other.seconds


def _count(result: list[tuple[int, ...]]) -> int:
    """The row count a DuckDB statement reports."""
    return result[0][0] if result else 0


def apply_batch(con: duckdb.DuckDBPyConnection, batch: EventBatch) -> ApplyResult:
    """Apply the batch inside the caller's open transaction."""
    started = time.perf_counter()
    result = ApplyResult()
    con.register("batch_commits", batch.commits)
    con.register("batch_accounts", batch.accounts)
    con.register("batch_identities", batch.identities)
    if batch.commits.num_rows:
        result.new_dids = [row[0] for row in con.execute(_REGISTER_DIDS).fetchall()]
        con.execute(_QUEUE_BACKFILLS).fetchall()
    if batch.accounts.num_rows:
        _apply_accounts(con, result)
    if batch.identities.num_rows:
        result.identities_changed = _count(con.execute(_MARK_IDENTITIES).fetchall())
    if batch.commits.num_rows:
        _apply_commits(con, batch.commits.num_rows, result, source="live")
    if batch.gaps:
        _record_gaps(con, batch)
        result.gaps = len(batch.gaps)
    if batch.cursor_us is not None:
        con.execute(_MOVE_CURSOR, {"cursor": batch.cursor_us, "endpoint": batch.endpoint})
        result.cursor_us = batch.cursor_us
    # No cleanup on error: the caller rolls back and closes the connection.
    for name in ("batch_commits", "batch_accounts", "batch_identities"):
        con.unregister(name)
    result.seconds = time.perf_counter() - started
    return result


def apply_commits(con: duckdb.DuckDBPyConnection, commits: pa.Table) -> ApplyResult:
    """Apply record versions from outside the stream (backfill pages, in `COMMIT_SCHEMA`)
    inside the caller's open transaction, by the same rules as live commits; an unchanged
    record keeps its stored time."""
    started = time.perf_counter()
    result = ApplyResult()
    if commits.num_rows:
        con.register("batch_commits", commits)
        _apply_commits(con, commits.num_rows, result, source="backfill")
        con.unregister("batch_commits")
    result.seconds = time.perf_counter() - started
    return result


def _apply_accounts(con: duckdb.DuckDBPyConnection, result: ApplyResult) -> None:
    con.execute(_ACCOUNT_CHANGES)
    result.accounts_changed = _count(
        con.execute("SELECT count(*) FROM account_changes WHERE status <> old_status").fetchall()
    )
    con.execute(_UPDATE_ACCOUNTS).fetchall()
    if result.accounts_changed:  # each of these scans the DID column of every record
        result.purged = _count(con.execute(_PURGE_DELETED).fetchall())
        con.execute(_DROP_DELETED_BACKFILLS).fetchall()
        con.execute(_REOPEN_BACKFILLS).fetchall()
        result.hidden_changed = _count(con.execute(_SYNC_HIDDEN).fetchall())
    con.execute("DROP TABLE account_changes")


def _apply_commits(
    con: duckdb.DuckDBPyConnection,
    commits: int,
    result: ApplyResult,
    source: Literal["live", "backfill"],
) -> None:
    """Apply the registered `batch_commits` of `commits` rows."""
    con.execute(_STAGE_INCOMING).fetchall()
    con.execute(_FIND_STORED).fetchall()
    con.execute(_PICK_WINNERS, {"keep_time": source == "backfill"}).fetchall()
    con.execute(_LOG_ACTIVITY, {"source": source}).fetchall()
    con.execute(_REPLACE_ROWS).fetchall()
    con.execute(_INSERT_WINNERS).fetchall()
    written, tombstoned = con.execute(_COUNT_WINNERS).fetchall()[0]
    result.upserted, result.tombstoned = written - tombstoned, tombstoned
    result.stale = commits - written
    con.execute("DROP TABLE incoming; DROP TABLE stored; DROP TABLE winners")


def _record_gaps(con: duckdb.DuckDBPyConnection, batch: EventBatch) -> None:
    gaps = pa.table(
        {
            "endpoint": [gap.endpoint for gap in batch.gaps],
            "cursor_us": pa.array([gap.cursor_us for gap in batch.gaps], pa.int64()),
            "first_event_us": pa.array([gap.first_event_us for gap in batch.gaps], pa.int64()),
        }
    )
    con.register("batch_gaps", gaps)
    con.execute(_RECORD_GAPS).fetchall()
    con.unregister("batch_gaps")
    con.execute(_RESYNC_ALL).fetchall()
