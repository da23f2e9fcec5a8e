"""Asset checks a team alerts on: `records` is fresh, its storage invariants hold, and
backfills are not failing in numbers. docs/operations.md says what to do when one fails.

Freshness runs after every ingest (it costs one row read); the integrity and backfill checks
scan the file, so they run in the hourly `checks` job.
"""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg

from mirror_assets.analytics import integrity as checks
from mirror_assets.atproto.cursor_time import cursor_iso, cursor_lag_seconds
from mirror_assets.defs.backfill import did_backfill
from mirror_assets.defs.ingest import records
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.store.choice import open_store

WARN = dg.AssetCheckSeverity.WARN
ERROR = dg.AssetCheckSeverity.ERROR


@dg.asset_check(
    asset=records,
    name="cursor_fresh",
    description=(
        "The Jetstream cursor trails the clock by less than CHECK_LAG_WARN_SECONDS (warns) "
        "and CHECK_LAG_FAIL_SECONDS (fails)."
    ),
)
def cursor_fresh(mirror: MirrorResource) -> dg.AssetCheckResult:
    settings = mirror.settings()
    cursor = open_store(settings).cursor_us()
    lag = cursor_lag_seconds(cursor, time.time())
    if cursor is None or lag is None:
        return dg.AssetCheckResult(
            passed=False, severity=WARN, metadata={"cursor": "none: no ingest has run yet"}
        )
    limits = settings.checks
    metadata = {
        "lag_seconds": round(lag, 1),
        "cursor": cursor_iso(cursor),
        "warn_seconds": limits.lag_warn_seconds,
        "fail_seconds": limits.lag_fail_seconds,
    }
    severity = ERROR if lag >= limits.lag_fail_seconds else WARN
    return dg.AssetCheckResult(
        passed=lag < limits.lag_warn_seconds, severity=severity, metadata=metadata
    )


INTEGRITY = {
    "uris_match_keys": "Every row's URI is at://{did}/{collection}/{rkey} of its own columns.",
    "only_tracked_collections": "No row belongs to a collection COLLECTIONS no longer names.",
    "accounts_shown_as_their_status": (
        "No rows of deleted accounts, no visible rows of takendown, suspended or deactivated "
        "accounts, no hidden rows of active ones."
    ),
    "one_row_per_uri": "No URI is stored twice (a tombstoned URI is never also live).",
}


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name, asset=records, description=text) for name, text in INTEGRITY.items()
    ],
)
def records_integrity(mirror: MirrorResource) -> Iterator[dg.AssetCheckResult]:
    settings = mirror.settings()
    with open_store(settings).reading() as con:
        findings = {
            "uris_match_keys": checks.uris_off_their_keys(con),
            "only_tracked_collections": checks.untracked_rows(con, settings.collections),
            "accounts_shown_as_their_status": checks.misshown_rows(con),
            "one_row_per_uri": checks.uris_stored_twice(con),
        }
    for name, finding in findings.items():
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key=records.key,
            passed=finding.problems == 0,
            severity=ERROR,
            metadata=_finding_metadata(finding),
        )


@dg.asset_check(
    asset=did_backfill,
    name="few_failed_backfills",
    description=(
        "Backfills in status `failed` stay under CHECK_FAILED_BACKFILLS_WARN (warns) and "
        "CHECK_FAILED_BACKFILLS_FAIL (fails); metadata names the PDS hosts and errors."
    ),
)
def few_failed_backfills(mirror: MirrorResource) -> dg.AssetCheckResult:
    settings = mirror.settings()
    with open_store(settings).reading() as con:
        finding = checks.failed_backfills(con)
    limits = settings.checks
    metadata = _finding_metadata(finding)
    metadata.update(warn_at=limits.failed_backfills_warn, fail_at=limits.failed_backfills_fail)
    return dg.AssetCheckResult(
        passed=finding.problems < limits.failed_backfills_warn,
        severity=ERROR if finding.problems >= limits.failed_backfills_fail else WARN,
        metadata=metadata,
    )


def _finding_metadata(finding: checks.Finding) -> dict[str, Any]:
    return {
        "problems": finding.problems,
        "where": dg.MetadataValue.json(finding.sample),
        "by_kind": dg.MetadataValue.json(finding.by_kind),
    }


# The checks of the mirror's data, for the definitions and for what the history keeps.
DATA_CHECKS = (cursor_fresh, records_integrity, few_failed_backfills)
