"""The ingest job and its minute schedule, which skips a tick while an ingest is in flight."""

from __future__ import annotations

import dagster as dg

from mirror_assets.records_asset import WRITER_TAG, records

INGEST_JOB = "ingest"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=[records],
    description="One Jetstream ingest cycle into the `records` asset.",
    tags={WRITER_TAG: "ingest"},
    # One step: a subprocess per step would add a second interpreter start to every minute.
    executor_def=dg.in_process_executor,
)


@dg.schedule(
    job=ingest_job,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every minute, unless the previous ingest run is still in flight.",
)
def ingest_every_minute(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    in_flight = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name=INGEST_JOB, statuses=IN_FLIGHT), limit=1
    )
    if in_flight:
        run = in_flight[0].dagster_run
        return dg.SkipReason(f"ingest run {run.run_id} is still {run.status.value}")
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())
