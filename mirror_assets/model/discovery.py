"""The `discovery_state` table: per collection, the relay's listing a discovery pass is at.

Every function works on the caller's connection; those that write, inside its open write
transaction.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

_RECORD_PAGE = """
MERGE INTO discovery_state
USING (SELECT $collection::VARCHAR AS collection, $relay::VARCHAR AS relay,
    $cursor::VARCHAR AS cursor, $listed::BIGINT AS listed, $queued::BIGINT AS queued) AS page
USING (collection)
WHEN MATCHED THEN UPDATE SET
    relay = page.relay,
    cursor = page.cursor,
    repos_listed = CASE WHEN $first THEN page.listed
        ELSE discovery_state.repos_listed + page.listed END,
    dids_queued = CASE WHEN $first THEN page.queued
        ELSE discovery_state.dids_queued + page.queued END,
    pass_started_at = CASE WHEN $first THEN now() ELSE discovery_state.pass_started_at END,
    completed_at = CASE WHEN page.cursor IS NULL THEN now()
        ELSE discovery_state.completed_at END,
    updated_at = now()
WHEN NOT MATCHED THEN INSERT VALUES (page.collection, page.relay, page.cursor, page.listed,
    page.queued, now(), CASE WHEN page.cursor IS NULL THEN now() END, now())
"""

Position = tuple[str, str | None, datetime | None]  # relay, cursor, completed_at


def positions(con: duckdb.DuckDBPyConnection) -> dict[str, Position]:
    """Each collection's last pass: its relay, the cursor it resumes from (None when it was
    complete) and when it was last complete."""
    rows = con.execute(
        "SELECT collection, relay, cursor, completed_at FROM discovery_state"
    ).fetchall()
    return {
        collection: (relay, cursor, completed_at)
        for collection, relay, cursor, completed_at in rows
    }


def completed_on(con: duckdb.DuckDBPyConnection, relay: str) -> set[str]:
    """The collections with a complete pass on this relay."""
    rows = con.execute(
        "SELECT collection FROM discovery_state WHERE relay = ? AND completed_at IS NOT NULL",
        [relay],
    ).fetchall()
    return {row[0] for row in rows}


def record_page(
    con: duckdb.DuckDBPyConnection,
    collection: str,
    relay: str,
    cursor: str | None,
    listed: int,
    queued: int,
    first: bool,
) -> None:
    """Save a pass's position after one page (`cursor` None: the pass is complete) and add
    the page's counts, or start them afresh on the `first` page of a new pass."""
    params = {
        "collection": collection,
        "relay": relay,
        "cursor": cursor,
        "listed": listed,
        "queued": queued,
        "first": first,
    }
    con.execute(_RECORD_PAGE, params).fetchall()
