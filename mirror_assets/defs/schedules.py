"""The minute ingest schedule, which skips a tick while an ingest is in flight, the daily
discovery pass and reclustering, the hourly checks, and the Parquet exports (EXPORT_CRON)."""

from __future__ import annotations

import dagster as dg

from mirror_assets.defs.jobs import (
    checks_job,
    discovery_job,
    export_job,
    history_job,
    in_flight,
    ingest_job,
    recluster_job,
)
from mirror_assets.names import INGEST_JOB


@dg.schedule(
    job=ingest_job,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every minute, unless the previous ingest run is still in flight.",
)
def ingest_every_minute(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    runs = in_flight(context.instance, INGEST_JOB)
    if runs:
        return dg.SkipReason(f"ingest run {runs[0].run_id} is still {runs[0].status.value}")
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())


def _running(
    name: str, job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition, cron: str, description: str
) -> dg.ScheduleDefinition:
    """A schedule in UTC that is on from the start."""
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )


discovery_daily = _running(
    "discovery_daily",
    discovery_job,
    "17 4 * * *",
    "Once a day: ask the relay for every repo of each tracked collection.",
)

checks_hourly = _running(
    "checks_hourly",
    checks_job,
    "29 * * * *",
    "Every hour: the integrity checks of `records` and the failed-backfill check.",
)

recluster_daily = _running(
    "recluster_daily",
    recluster_job,
    "23 3 * * *",
    "Once a day: put the rows backfills added out of time order back in order.",
)


history_daily = _running(
    "history_daily",
    history_job,
    "47 2 * * *",
    "Once a day: delete old runs from Dagster's history (HISTORY_KEEP_*_DAYS).",
)


def exports_schedule(cron: str) -> dg.ScheduleDefinition:
    """The Parquet exports at the operator's EXPORT_CRON."""
    return _running(
        "parquet_exports_schedule",
        export_job,
        cron,
        f"Parquet snapshots of every tracked collection ({cron}, UTC).",
    )
