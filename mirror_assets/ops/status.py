"""What the mirror holds right now: counts, cursor and lag, backfills, gaps (`mirror status`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from mirror_assets.atproto.cursor_time import cursor_iso, cursor_lag_seconds
from mirror_assets.config import Settings


@dataclass(frozen=True)
class CollectionCounts:
    collection: str
    records: int  # live and visible
    hidden: int  # live, of takendown, suspended or deactivated accounts
    tombstones: int
    dids: int


@dataclass(frozen=True)
class DiscoveryPass:
    collection: str
    relay: str
    repos_listed: int
    dids_queued: int
    in_progress: bool  # a pass stopped midway, to resume
    completed_at: datetime | None  # of the last complete pass


@dataclass(frozen=True)
class FailedBackfill:
    did: str
    collection: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class MirrorStatus:
    schema_version: int
    collections: list[CollectionCounts]
    cursor_us: int | None
    cursor_endpoint: str | None
    accounts_by_status: dict[str, int]
    handles_verified: int  # accounts whose handle resolves back to their DID
    identities_to_check: int  # marked by identity events, for the `identities` job
    backfills_by_status: dict[str, int]
    backfill_pages: int  # fetched by the passes on record
    backfill_records: int
    failed_backfills: list[FailedBackfill]  # the most recent few
    discovery: list[DiscoveryPass]
    gaps: list[tuple[datetime, str, float]]  # detected at, endpoint, seconds lost
    read_at: float = field(default_factory=time.time)

    @property
    def cursor_iso(self) -> str | None:
        return cursor_iso(self.cursor_us)

    @property
    def lag_seconds(self) -> float | None:
        return cursor_lag_seconds(self.cursor_us, self.read_at)


def read_status(con: duckdb.DuckDBPyConnection, recent: int = 5) -> MirrorStatus:
    collections = [
        CollectionCounts(*row)
        for row in con.execute(
            """
            SELECT collection,
                count(*) FILTER (WHERE NOT deleted AND NOT hidden),
                count(*) FILTER (WHERE NOT deleted AND hidden),
                count(*) FILTER (WHERE deleted),
                count(DISTINCT did) FILTER (WHERE NOT deleted)
            FROM record_versions GROUP BY collection ORDER BY collection
            """
        ).fetchall()
    ]
    cursor = con.execute("SELECT cursor_us, endpoint FROM ingest_state").fetchall()
    verified, to_check = con.execute(
        "SELECT count(handle), count(*) FILTER (WHERE identity_stale) FROM accounts"
    ).fetchall()[0]
    pages, fetched = con.execute(
        "SELECT coalesce(sum(pages), 0), coalesce(sum(records), 0) FROM backfills"
    ).fetchall()[0]
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    return MirrorStatus(
        schema_version=int(version[0][0]),
        collections=collections,
        cursor_us=cursor[0][0] if cursor else None,
        cursor_endpoint=cursor[0][1] if cursor else None,
        accounts_by_status=_counts(con, "accounts"),
        handles_verified=int(verified),
        identities_to_check=int(to_check),
        backfills_by_status=_counts(con, "backfills"),
        backfill_pages=int(pages),
        backfill_records=int(fetched),
        failed_backfills=[
            FailedBackfill(*row)
            for row in con.execute(
                "SELECT did, collection, attempts, last_error, next_attempt_at FROM backfills "
                "WHERE status = 'failed' ORDER BY updated_at DESC LIMIT ?",
                [recent],
            ).fetchall()
        ],
        discovery=[
            DiscoveryPass(*row)
            for row in con.execute(
                "SELECT collection, relay, repos_listed, dids_queued, cursor IS NOT NULL, "
                "completed_at FROM discovery_state ORDER BY collection"
            ).fetchall()
        ],
        gaps=[
            (row[0], row[1], row[2])
            for row in con.execute(
                "SELECT detected_at, endpoint, gap_seconds FROM ingest_gaps "
                "ORDER BY detected_at DESC LIMIT ?",
                [recent],
            ).fetchall()
        ],
    )


def _counts(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, int]:
    rows = con.execute(f"SELECT status, count(*) FROM {table} GROUP BY status ORDER BY status")
    return {status: count for status, count in rows.fetchall()}


def format_status(settings: Settings, status: MirrorStatus) -> str:
    lines = [f"store: {settings.store_name} (schema {status.schema_version})"]
    lines.append(f"tracked collections: {settings.collections}")
    if status.cursor_us is None:
        lines.append("cursor: none yet (the next ingest starts live)")
    else:
        source = (
            f"from {status.cursor_endpoint}"
            if status.cursor_endpoint
            else "set by `mirror reset-cursor`"
        )
        lines.append(
            f"cursor: {status.cursor_us} ({status.cursor_iso}, {status.lag_seconds:.0f} s ago) "
            f"{source}"
        )
    lines.append(f"{'collection':<40} {'records':>10} {'hidden':>8} {'deleted':>8} {'users':>8}")
    for c in status.collections:
        lines.append(
            f"{c.collection:<40} {c.records:>10} {c.hidden:>8} {c.tombstones:>8} {c.dids:>8}"
        )
    lines.append(
        f"accounts: {_by_status(status.accounts_by_status)} ({status.handles_verified} handles "
        f"verified, {status.identities_to_check} identities to check)"
    )
    lines.append(
        f"backfills: {_by_status(status.backfills_by_status)} "
        f"({status.backfill_records} records in {status.backfill_pages} pages)"
    )
    for failed in status.failed_backfills:
        retry = f"{failed.next_attempt_at:%Y-%m-%d %H:%M}" if failed.next_attempt_at else "now"
        lines.append(
            f"  failed: {failed.did} {failed.collection} ({failed.attempts} attempts, "
            f"retry {retry}): {failed.last_error}"
        )
    for discovery in status.discovery:
        state = "pass in progress" if discovery.in_progress else "last complete pass"
        when = f"{discovery.completed_at:%Y-%m-%d %H:%M}" if discovery.completed_at else "never"
        lines.append(
            f"discovery: {discovery.collection} on {discovery.relay}: {discovery.repos_listed} "
            f"repos listed, {discovery.dids_queued} new ({state}; completed {when})"
        )
    for detected_at, endpoint, seconds in status.gaps:
        lines.append(
            f"cursor gap: {detected_at:%Y-%m-%d %H:%M} on {endpoint}, {seconds:.0f} s lost"
        )
    return "\n".join(lines)


def _by_status(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counts.items()) or "none"
