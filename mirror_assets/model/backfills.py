"""The `backfills` table: which (did, collection) listings are due, and what runs made of them.

A row is `pending` (queued by a live commit, discovery, a request or a cursor gap),
`in_progress` (a run claimed it; its page cursor and the repo rev of its pass are saved
with every page), `complete`, `failed` (retried after a delay that doubles per failure), or
ended by the repository itself: `not_found`, `takendown`, `suspended`, `deactivated`, or
`tombstoned` (the DID was deleted from its directory). Ended backfills are not retried until
something restarts them: a cursor gap, the account active again, `mirror backfill` or the
API's `?did=`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.model.apply import ApplyResult, apply_commits

ENDED = ("not_found", "takendown", "suspended", "deactivated", "tombstoned")
DONE = ("complete", *ENDED)
MAX_RETRY_SECONDS = 86_400.0

# What a sensor should launch: queued or claimed (a claimed row whose run is gone resumes
# from its saved page), and failures whose delay has passed.
_DUE = """
SELECT did FROM backfills
WHERE status IN ('pending', 'in_progress')
   OR (status = 'failed' AND coalesce(next_attempt_at, '-infinity'::TIMESTAMPTZ) <= now())
GROUP BY did ORDER BY min(updated_at), did
"""


@dataclass(frozen=True)
class Task:
    """One (did, collection) listing a run takes on; `cursor` set means it resumes a pass."""

    did: str
    collection: str
    cursor: str | None
    repo_rev: str | None


def due_dids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """DIDs with a backfill to start, resume or retry now, longest waiting first."""
    return [row[0] for row in con.execute(_DUE).fetchall()]


def register_dids(con: duckdb.DuckDBPyConnection, dids: Sequence[str]) -> int:
    """Give DIDs not seen live (discovered, or asked for) an account; return how many were new.

    Their identity and account events count from now on, as for a DID first seen now.
    """
    con.register("new_dids", pa.table({"did": pa.array(dids, pa.string())}))
    rows = con.execute(
        """
        INSERT INTO accounts (did, status, hidden, first_seen_us, first_seen_at, updated_at)
        SELECT DISTINCT did, 'active', false, $now_us, now(), now() FROM new_dids
        WHERE did NOT IN (SELECT did FROM accounts)
        RETURNING did
        """,
        {"now_us": int(time.time() * 1_000_000)},
    ).fetchall()
    con.unregister("new_dids")
    return len(rows)


def queue(con: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[str, str]]) -> int:
    """Queue (did, collection) backfills not known yet; return how many were queued.

    DIDs the mirror has not seen get an account; deleted accounts get nothing.
    """
    dids, collections = zip(*pairs, strict=True) if pairs else ((), ())
    register_dids(con, list(dids))
    con.register(
        "wanted",
        pa.table(
            {
                "did": pa.array(dids, pa.string()),
                "collection": pa.array(collections, pa.string()),
            }
        ),
    )
    rows = con.execute(
        """
        INSERT INTO backfills (did, collection, status, updated_at)
        SELECT DISTINCT w.did, w.collection, 'pending', now()
        FROM wanted w JOIN accounts a ON a.did = w.did AND a.status <> 'deleted'
        ON CONFLICT DO NOTHING
        RETURNING did
        """
    ).fetchall()
    con.unregister("wanted")
    return len(rows)


def claim(
    con: duckdb.DuckDBPyConnection,
    dids: Sequence[str],
    collections: CollectionFilter,
    restart: Sequence[tuple[str, str]] = (),
) -> list[Task]:
    """Mark the DIDs' due backfills `in_progress` and return them as tasks.

    `restart` names (did, collection) pairs asked for now (`mirror backfill`, the API's
    `?did=`): queued if unknown, listed anew if complete, ended or failed; a pass in
    progress goes on. The rest resume where their last pass stopped. Backfills of
    collections no longer tracked are dropped: the stream would not keep them current.
    """
    if restart:
        queue(con, restart)
        _restart(con, restart)
    con.register("claimed_dids", pa.table({"did": pa.array(dids, pa.string())}))
    _forget_untracked(con, collections)
    rows = con.execute(
        """
        UPDATE backfills SET status = 'in_progress', updated_at = now(),
            pages = CASE WHEN pds_cursor IS NULL THEN 0 ELSE pages END,
            records = CASE WHEN pds_cursor IS NULL THEN 0 ELSE records END,
            repo_rev = CASE WHEN pds_cursor IS NULL THEN NULL ELSE repo_rev END
        WHERE did IN (SELECT did FROM claimed_dids)
          AND (status IN ('pending', 'in_progress')
               OR (status = 'failed'
                   AND coalesce(next_attempt_at, '-infinity'::TIMESTAMPTZ) <= now()))
        RETURNING did, collection, pds_cursor, repo_rev
        """
    ).fetchall()
    con.unregister("claimed_dids")
    return sorted((Task(*row) for row in rows), key=lambda task: (task.did, task.collection))


def _forget_untracked(con: duckdb.DuckDBPyConnection, collections: CollectionFilter) -> None:
    """Drop the claimed DIDs' backfills of collections COLLECTIONS no longer names."""
    rows = con.execute(
        "SELECT DISTINCT collection FROM backfills WHERE did IN (SELECT did FROM claimed_dids)"
    ).fetchall()
    untracked = [row[0] for row in rows if not collections.matches(row[0])]
    if untracked:
        con.execute(
            "DELETE FROM backfills WHERE did IN (SELECT did FROM claimed_dids) "
            "AND list_contains(?, collection)",
            [untracked],
        ).fetchall()


def _restart(con: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[str, str]]) -> None:
    con.register("restarted", pa.table(list(zip(*pairs, strict=True)), ["did", "collection"]))
    con.execute(
        """
        UPDATE backfills SET status = 'pending', pds_cursor = NULL, repo_rev = NULL,
            next_attempt_at = NULL, updated_at = now()
        FROM restarted r WHERE backfills.did = r.did AND backfills.collection = r.collection
          AND backfills.status NOT IN ('pending', 'in_progress')
        """
    ).fetchall()
    con.unregister("restarted")


def cached_pdses(
    con: duckdb.DuckDBPyConnection, dids: Sequence[str], ttl_seconds: float
) -> dict[str, str]:
    """The PDS of each DID resolved less than `ttl_seconds` ago."""
    con.register("asked", pa.table({"did": pa.array(dids, pa.string())}))
    rows = con.execute(
        """
        SELECT did, pds FROM accounts
        WHERE did IN (SELECT did FROM asked) AND pds IS NOT NULL
          AND pds_resolved_at > now() - to_seconds($ttl)
        """,
        {"ttl": ttl_seconds},
    ).fetchall()
    con.unregister("asked")
    return dict(rows)


# --- what runs report back, written in one transaction per group --------------------------


@dataclass(frozen=True)
class Resolved:
    """A DID's document was read: its PDS, and its handle if that resolves back to the DID
    (None otherwise: a handle the DID document claims is not believed on its own)."""

    did: str
    pds: str
    handle: str | None


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

# A pass writes only while its row is still claimed by it: a cursor gap or an operator may
# have restarted the backfill meanwhile (a row's rev is NULL until its pass's first write).
_STILL_OURS = """
    b.did = p.did AND b.collection = p.collection AND b.status = 'in_progress'
    AND (p.repo_rev IS NULL OR b.repo_rev IS NULL OR b.repo_rev = p.repo_rev)
"""

# A complete listing at rev R is the repo's truth for everything older than R: a live row
# the listing did not have and whose version is older was deleted while the mirror was
# not looking. It becomes a tombstone at R, so a replay of its old create cannot return.
_REMOVE_UNLISTED = f"""
UPDATE record_versions SET deleted = true, cid = NULL, record = NULL, rev = d.repo_rev,
    indexed_at = now()
FROM (SELECT p.did, p.collection, p.repo_rev FROM progress p, backfills b
      WHERE p.status = 'complete' AND {_STILL_OURS}) d
WHERE record_versions.did = d.did AND record_versions.collection = d.collection
  AND NOT record_versions.deleted AND record_versions.rev < d.repo_rev
"""

_UPDATE_BACKFILLS = f"""
UPDATE backfills SET
    status = p.status,
    pds_cursor = CASE WHEN p.status = 'complete' THEN NULL
        WHEN p.pages > 0 THEN p.cursor ELSE b.pds_cursor END,
    repo_rev = coalesce(p.repo_rev, b.repo_rev),
    pages = b.pages + p.pages,
    records = b.records + p.records,
    attempts = CASE WHEN p.status = 'failed' THEN b.attempts + 1
        WHEN p.status = 'complete' THEN 0 ELSE b.attempts END,
    last_error = CASE WHEN p.error IS NOT NULL THEN p.error
        WHEN p.status = 'complete' THEN NULL ELSE b.last_error END,
    next_attempt_at = CASE WHEN p.status = 'failed'
        THEN now() + to_seconds(least($retry * pow(2, b.attempts), {MAX_RETRY_SECONDS})) END,
    completed_at = CASE WHEN p.status = 'complete' THEN now() ELSE b.completed_at END,
    updated_at = now()
FROM progress p, backfills b
WHERE backfills.did = b.did AND backfills.collection = b.collection AND {_STILL_OURS}
RETURNING backfills.did, backfills.collection, backfills.status
"""

_RESOLVED = pa.schema([("did", pa.string()), ("pds", pa.string()), ("handle", pa.string())])
_UPDATE_IDENTITIES = """
UPDATE accounts SET pds = r.pds, pds_resolved_at = now(), handle = r.handle,
    identity_stale = false, updated_at = now()
FROM resolved r WHERE accounts.did = r.did
"""


def record_identities(con: duckdb.DuckDBPyConnection, resolved: Sequence[Resolved]) -> None:
    """Keep what DID documents said, in the caller's transaction: each DID's PDS, and its
    handle if verified (else none); the DID's identity check is done."""
    if not resolved:
        return
    con.register(
        "resolved", pa.Table.from_pylist([vars(item) for item in resolved], schema=_RESOLVED)
    )
    con.execute(_UPDATE_IDENTITIES).fetchall()
    con.unregister("resolved")


def write_progress(
    con: duckdb.DuckDBPyConnection, items: Sequence[Progress], retry_seconds: float
) -> ProgressResult:
    """Write a group of progress reports in the caller's transaction, set-based."""
    record_identities(con, [item for item in items if isinstance(item, Resolved)])
    pages = [item.rows for item in items if isinstance(item, PageRead)]
    applied = apply_commits(con, pa.concat_tables(pages)) if pages else ApplyResult()
    con.register("progress", _progress_table(items))
    removed = con.execute(_REMOVE_UNLISTED).fetchall()
    updated = con.execute(_UPDATE_BACKFILLS, {"retry": retry_seconds}).fetchall()
    con.unregister("progress")
    completed = [(did, collection) for did, collection, status in updated if status == "complete"]
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
