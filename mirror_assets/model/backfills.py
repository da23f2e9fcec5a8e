"""The `backfills` table: every statement on it, and so the whole of its state machine.

A row is one (did, collection) listing. It is `pending` (queued by a live commit,
discovery, a request or a cursor gap), `in_progress` (a run claimed it; its page cursor
and the repo rev of its pass are saved with every page), `complete`, `failed` (retried
after a delay that doubles per failure), or ended by the repository itself: `not_found`,
`takendown`, `suspended`, `deactivated`, or `tombstoned` (the DID was deleted from its
directory). Ended backfills are not retried until something starts a new pass: a cursor
gap, the account active again, `mirror backfill`, `mirror reset-backfills` or the API's
`?did=` (docs/backfill.md).

Every function works on the caller's connection; those that write, inside its open write
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.model.accounts import register

ENDED = ("not_found", "takendown", "suspended", "deactivated", "tombstoned")
DONE = ("complete", *ENDED)
STATUSES = ("pending", "in_progress", "failed", *DONE)
CLOSED = ("takendown", "suspended", "deactivated")  # ended by an account state that can change
MAX_RETRY_SECONDS = 86_400.0

# Due: queued or claimed (a claimed row whose run is gone resumes from its saved page), or
# failed with its delay passed.
_IS_DUE = """(status IN ('pending', 'in_progress')
    OR (status = 'failed' AND coalesce(next_attempt_at, '-infinity'::TIMESTAMPTZ) <= now()))"""

# A new pass from the top: pending, no page cursor and no rev (the pass reads the repo's rev
# before its first page), counters and retries from zero. A run still paging an old pass
# loses its claim (its row is no longer `in_progress` at its rev), so it cannot save its
# cursor over the new pass.
_NEW_PASS = """status = 'pending', pds_cursor = NULL, repo_rev = NULL, pages = 0, records = 0,
    attempts = 0, next_attempt_at = NULL, last_error = NULL, updated_at = now()"""

# Backfills for (did, collection) pairs of a query, for DIDs the mirror holds and has not
# deleted; pairs already known are left as they are. An anti-join, not ON CONFLICT, and a
# count before the insert, not RETURNING: the lake has neither (docs/scale-out.md).
_FIND_UNQUEUED = """
CREATE TEMP TABLE unqueued AS
SELECT DISTINCT w.did, w.collection
FROM ({pairs}) w JOIN accounts a ON a.did = w.did AND a.status <> 'deleted'
WHERE NOT EXISTS (
    SELECT 1 FROM backfills b WHERE b.did = w.did AND b.collection = w.collection)
"""

_QUEUE = """
INSERT INTO backfills (did, collection, status, updated_at)
SELECT did, collection, 'pending', now() FROM unqueued
"""

# A pass writes only while its row is still claimed by it: a cursor gap or an operator may
# have started a new pass meanwhile (a row's rev is NULL until its pass's first write).
# `b` is the stored row, `p` the pass's report.
STILL_CLAIMED = """
    b.did = p.did AND b.collection = p.collection AND b.status = 'in_progress'
    AND (p.repo_rev IS NULL OR b.repo_rev IS NULL OR b.repo_rev = p.repo_rev)
"""

_RECORD_PROGRESS = f"""
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
WHERE backfills.did = b.did AND backfills.collection = b.collection AND {STILL_CLAIMED}
"""

# The pairs whose pass completes with this progress, read before it is written (the lake has
# no RETURNING).
_COMPLETING = f"""
SELECT p.did, p.collection FROM progress p, backfills b
WHERE p.status = 'complete' AND {STILL_CLAIMED}
"""


@dataclass(frozen=True)
class Task:
    """One (did, collection) listing a run takes on; `cursor` set means it resumes a pass."""

    did: str
    collection: str
    cursor: str | None
    repo_rev: str | None


@dataclass(frozen=True)
class Selection:
    """Which backfills an operator restarts; an empty field selects all."""

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


# --- queueing ------------------------------------------------------------------------------


def queue(con: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[str, str]]) -> int:
    """Queue (did, collection) backfills not known yet; return how many were queued.

    DIDs the mirror has not seen get an account; deleted accounts get nothing.
    """
    dids, collections = zip(*pairs, strict=True) if pairs else ((), ())
    register(con, list(dids))
    con.register(
        "wanted",
        pa.table(
            {
                "did": pa.array(dids, pa.string()),
                "collection": pa.array(collections, pa.string()),
            }
        ),
    )
    queued = _queue(con, "SELECT did, collection FROM wanted")
    con.unregister("wanted")
    return queued


def queue_live(con: duckdb.DuckDBPyConnection) -> None:
    """Queue a backfill per (did, collection) with a live record among `batch_commits`."""
    _queue(con, "SELECT did, collection FROM batch_commits WHERE NOT deleted")


def _queue(con: duckdb.DuckDBPyConnection, pairs: str) -> int:
    con.execute(_FIND_UNQUEUED.format(pairs=pairs)).fetchall()
    con.execute(_QUEUE).fetchall()
    queued = int(con.execute("SELECT count(*) FROM unqueued").fetchall()[0][0])
    con.execute("DROP TABLE unqueued")
    return queued


# --- new passes ----------------------------------------------------------------------------


def restart_all(con: duckdb.DuckDBPyConnection) -> None:
    """Events were lost, so any DID may have changed unseen: every backfill starts a new
    pass, whose completion also removes what its listing no longer has. A DID gone for good
    stays so."""
    con.execute(f"UPDATE backfills SET {_NEW_PASS} WHERE status <> 'tombstoned'").fetchall()


def reopen_changed(con: duckdb.DuckDBPyConnection) -> None:
    """A repository that was closed when its backfill ran has history to fetch once it is
    open: a new pass for every DID of `account_changes` active again."""
    con.execute(
        f"""
        UPDATE backfills SET {_NEW_PASS}
        WHERE did IN (SELECT did FROM account_changes
                      WHERE status = 'active' AND old_status <> 'active')
          AND list_contains($closed, status)
        """,
        {"closed": list(CLOSED)},
    ).fetchall()


def drop_changed(con: duckdb.DuckDBPyConnection) -> None:
    """Forget the backfills of the DIDs of `account_changes` deleted for good."""
    con.execute(
        "DELETE FROM backfills WHERE did IN "
        "(SELECT did FROM account_changes WHERE status = 'deleted')"
    ).fetchall()


def restart(con: duckdb.DuckDBPyConnection, selection: Selection) -> dict[str, int]:
    """Make the selected backfills new passes from the top; how many per previous status."""
    where, params = selection.where()
    rows = con.execute(
        f"SELECT status, count(*) FROM backfills WHERE {where} GROUP BY status ORDER BY status",
        params,
    ).fetchall()
    con.execute(f"UPDATE backfills SET {_NEW_PASS} WHERE {where}", params).fetchall()
    return {status: int(count) for status, count in rows}


def _restart_asked(con: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[str, str]]) -> None:
    """A new pass for each pair asked for now that is not queued or in progress."""
    con.register("restarted", pa.table(list(zip(*pairs, strict=True)), ["did", "collection"]))
    con.execute(
        f"""
        UPDATE backfills SET {_NEW_PASS}
        FROM restarted r WHERE backfills.did = r.did AND backfills.collection = r.collection
          AND backfills.status NOT IN ('pending', 'in_progress')
        """
    ).fetchall()
    con.unregister("restarted")


# --- runs ----------------------------------------------------------------------------------


def due_dids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """DIDs with a backfill to start, resume or retry now, longest waiting first."""
    rows = con.execute(
        f"SELECT did FROM backfills WHERE {_IS_DUE} GROUP BY did ORDER BY min(updated_at), did"
    ).fetchall()
    return [row[0] for row in rows]


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
        _restart_asked(con, restart)
    con.register("claimed_dids", pa.table({"did": pa.array(dids, pa.string())}))
    _forget_untracked(con, collections)
    due = f"did IN (SELECT did FROM claimed_dids) AND {_IS_DUE}"
    # Read before the claim is written: the lake has no RETURNING. A pass that starts over
    # (no page cursor) starts with no rev.
    rows = con.execute(
        "SELECT did, collection, pds_cursor, CASE WHEN pds_cursor IS NULL THEN NULL"
        f" ELSE repo_rev END FROM backfills WHERE {due}"
    ).fetchall()
    con.execute(
        f"""
        UPDATE backfills SET status = 'in_progress', updated_at = now(),
            pages = CASE WHEN pds_cursor IS NULL THEN 0 ELSE pages END,
            records = CASE WHEN pds_cursor IS NULL THEN 0 ELSE records END,
            repo_rev = CASE WHEN pds_cursor IS NULL THEN NULL ELSE repo_rev END
        WHERE {due}
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


def record_progress(con: duckdb.DuckDBPyConnection, retry_seconds: float) -> list[tuple[str, str]]:
    """Fold the registered `progress` table (a row per listing a group of reports touched)
    into the rows its passes still hold; the (did, collection) pairs now complete."""
    completing = con.execute(_COMPLETING).fetchall()
    con.execute(_RECORD_PROGRESS, {"retry": retry_seconds}).fetchall()
    return [(did, collection) for did, collection in completing]


def done_dids(con: duckdb.DuckDBPyConnection, dids: Sequence[str]) -> list[str]:
    """Those of the DIDs whose every backfill is done (complete or ended)."""
    con.register("asked", pa.table({"did": pa.array(dids, pa.string())}))
    rows = con.execute(
        "SELECT did FROM backfills WHERE did IN (SELECT did FROM asked) "
        "GROUP BY did HAVING bool_and(list_contains(?, status)) ORDER BY did",
        [list(DONE)],
    ).fetchall()
    con.unregister("asked")
    return [row[0] for row in rows]


def collections_of(con: duckdb.DuckDBPyConnection, did: str) -> list[str]:
    """The collections the DID has a backfill of."""
    rows = con.execute("SELECT collection FROM backfills WHERE did = ?", [did]).fetchall()
    return [row[0] for row in rows]
