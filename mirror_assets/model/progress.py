"""What backfill runs report back, written in one transaction per group of reports.

A run's network tasks report each DID's identity, each page read, each listing done and
each backfill ended; the run's writer folds whatever has arrived into one transaction:
identities into `accounts`, pages into `record_versions` by the rules of live commits,
and the listings' new state into `backfills` while their passes still hold them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from mirror_assets.model import backfills
from mirror_assets.model.accounts import Resolved, record_identities
from mirror_assets.model.apply import ApplyResult, apply_commits


@dataclass(frozen=True)
class PageRead:
    """One page of a pass: its records (in `COMMIT_SCHEMA`, at the pass's rev) and the
    cursor the next page starts from."""

    did: str
    collection: str
    repo_rev: str
    rows: pa.Table
    cursor: str | None


@dataclass(frozen=True)
class ListingDone:
    """The pass reached an empty page: the listing is complete at `repo_rev`."""

    did: str
    collection: str
    repo_rev: str


@dataclass(frozen=True)
class Ended:
    """The backfill stopped: `failed` (retried later) or one of ENDED (not retried)."""

    did: str
    collection: str
    status: str
    error: str


Progress = Resolved | PageRead | ListingDone | Ended


@dataclass
class ProgressResult:
    applied: ApplyResult
    removed: int  # rows the completed listings no longer had (resync)
    completed: list[tuple[str, str]]


_PROGRESS_SCHEMA = pa.schema(
    [
        ("did", pa.string()),
        ("collection", pa.string()),
        ("status", pa.string()),
        ("repo_rev", pa.string()),
        ("cursor", pa.string()),
        ("pages", pa.int32()),
        ("records", pa.int32()),
        ("error", pa.string()),
    ]
)

# A complete listing at rev R is the repo's truth for everything older than R: a live row
# the listing did not have and whose version is older was deleted while the mirror was
# not looking. It becomes a tombstone at R, so a replay of its old create cannot return.
_REMOVE_UNLISTED = f"""
UPDATE record_versions SET deleted = true, cid = NULL, record = NULL, rev = d.repo_rev,
    indexed_at = now()
FROM (SELECT p.did, p.collection, p.repo_rev FROM progress p, backfills b
      WHERE p.status = 'complete' AND {backfills.STILL_CLAIMED}) d
WHERE record_versions.did = d.did AND record_versions.collection = d.collection
  AND NOT record_versions.deleted AND record_versions.rev < d.repo_rev
"""


def write_progress(
    con: duckdb.DuckDBPyConnection, items: Sequence[Progress], retry_seconds: float
) -> ProgressResult:
    """Write a group of progress reports in the caller's transaction, set-based."""
    record_identities(con, [item for item in items if isinstance(item, Resolved)])
    pages = [item.rows for item in items if isinstance(item, PageRead)]
    applied = apply_commits(con, pa.concat_tables(pages)) if pages else ApplyResult()
    con.register("progress", _progress_table(items))
    removed = con.execute(_REMOVE_UNLISTED).fetchall()
    completed = backfills.record_progress(con, retry_seconds)
    con.unregister("progress")
    return ProgressResult(applied, removed[0][0] if removed else 0, completed)


@dataclass
class _ListingProgress:
    """What a group's items did to one (did, collection): a row of the `progress` table."""

    did: str
    collection: str
    status: str = "in_progress"
    repo_rev: str | None = None
    cursor: str | None = None
    pages: int = 0
    records: int = 0
    error: str | None = None


def _progress_table(items: Sequence[Progress]) -> pa.Table:
    """One row per (did, collection): the state its items lead to, in order."""
    rows: dict[tuple[str, str], _ListingProgress] = {}
    for item in items:
        if isinstance(item, Resolved):
            continue
        key = (item.did, item.collection)
        row = rows.setdefault(key, _ListingProgress(*key))
        if isinstance(item, PageRead):
            row.status, row.repo_rev, row.cursor = "in_progress", item.repo_rev, item.cursor
            row.pages += 1
            row.records += item.rows.num_rows
        elif isinstance(item, ListingDone):
            row.status, row.repo_rev = "complete", item.repo_rev
        else:
            row.status, row.error = item.status, item.error
    return pa.Table.from_pylist([vars(row) for row in rows.values()], schema=_PROGRESS_SCHEMA)
