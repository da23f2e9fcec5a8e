"""Apply one EventBatch to the store in one transaction, set-based, in a fixed order.

1. DIDs that appear with a live record for the first time get an `accounts` row and a
   pending backfill per collection.
2. Account events move each known DID to its newest lifecycle state (docs/data-model.md);
   `deleted` purges the DID's rows for good, hiding statuses flag them, and an account
   active again gets the backfills its closed repository ended queued again.
3. Identity events mark the DID's identity for a new check (its handle, PDS).
4. Commits, reduced to the winning version per URI, replace the stored version (row or
   tombstone) only if they are newer (model/records.py).
5. Gaps are recorded, and mark every backfill for a new pass (events were lost); the
   cursor moves, in the same transaction as the data it covers.

Backfill pages go through step 4 alone (`apply_commits`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from mirror_assets.model import accounts, backfills, cursor, records
from mirror_assets.model.batch import EventBatch


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

    def set_written(self, written: records.Written) -> None:
        """Take the counts of the commits written."""
        self.upserted, self.tombstoned, self.stale = (
            written.upserted,
            written.tombstoned,
            written.stale,
        )


def apply_batch(con: duckdb.DuckDBPyConnection, batch: EventBatch) -> ApplyResult:
    """Apply the batch inside the caller's open transaction."""
    started = time.perf_counter()
    result = ApplyResult()
    con.register("batch_commits", batch.commits)
    con.register("batch_accounts", batch.accounts)
    con.register("batch_identities", batch.identities)
    if batch.commits.num_rows:
        result.new_dids = accounts.register_live(con)
        backfills.queue_live(con)
    if batch.accounts.num_rows:
        _apply_account_events(con, result)
    if batch.identities.num_rows:
        result.identities_changed = accounts.mark_identities(con)
    if batch.commits.num_rows:
        result.set_written(records.write_versions(con, batch.commits.num_rows, "live"))
    if batch.gaps:
        cursor.record_gaps(con, batch.gaps)
        backfills.restart_all(con)
        result.gaps = len(batch.gaps)
    if batch.cursor_us is not None:
        cursor.move(con, batch.cursor_us, batch.endpoint)
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
        result.set_written(records.write_versions(con, commits.num_rows, "backfill"))
        con.unregister("batch_commits")
    result.seconds = time.perf_counter() - started
    return result


def _apply_account_events(con: duckdb.DuckDBPyConnection, result: ApplyResult) -> None:
    result.accounts_changed = accounts.stage_changes(con)
    if result.accounts_changed:  # each of these scans the DID column of every record
        result.purged = records.purge_changed(con)
        backfills.drop_changed(con)
        backfills.reopen_changed(con)
        result.hidden_changed = records.sync_hidden(con)
    accounts.drop_changes(con)
