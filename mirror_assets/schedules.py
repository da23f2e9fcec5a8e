"""The minute ingest schedule, which skips a tick while an ingest is in flight, the daily
discovery pass and reclustering, the hourly checks, and the Parquet exports (EXPORT_CRON)."""

import dagster as dg

from mirror_assets.jobs import (
    INGEST_JOB,
    checks_job,
    discovery_job,
    export_job,
    in_flight,
    ingest_job,
    recluster_job,
)


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


discovery_daily = dg.ScheduleDefinition(
    name="discovery_daily",
    job=discovery_job,
    cron_schedule="17 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day: ask the relay for every repo of each tracked collection.",
)

checks_hourly = dg.ScheduleDefinition(
    name="checks_hourly",
    job=checks_job,
    cron_schedule="29 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every hour: the integrity checks of `records` and the failed-backfill check.",
)


def exports_schedule(cron: str) -> dg.ScheduleDefinition:
    """The Parquet exports at the operator's EXPORT_CRON."""
    return dg.ScheduleDefinition(
        name="parquet_exports_schedule",
        job=export_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Parquet snapshots of every tracked collection ({cron}, UTC).",
    )


recluster_daily = dg.ScheduleDefinition(
    name="recluster_daily",
    job=recluster_job,
    cron_schedule="23 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day: put the rows backfills added out of time order back in order.",
)
