"""What the integrity checks look for in the file: broken storage invariants and failing
backfills (docs/operations.md says what each means and what to do).

Each integrity finding counts the offending rows and names a few of them, so a failed check
says what is wrong and where without anyone opening the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from mirror_assets.atproto.nsids import CollectionFilter

SAMPLE = 10


@dataclass(frozen=True)
class Finding:
    """Rows that break one rule: how many, a sample of where, and counts by kind."""

    problems: int
    sample: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)


def uris_off_their_keys(con: duckdb.DuckDBPyConnection) -> Finding:
    """Rows whose URI is not `at://{did}/{collection}/{rkey}` of the row's own columns."""
    count, sample = con.execute(
        "SELECT count(*), coalesce(min(uri, $n), []) FROM record_versions "
        "WHERE uri <> 'at://' || did || '/' || collection || '/' || rkey",
        {"n": SAMPLE},
    ).fetchall()[0]
    return Finding(count, sample)


def untracked_rows(con: duckdb.DuckDBPyConnection, tracked: CollectionFilter) -> Finding:
    """Rows (live or tombstones) of collections COLLECTIONS no longer names."""
    per_collection = con.execute(
        "SELECT collection, count(*) FROM record_versions GROUP BY collection ORDER BY collection"
    ).fetchall()
    untracked = {name: n for name, n in per_collection if not tracked.matches(name)}
    return Finding(sum(untracked.values()), sorted(untracked), untracked)


# Records show exactly while their account is active: a deleted account has no rows at all,
# a takendown, suspended or deactivated one only hidden rows.
_ACCOUNT_VISIBILITY = """
SELECT CASE WHEN a.status = 'deleted' THEN 'rows of deleted accounts'
            WHEN a.hidden THEN 'visible rows of hidden accounts'
            ELSE 'hidden rows of active accounts' END AS kind,
    count(*), min(DISTINCT r.did, $n)
FROM record_versions r JOIN accounts a USING (did)
WHERE a.status = 'deleted'
   OR (a.hidden AND NOT r.hidden AND NOT r.deleted)
   OR (NOT a.hidden AND r.hidden)
GROUP BY kind ORDER BY kind
"""


def misshown_rows(con: duckdb.DuckDBPyConnection) -> Finding:
    """Rows of deleted accounts, visible rows of hidden accounts, hidden rows of active ones."""
    rows = con.execute(_ACCOUNT_VISIBILITY, {"n": SAMPLE}).fetchall()
    dids = sorted({did for _, _, sample in rows for did in sample})
    return Finding(sum(n for _, n, _ in rows), dids[:SAMPLE], {kind: n for kind, n, _ in rows})


# Each URI has one row: its live record or its tombstone. Two rows would let a deleted record
# show, or an old version beside the new one. The 8-byte hash narrows the search to the few
# candidates before comparing the URIs themselves.
_URIS_STORED_TWICE = """
SELECT count(*), coalesce(sum(versions), 0), coalesce(min(uri, $n), [])
FROM (
    SELECT uri, count(*) AS versions FROM record_versions
    WHERE uri_hash IN (
        SELECT uri_hash FROM record_versions GROUP BY uri_hash HAVING count(*) > 1)
    GROUP BY uri HAVING count(*) > 1
)
"""


def uris_stored_twice(con: duckdb.DuckDBPyConnection) -> Finding:
    """URIs with more than one row (a live row beside a tombstone, or two versions)."""
    uris, rows, sample = con.execute(_URIS_STORED_TWICE, {"n": SAMPLE}).fetchall()[0]
    return Finding(uris, sample, {"rows": rows} if uris else {})


_FAILED_BY_HOST = """
SELECT coalesce(nullif(regexp_extract(a.pds, '^[a-z]+://([^/]+)', 1), ''),
        'PDS not resolved') AS host,
    count(*) AS n
FROM backfills b LEFT JOIN accounts a USING (did)
WHERE b.status = 'failed'
GROUP BY host ORDER BY n DESC, host LIMIT $n
"""


def failed_backfills(con: duckdb.DuckDBPyConnection) -> Finding:
    """Backfills in status `failed`, by PDS host, with a sample of their errors."""
    count = con.execute("SELECT count(*) FROM backfills WHERE status = 'failed'").fetchall()
    by_host = con.execute(_FAILED_BY_HOST, {"n": SAMPLE}).fetchall()
    sample = con.execute(
        "SELECT did || ' ' || collection || ': ' || coalesce(last_error, '?') FROM backfills "
        "WHERE status = 'failed' ORDER BY updated_at DESC, did LIMIT $n",
        {"n": SAMPLE},
    ).fetchall()
    return Finding(count[0][0], [row[0] for row in sample], dict(by_host))
