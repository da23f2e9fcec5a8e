"""The `accounts` table: a row per DID the mirror holds, with its lifecycle state (active,
taken down, suspended, deactivated, deleted) and its identity (PDS, verified handle).

Every function works on the caller's connection; those that write, inside its open write
transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

# DIDs of a query (`did`, `first_seen_us`) the mirror does not hold yet get an active
# account. Their identity and account events count from `first_seen_us` on. The new DIDs
# are found first and then inserted (the lake has no RETURNING, docs/scale-out.md).
_FIND_NEW = """
CREATE TEMP TABLE new_accounts AS
SELECT did, min(first_seen_us) AS first_seen_us
FROM ({dids})
WHERE did NOT IN (SELECT did FROM accounts)
GROUP BY did
"""

_REGISTER = """
INSERT INTO accounts (did, status, hidden, first_seen_us, first_seen_at, updated_at)
SELECT did, 'active', false, first_seen_us, now(), now() FROM new_accounts
"""


def latest_per_did(table: str) -> str:
    """The newest event per DID of an account or identity batch (a table or a parenthesised
    query), by the event's own time."""
    return f"""
    SELECT *, coalesce(try_cast(event_time AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ) AS event_at
    FROM {table}
    QUALIFY row_number() OVER (
        PARTITION BY did ORDER BY event_at DESC, event_seq DESC, seq DESC) = 1
    """


def since_first_seen(table: str) -> str:
    """Events of a batch for DIDs the mirror holds, from the DID's first live commit on.

    Whether an identity or account event counts must not depend on where flushes or
    restarts cut the stream: "is the DID known yet?" does, "is the event at or after the
    DID's first live commit?" does not. (A new account's handle announced before its first
    record is thus left to identity resolution.)
    """
    return f"""(
    SELECT b.* FROM {table} b JOIN accounts a ON a.did = b.did
    WHERE b.time_us >= a.first_seen_us)"""


# Newest deciding account event per known, not deleted DID, turned into the state it leads to.
# `throttled`, `desynchronized` and inactive-without-status change nothing, so they take no
# part at all: as the newest event of a batch they would mask an older deciding one, and as
# the stored account time they would make a late-arriving older deciding event look stale.
_DECIDING_ACCOUNTS = f"""(
    SELECT * FROM {since_first_seen("batch_accounts")}
    WHERE active OR status IN ('takendown', 'suspended', 'deactivated', 'deleted'))"""

_STAGE_CHANGES = f"""
CREATE TEMP TABLE account_changes AS
WITH latest AS ({latest_per_did(_DECIDING_ACCOUNTS)})
SELECT l.did, l.event_at, l.event_seq, a.status AS old_status,
    CASE WHEN l.active THEN 'active' ELSE l.status END AS status
FROM latest l JOIN accounts a ON a.did = l.did
WHERE a.status <> 'deleted'
  AND (a.account_time IS NULL OR l.event_at > a.account_time
       OR (l.event_at = a.account_time AND l.event_seq >= a.account_seq))
"""

_APPLY_CHANGES = """
UPDATE accounts SET status = c.status, hidden = c.status <> 'active',
    account_time = c.event_at, account_seq = c.event_seq, updated_at = now()
FROM account_changes c WHERE accounts.did = c.did
"""

_MARK_IDENTITIES = f"""
WITH latest AS ({latest_per_did(since_first_seen("batch_identities"))})
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

_RESOLVED = pa.schema([("did", pa.string()), ("pds", pa.string()), ("handle", pa.string())])
_RECORD_IDENTITIES = """
UPDATE accounts SET pds = r.pds, pds_resolved_at = now(), handle = r.handle,
    identity_stale = false, updated_at = now()
FROM resolved r WHERE accounts.did = r.did
"""


@dataclass(frozen=True)
class Resolved:
    """A DID's document was read: its PDS, and its handle if that resolves back to the DID
    (None otherwise: a handle the DID document claims is not believed on its own)."""

    did: str
    pds: str
    handle: str | None


def _count(rows: list[tuple[int, ...]]) -> int:
    """The row count a DuckDB statement reports."""
    return rows[0][0] if rows else 0


# --- new DIDs ------------------------------------------------------------------------------


def register(con: duckdb.DuckDBPyConnection, dids: Sequence[str]) -> int:
    """Give DIDs not seen live (discovered, or asked for) an account; return how many were new.

    Their identity and account events count from now on, as for a DID first seen now.
    """
    con.register("new_dids", pa.table({"did": pa.array(dids, pa.string())}))
    new = _register(
        con,
        "SELECT did, $now_us AS first_seen_us FROM new_dids",
        {"now_us": int(time.time() * 1_000_000)},
    )
    con.unregister("new_dids")
    return len(new)


def register_live(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Give the DIDs with a live record among `batch_commits` an account, first seen at that
    record's time; the DIDs that were new."""
    return _register(
        con, "SELECT did, time_us AS first_seen_us FROM batch_commits WHERE NOT deleted"
    )


def _register(
    con: duckdb.DuckDBPyConnection, dids: str, params: dict[str, object] | None = None
) -> list[str]:
    con.execute(_FIND_NEW.format(dids=dids), params).fetchall()
    con.execute(_REGISTER).fetchall()
    new = [row[0] for row in con.execute("SELECT did FROM new_accounts ORDER BY did").fetchall()]
    con.execute("DROP TABLE new_accounts")
    return new


# --- lifecycle -----------------------------------------------------------------------------


def stage_changes(con: duckdb.DuckDBPyConnection) -> int:
    """Turn `batch_accounts` into the temporary table `account_changes` (did, old_status,
    status, event time), one row per DID whose newest deciding event is newer than the
    stored one, and apply it to `accounts`; how many DIDs changed status.

    The other tables follow it (records.purge_changed, records.sync_hidden,
    backfills.drop_changed, backfills.reopen_changed) before `drop_changes`.
    """
    con.execute(_STAGE_CHANGES)
    changed = _count(
        con.execute("SELECT count(*) FROM account_changes WHERE status <> old_status").fetchall()
    )
    con.execute(_APPLY_CHANGES).fetchall()
    return changed


def drop_changes(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP TABLE account_changes")


# --- identities ----------------------------------------------------------------------------


def mark_identities(con: duckdb.DuckDBPyConnection) -> int:
    """Mark the DIDs of `batch_identities` for a new identity check; how many were marked.

    A handle counts only once it resolves back to the DID (runs/identities.py), so an
    announced handle that differs from the verified one is not kept meanwhile.
    """
    return _count(con.execute(_MARK_IDENTITIES).fetchall())


def stale_identities(con: duckdb.DuckDBPyConnection, limit: int) -> list[str]:
    """DIDs an identity event marked for a check, longest waiting first."""
    rows = con.execute(
        "SELECT did FROM accounts WHERE identity_stale AND status <> 'deleted' "
        "ORDER BY updated_at, did LIMIT ?",
        [limit],
    ).fetchall()
    return [row[0] for row in rows]


def record_identities(con: duckdb.DuckDBPyConnection, resolved: Sequence[Resolved]) -> None:
    """Keep what DID documents said: each DID's PDS, and its handle if verified (else
    none); the DID's identity check is done."""
    if not resolved:
        return
    con.register(
        "resolved", pa.Table.from_pylist([vars(item) for item in resolved], schema=_RESOLVED)
    )
    con.execute(_RECORD_IDENTITIES).fetchall()
    con.unregister("resolved")


def end_identity_checks(con: duckdb.DuckDBPyConnection, dids: Sequence[str]) -> None:
    """End the check of every DID taken on: one whose document could not be read keeps its
    PDS and handle as they were until the next identity event or backfill checks it again."""
    con.register("checked", pa.table({"did": pa.array(dids, pa.string())}))
    con.execute(
        "UPDATE accounts SET identity_stale = false WHERE did IN (SELECT did FROM checked)"
    ).fetchall()
    con.unregister("checked")


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
